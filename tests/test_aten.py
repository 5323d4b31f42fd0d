"""The ATen-only forms of the etaretrieval ops equal the Numba-backed ops bit for bit; exported programs
decomposed with them hold ATen ops only and give the eager results."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from etaretrieval.torch import ETAAttention, SDIMAttention, SignatureCache, aten, decompositions  # noqa: E402

ops = torch.ops.etaretrieval

#: Inductor uses a deprecated torch.jit API internally (torch 2.13); not ours to fix.
TORCH_INTERNAL_WARNING = "ignore:`torch.jit.script_method` is deprecated:DeprecationWarning"
#: run_decompositions deep-copies a pytree spec of a class torch 2.13 deprecates; not ours to fix either.
TORCH_PYTREE_WARNING = r"ignore:`isinstance\(treespec, LeafSpec\)` is deprecated:FutureWarning"


def words(rng: np.random.Generator, shape: tuple[int, ...], few: int | None = None) -> torch.Tensor:
    """int64 tensors of random uint64 bit patterns; with ``few`` only that many low bits vary (many ties)."""
    hi = 2**64 if few is None else 2**few
    return torch.from_numpy(rng.integers(0, hi, size=shape, dtype=np.uint64).view(np.int64))


def same(got: tuple[torch.Tensor, ...], want: tuple[torch.Tensor, ...]) -> None:
    assert len(got) == len(want)
    for g, w in zip(got, want):
        assert g.dtype == w.dtype and g.shape == w.shape
        assert torch.equal(g, w), (g, w)


@given(st.integers(0, 2**32 - 1))
def test_popcount_counts_every_bit_of_the_uint64_pattern(seed: int) -> None:
    rng = np.random.default_rng(seed)
    x = rng.integers(0, 2**64, size=50, dtype=np.uint64)
    x[:4] = [0, 2**64 - 1, 2**63, 2**63 - 1]
    want = np.array([bin(int(v)).count("1") for v in x])
    assert aten.popcount(torch.from_numpy(x.view(np.int64))).tolist() == want.tolist()


@st.composite
def validity(draw: st.DrawFn, rng: np.random.Generator, batch: int, length: int) -> dict:
    """``lengths`` (either padding side) or a ``(B, L)`` / shared ``(L,)`` bool or numeric mask, or nothing."""
    kind = draw(st.sampled_from(["all", "lengths", "left", "mask", "shared_mask", "float_mask"]))
    if kind in ("lengths", "left"):
        dtype = draw(st.sampled_from([np.int64, np.int32, np.uint8])) if length < 256 else np.int64
        lengths = torch.from_numpy(rng.integers(0, length + 1, size=batch).astype(dtype))
        return {"lengths": lengths, "padding_side": "left" if kind == "left" else "right"}
    if kind == "mask":
        return {"mask": torch.from_numpy(rng.random((batch, length)) < 0.7)}
    if kind == "shared_mask":
        return {"mask": torch.from_numpy(rng.random(length) < 0.7)}
    if kind == "float_mask":
        return {"mask": torch.from_numpy((rng.random((batch, length)) < 0.7).astype(np.float32))}
    return {}


@settings(max_examples=80)
@given(st.data())
def test_topk_hamming_equals_the_kernel(data: st.DataObject) -> None:
    rng = np.random.default_rng(data.draw(st.integers(0, 2**32 - 1)))
    batch, length, w = data.draw(st.integers(0, 5)), data.draw(st.integers(0, 40)), data.draw(st.integers(1, 3))
    few = data.draw(st.sampled_from([None, 3, 0]))  # 3 bits: heavy ties; 0: every distance equal
    query = words(rng, (batch, w), few)
    keys = words(rng, (length, w) if data.draw(st.booleans()) else (batch, length, w), few)
    k = data.draw(st.integers(0, length + 3))
    kwargs = data.draw(validity(rng, batch, length))
    same(aten.topk_hamming(query, keys, k, **kwargs), ops.topk_hamming(query, keys, k, **kwargs))


@settings(max_examples=80)
@given(st.data())
def test_topk_hamming_lookup_equals_the_kernel(data: st.DataObject) -> None:
    rng = np.random.default_rng(data.draw(st.integers(0, 2**32 - 1)))
    batch, length, w = data.draw(st.integers(0, 5)), data.draw(st.integers(0, 40)), data.draw(st.integers(1, 3))
    nrows = data.draw(st.integers(1, 30))
    few = data.draw(st.sampled_from([None, 2]))
    query, table = words(rng, (batch, w), few), words(rng, (nrows, w), few)
    dtype = data.draw(st.sampled_from([torch.int64, torch.int32, torch.uint8, torch.int16]))
    shape = (length,) if data.draw(st.booleans()) else (batch, length)
    ids = torch.from_numpy(rng.integers(0, nrows, size=shape)).to(dtype)
    padding_id = data.draw(st.sampled_from([None, 0, 1]))
    k = data.draw(st.integers(0, length + 3))
    kwargs = data.draw(validity(rng, batch, length))
    same(aten.topk_hamming_lookup(query, ids, table, k, padding_id=padding_id, **kwargs),
         ops.topk_hamming_lookup(query, ids, table, k, padding_id=padding_id, **kwargs))


def test_out_of_range_ids_at_invalid_positions_are_ignored_by_both() -> None:
    rng = np.random.default_rng(0)
    query, table = words(rng, (2, 2)), words(rng, (5, 2))
    ids = torch.tensor([[1, 2, 99, -7], [4, -1, 3, 250]], dtype=torch.int64)
    mask = torch.tensor([[True, True, False, False], [True, True, True, False]])
    args = (query, ids, table, 3)
    same(aten.topk_hamming_lookup(*args, padding_id=-1, mask=mask), ops.topk_hamming_lookup(*args, padding_id=-1,
                                                                                           mask=mask))
    same(aten.topk_hamming_lookup(*args, lengths=torch.tensor([2, 1])),
         ops.topk_hamming_lookup(*args, lengths=torch.tensor([2, 1])))
    u8 = torch.tensor([3, 255, 1], dtype=torch.uint8)  # padding by the largest uint8 id
    same(aten.topk_hamming_lookup(query, u8, table, 3, padding_id=255), ops.topk_hamming_lookup(query, u8, table, 3,
                                                                                              padding_id=255))
    u64 = torch.tensor([3, 2**63 + 1, 1], dtype=torch.uint64)  # past int64: outside the table, masked here
    same(aten.topk_hamming_lookup(query, u64, table, 3, mask=torch.tensor([True, False, True])),
         ops.topk_hamming_lookup(query, u64, table, 3, mask=torch.tensor([True, False, True])))


def test_value_errors_become_assertions_with_the_message() -> None:
    rng = np.random.default_rng(1)
    query, table = words(rng, (2, 1)), words(rng, (5, 1))
    ids = torch.tensor([[1, 2, 5], [0, 1, 2]])
    with pytest.raises(IndexError, match="outside the table"):
        ops.topk_hamming_lookup(query, ids, table, 2)
    with pytest.raises(RuntimeError, match=r"outside the table's rows \[0, 5\)"):
        aten.topk_hamming_lookup(query, ids, table, 2)
    with pytest.raises(RuntimeError, match=r"outside the table's rows \[0, 0\)"):
        aten.topk_hamming_lookup(query, ids, table[:0], 2)
    keys = words(rng, (2, 3, 1))
    bad = torch.tensor([1, 4])
    with pytest.raises(ValueError, match=r"lengths must lie in 0..3"):
        ops.topk_hamming(query, keys, 2, lengths=bad)
    with pytest.raises(RuntimeError, match=r"lengths must lie in 0..3"):
        aten.topk_hamming(query, keys, 2, lengths=bad)
    x = torch.tensor([[1.0, float("nan")], [1.0, 2.0]])
    planes = torch.ones(2, 3)
    with pytest.raises(RuntimeError, match="non-finite"):
        aten.pack_signatures(x, planes)
    valid = torch.tensor([False, True])  # the NaN row is not used: hashed, no error
    same((aten.pack_signatures(x, planes, True, valid),), (ops.pack_signatures(x, planes, True, valid),))
    same((aten.pack_signatures(x, planes, False),), (ops.pack_signatures(x, planes, False),))


@pytest.mark.parametrize("call", [
    lambda f: f.topk_hamming(torch.zeros(2, 1, dtype=torch.int64), torch.zeros(3, 1, dtype=torch.int64), -1),
    lambda f: f.topk_hamming(torch.zeros(2, 1, dtype=torch.int32), torch.zeros(3, 1, dtype=torch.int64), 1),
    lambda f: f.topk_hamming(torch.zeros(2, 1, dtype=torch.int64), torch.zeros(3, 2, dtype=torch.int64), 1),
    lambda f: f.topk_hamming_lookup(torch.zeros(2, 1, dtype=torch.int64), torch.zeros(2, 3),
                                    torch.zeros(4, 1, dtype=torch.int64), 1),
    lambda f: f.topk_hamming_lookup(torch.zeros(2, 1, dtype=torch.int64), torch.zeros(2, 3, dtype=torch.uint8),
                                    torch.zeros(4, 1, dtype=torch.int64), 1, padding_id=256),
    lambda f: f.pack_signatures(torch.zeros(2, 3), torch.zeros(4, 8)),
    lambda f: f.sdim_buckets(torch.zeros(3, 1, dtype=torch.int64), torch.zeros(3, 2), 3, 64),
])
def test_argument_errors_are_the_kernels(call) -> None:
    with pytest.raises((ValueError, TypeError)) as want:
        call(ops)
    with pytest.raises(type(want.value), match=str(want.value).replace("(", r"\(").replace(")", r"\)")
                       .replace("[", r"\[").replace("]", r"\]").replace("*", r"\*").replace(".", r"\.")
                       .replace("+", r"\+")):
        call(aten)


def dyadic(rng: np.random.Generator, shape: tuple[int, ...], dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Random multiples of 1/4 in [-4, 4]: every product and sum below is exact, so signs never depend on order."""
    return torch.from_numpy(rng.integers(-16, 17, size=shape) / 4).to(dtype)


@settings(max_examples=60)
@given(st.data())
def test_pack_signatures_equals_the_kernel(data: st.DataObject) -> None:
    rng = np.random.default_rng(data.draw(st.integers(0, 2**32 - 1)))
    dim, bits = data.draw(st.integers(1, 12)), data.draw(st.sampled_from([1, 7, 63, 64, 65, 130, 256]))
    lead = data.draw(st.sampled_from([(), (0,), (3,), (2, 5)]))
    xtype = data.draw(st.sampled_from([torch.float32, torch.float64, torch.float16, torch.bfloat16]))
    ptype = data.draw(st.sampled_from([torch.float32, torch.float64]))
    x, planes = dyadic(rng, (*lead, dim), xtype), dyadic(rng, (dim, bits), ptype)
    if data.draw(st.booleans()) and x.dim() == 2:
        x = x.t().contiguous().t()  # non-contiguous
    same((aten.pack_signatures(x, planes),), (ops.pack_signatures(x, planes),))


@st.composite
def sdim_case(draw: st.DrawFn) -> dict:
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    batch, length, w = draw(st.integers(1, 4)), draw(st.integers(0, 20)), draw(st.integers(1, 2))
    tau = draw(st.sampled_from([1, 2, 3, 5, 8]))
    bits = draw(st.sampled_from([b for b in range(tau, 64 * w + 1, tau) if b > 64 * (w - 1)][-3:]))
    shared = draw(st.booleans())
    dtype = draw(st.sampled_from([torch.float32, torch.float64]))
    return dict(
        query=words(rng, (batch, w)),
        keys=words(rng, (length, w) if shared else (batch, length, w), draw(st.sampled_from([None, 4]))),
        values=dyadic(rng, (length, 3) if shared and draw(st.booleans()) else (batch, length, 3), dtype),
        tau=tau, bits=bits, valid=draw(validity(rng, batch, length)),
    )


@settings(max_examples=60)
@given(sdim_case())
def test_sdim_ops_equal_the_kernels(case: dict) -> None:
    """Integer-valued sums are exact in any order: equal bit for bit; normalised vectors to float rounding."""
    # the SDIM kernels take bool masks only (their checks let numeric ones through; NumPy's then refuse them)
    valid = {k: (v != 0 if k == "mask" else v) for k, v in case["valid"].items() if k != "padding_side"}
    if case["valid"].get("padding_side") == "left":
        return  # the SDIM ops take right-padded lengths only
    args = (case["query"], case["keys"], case["values"], case["tau"], case["bits"])
    same((aten.sdim_group_sums(*args, **valid),), (ops.sdim_group_sums(*args, **valid),))
    grad = case["values"].new_tensor(np.arange(case["query"].shape[0] * (case["bits"] // case["tau"]) * 3)
                                     .reshape(case["query"].shape[0], -1, 3) % 5)
    back = (case["query"], case["keys"], grad, case["tau"], case["bits"])
    if case["values"].dim() == 3 or case["keys"].dim() == 3:
        same((aten.sdim_group_sums_backward(*back, **valid),), (ops.sdim_group_sums_backward(*back, **valid),))
    per_user = valid if case["values"].dim() == 3 or case["keys"].dim() == 3 else {}  # one user: no (B, L) rows
    buckets = ops.sdim_buckets(case["keys"], case["values"], case["tau"], case["bits"], **per_user)
    same((aten.sdim_buckets(case["keys"], case["values"], case["tau"], case["bits"], **per_user),), (buckets,))
    got, want = aten.sdim_from_buckets(case["query"], buckets), ops.sdim_from_buckets(case["query"], buckets)
    assert got.dtype == want.dtype
    torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-7)


def test_sdim_nan_values_stay_in_their_bucket() -> None:
    keys = torch.tensor([[0b01], [0b10], [0b00]])
    values = torch.tensor([[float("nan")], [1.0], [2.0]])
    args = (torch.tensor([[0b10]]), keys, values, 1, 2)
    torch.testing.assert_close(aten.sdim_group_sums(*args), ops.sdim_group_sums(*args), equal_nan=True)
    torch.testing.assert_close(aten.sdim_buckets(keys, values, 1, 2), ops.sdim_buckets(keys, values, 1, 2),
                               equal_nan=True)


DIM, BITS, N = 8, 130, 40


class Serving(torch.nn.Module):
    """ETA by id over a cached signature table, left-padded lengths, and an SDIM block."""

    def __init__(self) -> None:
        super().__init__()
        self.items = torch.nn.Embedding(N, DIM)
        self.eta = ETAAttention(DIM, BITS, k=6, heads=2)
        self.cache = SignatureCache(self.items, self.eta.retriever)
        self.sdim = SDIMAttention(DIM, 64, 4)

    def forward(self, target_ids: torch.Tensor, ids: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        target = self.items(target_ids)
        eta = self.eta(target, lengths=lengths, padding_side="left", seq_ids=ids, cache=self.cache)
        seq = self.items(ids)
        with torch.no_grad():
            summary = self.sdim.summarize(seq[:1])[0]
        return eta + self.sdim(target, seq, ids > 0) + self.sdim.forward_from_buckets(target, summary)


def _inputs(seed: int) -> tuple[torch.Tensor, ...]:
    gen = torch.Generator().manual_seed(seed)
    return (torch.randint(0, N, (3,), generator=gen), torch.randint(0, N, (3, 25), generator=gen),
            torch.tensor([25, 10, 0]))


@pytest.mark.filterwarnings(TORCH_PYTREE_WARNING)
def test_decomposed_program_holds_aten_ops_only_and_equals_eager() -> None:
    torch.manual_seed(0)
    model = Serving().eval()
    args = _inputs(0)
    program = torch.export.export(model, args).run_decompositions(decompositions())
    assert "etaretrieval" not in str(program.graph)
    assert {"cache.signatures", "eta.retriever.planes"} <= set(program.graph_signature.buffers)
    for seed in (0, 1):
        torch.testing.assert_close(program.module()(*_inputs(seed)), model(*_inputs(seed)), rtol=1e-5, atol=1e-6)


def test_the_table_covers_every_operator() -> None:
    table = decompositions()
    names = {op.name() for op in table}
    defined = {f"etaretrieval::{n}" for n in dir(ops) if isinstance(getattr(ops, n), torch._ops.OpOverloadPacket)}
    assert names == defined - {"etaretrieval::check_signature_cache"}  # a version check, never exported


@pytest.mark.filterwarnings(TORCH_INTERNAL_WARNING)
def test_compiled_by_inductor_equals_the_kernel() -> None:
    rng = np.random.default_rng(3)
    query, keys = words(rng, (6, 2), 5), words(rng, (50, 2), 5)
    compiled = torch.compile(aten.topk_hamming, fullgraph=True)
    mask = torch.from_numpy(rng.random(50) < 0.8)
    same(compiled(query, keys, 7, mask=mask), ops.topk_hamming(query, keys, 7, mask=mask))
    # a shared sequence of 9-word signatures (two groups of halves), all-ones distances included
    query, table = words(rng, (5, 9), 40), words(rng, (30, 9))
    query[0], table[0] = 0, -1
    ids = torch.from_numpy(rng.integers(0, 30, size=60))
    lookup = torch.compile(aten.topk_hamming_lookup, fullgraph=True)
    same(lookup(query, ids, table, 9), ops.topk_hamming_lookup(query, ids, table, 9))
    # a padding id (int32 ids) and a uint64 one past 2**63 stay in the graph (no NumPy call breaks it)
    same(lookup(query, ids.to(torch.int32), table, 9, padding_id=3),
         ops.topk_hamming_lookup(query, ids.to(torch.int32), table, 9, padding_id=3))
    wide = ids.to(torch.uint64)
    same(lookup(query, wide, table, 9, padding_id=2**64 - 1), ops.topk_hamming_lookup(query, wide, table, 9))


@pytest.mark.filterwarnings(TORCH_INTERNAL_WARNING)
def test_compiled_forms_keep_every_bit_pattern_of_the_halves() -> None:
    # generated code moves the word halves as float32 bit patterns: signalling and quiet NaNs, -0.0 and the
    # infinities must come through unchanged, through the stored shared sequence and the per-row gather alike
    patterns = np.array([0x7F800001, 0xFFC00001, 0x80000000, 0x7F800000, 0xFF800000, 0x7FBFFFFF, 0, 0xFFFFFFFF],
                        dtype=np.uint32)
    rng = np.random.default_rng(4)
    table = torch.from_numpy(rng.choice(patterns, size=(40, 4)).view(np.int64))  # 2 words
    query = torch.from_numpy(rng.choice(patterns, size=(6, 4)).view(np.int64))
    lookup = torch.compile(aten.topk_hamming_lookup, fullgraph=True)
    lengths = torch.tensor([33, 0, 5, 20, 33, 1])
    for ids in (torch.from_numpy(rng.integers(0, 40, size=33)), torch.from_numpy(rng.integers(0, 40, size=(6, 33)))):
        args = (query, ids, table, 5)
        same(lookup(*args, lengths=lengths), ops.topk_hamming_lookup(*args, lengths=lengths))
    same(torch.compile(aten.topk_hamming, fullgraph=True)(query, table, 6), ops.topk_hamming(query, table, 6))
    bits = np.unpackbits((query.numpy()[:, None] ^ table.numpy()).view(np.uint8), axis=-1).sum(-1)
    assert torch.compile(aten.hamming, fullgraph=True)(query.unsqueeze(1), table).tolist() == bits.tolist()


@settings(max_examples=60)
@given(st.data())
def test_hamming_counts_every_bit_of_any_number_of_words(data: st.DataObject) -> None:
    # more than 8 words: the halves are summed bytewise in groups of 16, then folded; all-ones
    # words give every byte its largest count
    rng = np.random.default_rng(data.draw(st.integers(0, 2**32 - 1)))
    w = data.draw(st.integers(0, 20))
    a, b = words(rng, (3, 1, w)), words(rng, (4, w), data.draw(st.sampled_from([None, 1])))
    a[0] = -1
    b[0] = 0
    bits = np.unpackbits((a.numpy() ^ b.numpy()).view(np.uint8), axis=-1).sum(-1)
    got = aten.hamming(a, b)
    assert got.dtype == torch.int32 and got.tolist() == bits.tolist()
    strided = torch.stack([b, b], -1)[..., 0]  # a non-contiguous word axis
    assert torch.equal(aten.hamming(a, strided), got)
