"""Ragged histories in the torch ops: flat values + offsets, and torch.nested jagged tensors."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

import etaretrieval as er  # noqa: E402
import etaretrieval.torch as et  # noqa: E402
from etaretrieval.torch import HammingTopK  # noqa: E402

ops = torch.ops.etaretrieval

#: Inductor uses a deprecated torch.jit API internally (torch 2.13); not ours to fix.
TORCH_INTERNAL_WARNING = "ignore:`torch.jit.script_method` is deprecated:DeprecationWarning"


def t64(a: np.ndarray) -> torch.Tensor:
    """The int64 tensor holding the bit patterns of uint64 ``a`` (zero copy)."""
    return torch.from_numpy(np.ascontiguousarray(a).view(np.int64))


@st.composite
def ragged_cases(draw: st.DrawFn) -> dict:
    """Ragged rows (lengths 0..12, ``offsets[0]`` possibly above 0, values past the last row), ties, masks, pads."""
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    batch, words = draw(st.integers(0, 5)), draw(st.integers(1, 3))
    bits = draw(st.sampled_from([None, 2]))  # 2 bits: heavy ties exercise the tie order
    lens = rng.integers(0, 13, size=batch)
    head, tail = draw(st.integers(0, 3)), draw(st.integers(0, 3))
    offsets = head + np.concatenate([[0], np.cumsum(lens)]).astype(draw(st.sampled_from([np.int32, np.int64])))
    total = int(offsets[-1]) + tail
    high = 2**64 if bits is None else 2**bits
    table = rng.integers(0, high, size=(9, words), dtype=np.uint64)
    return dict(
        query=rng.integers(0, high, size=(batch, words), dtype=np.uint64),
        keys=rng.integers(0, high, size=(total, words), dtype=np.uint64),
        ids=rng.integers(0, 9, size=total).astype(draw(st.sampled_from([np.int32, np.int64, np.uint8]))),
        table=table,
        offsets=offsets,
        mask=rng.random(total) < 0.7 if draw(st.booleans()) else None,
        padding_id=draw(st.sampled_from([None, 0])),
        k=draw(st.integers(0, 15)),
    )


def tensors(case: dict) -> dict:
    return {name: (t64(v) if v.dtype == np.uint64 else torch.from_numpy(v)) if isinstance(v, np.ndarray) else v
            for name, v in case.items()}


def padded(values: np.ndarray, offsets: np.ndarray, fill: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """The rows of ``values`` padded to their longest, and their lengths."""
    lens = np.diff(offsets)
    width = int(lens.max(initial=0))
    out = np.full((lens.shape[0], width, *values.shape[1:]), fill, dtype=values.dtype)
    for b, (lo, hi) in enumerate(zip(offsets[:-1], offsets[1:])):
        out[b, : hi - lo] = values[lo:hi]
    return out, lens


@settings(max_examples=60, deadline=None)
@given(case=ragged_cases())
def test_topk_equals_numpy_ragged_and_padded(case: dict) -> None:
    t = tensors(case)
    got = et.topk_hamming(t["query"], t["keys"], case["k"], mask=t["mask"], offsets=t["offsets"])
    op = ops.topk_hamming_ragged(t["query"], t["keys"], case["k"], t["offsets"], t["mask"])
    want = er.topk_hamming(case["query"], case["keys"], case["k"], mask=case["mask"], offsets=case["offsets"])
    for g, o, w in zip(got, op, want):
        assert torch.equal(g, torch.from_numpy(w)) and torch.equal(o, g)
    keys, lens = padded(case["keys"], case["offsets"])
    mask = None
    if case["mask"] is not None:
        mask = padded(case["mask"], case["offsets"], False)[0]
    pad = ops.topk_hamming(t["query"], t64(keys), case["k"], None if mask is not None else torch.from_numpy(lens),
                           None if mask is None else torch.from_numpy(mask))
    for g, p in zip(got, pad):
        assert torch.equal(g, p)


@settings(max_examples=60, deadline=None)
@given(case=ragged_cases())
def test_lookup_equals_numpy_ragged_and_padded(case: dict) -> None:
    t = tensors(case)
    args = (t["query"], t["ids"], t["table"], case["k"])
    got = et.topk_hamming_lookup(*args, mask=t["mask"], padding_id=case["padding_id"], offsets=t["offsets"])
    want = er.topk_hamming_lookup(case["query"], case["ids"], case["table"], case["k"], mask=case["mask"],
                                  padding_id=case["padding_id"], offsets=case["offsets"])
    for g, w in zip(got, want):
        assert torch.equal(g, torch.from_numpy(w))
    ids, lens = padded(case["ids"], case["offsets"])
    mask = np.arange(ids.shape[1]) < lens[:, None]
    if case["mask"] is not None:
        mask &= padded(case["mask"], case["offsets"], False)[0]
    pad = ops.topk_hamming_lookup(t["query"], torch.from_numpy(ids), t["table"], case["k"], None,
                                  torch.from_numpy(mask), case["padding_id"])
    for g, p in zip(got, pad):
        assert torch.equal(g, p)


def _jagged(values: torch.Tensor, offsets: torch.Tensor) -> torch.Tensor:
    return torch.nested.nested_tensor_from_jagged(values, offsets)


def test_nested_jagged_inputs_read_values_and_offsets() -> None:
    rng = np.random.default_rng(3)
    offsets = torch.tensor([0, 4, 4, 11, 12])
    query, keys = t64(rng.integers(0, 8, size=(4, 1), dtype=np.uint64)), t64(rng.integers(0, 8, (12, 1), np.uint64))
    ids, table = torch.from_numpy(rng.integers(0, 6, size=12)), t64(rng.integers(0, 8, (6, 1), np.uint64))
    mask = torch.from_numpy(rng.random(12) < 0.7)
    want = et.topk_hamming(query, keys, 5, mask=mask, offsets=offsets)
    for m in (mask, _jagged(mask, offsets)):
        got = et.topk_hamming(query, _jagged(keys, offsets), 5, mask=m)
        assert all(torch.equal(g, w) for g, w in zip(got, want))
    want = et.topk_hamming_lookup(query, ids, table, 5, padding_id=2, offsets=offsets)
    got = et.topk_hamming_lookup(query, _jagged(ids, offsets), table, 5, padding_id=2)
    assert all(torch.equal(g, w) for g, w in zip(got, want))


def test_hamming_topk_function_ragged_equals_padded() -> None:
    gen = torch.Generator().manual_seed(0)
    planes = torch.randn(8, 64, generator=gen)
    seq = torch.randn(3, 10, 8, generator=gen, requires_grad=True)
    lens = torch.tensor([10, 3, 0])
    mask = torch.arange(10) < lens[:, None]
    seq_padded = seq.detach().clone()
    seq_padded[~mask] = float("nan")  # never read where not valid
    target = seq[:, 1]
    want = HammingTopK.apply(target, seq_padded, planes, 4, mask)
    offsets = torch.tensor([0, 10, 13, 13])
    flat = seq[mask]
    got = HammingTopK.apply(target, flat, planes, 4, None, offsets)
    nested = HammingTopK.apply(target, _jagged(flat, offsets), planes, 4, None)
    for g, n, w in zip(got, nested, want):
        assert torch.equal(g, w) and torch.equal(n, w) and not g.requires_grad


def test_opcheck_ragged_schemas() -> None:
    rng = np.random.default_rng(1)
    query, keys = t64(rng.integers(0, 2**64, (3, 2), np.uint64)), t64(rng.integers(0, 2**64, (14, 2), np.uint64))
    ids, table = torch.from_numpy(rng.integers(0, 10, size=14)), t64(rng.integers(0, 2**64, (10, 2), np.uint64))
    offsets, mask = torch.tensor([1, 5, 5, 13], dtype=torch.int32), torch.from_numpy(rng.random(14) < 0.7)
    torch.library.opcheck(ops.topk_hamming_ragged, (query, keys, 4, offsets), {"mask": mask})
    torch.library.opcheck(ops.topk_hamming_ragged, (query, keys, 0, offsets.long()), {})
    torch.library.opcheck(ops.topk_hamming_lookup_ragged, (query, ids, table, 6, offsets), {"padding_id": 3})
    torch.library.opcheck(ops.topk_hamming_lookup_ragged, (query, ids.int(), table, 2, offsets), {"mask": mask})


def test_fake_kernels_take_the_batch_from_offsets() -> None:
    meta = {"dtype": torch.int64, "device": "meta"}
    query, offsets = torch.empty(5, 2, **meta), torch.empty(6, **meta)
    idx, dist = ops.topk_hamming_ragged(query, torch.empty(40, 2, **meta), 7, offsets)
    assert idx.shape == dist.shape == (5, 7) and (idx.dtype, dist.dtype) == (torch.int64, torch.int32)
    idx, _ = ops.topk_hamming_lookup_ragged(query, torch.empty(40, dtype=torch.int32, device="meta"),
                                            torch.empty(100, 2, **meta), 3, offsets)
    assert idx.shape == (5, 3) and idx.device.type == "meta"


@pytest.mark.filterwarnings(TORCH_INTERNAL_WARNING)
def test_compiled_fullgraph_ragged_equals_eager() -> None:
    def retrieve(target: torch.Tensor, values: torch.Tensor, ids: torch.Tensor, offsets: torch.Tensor,
                 planes: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, ...]:
        query = ops.pack_signatures(target, planes)
        keys = ops.pack_signatures(values, planes)
        plain = et.topk_hamming(query, keys, 5, mask=mask, offsets=offsets)
        fused = et.topk_hamming_lookup(query, ids, keys, 5, padding_id=0, offsets=offsets)
        return plain + fused

    gen = torch.Generator().manual_seed(0)
    args = (torch.randn(3, 8, generator=gen), torch.randn(40, 8, generator=gen),
            torch.randint(0, 40, (40,), generator=gen), torch.tensor([0, 7, 7, 40]),
            torch.randn(8, 64, generator=gen), torch.rand(40, generator=gen) < 0.8)
    compiled = torch.compile(retrieve, fullgraph=True)
    for got, want in zip(compiled(*args), retrieve(*args)):
        assert torch.equal(got, want)


def test_compiled_fullgraph_over_a_jagged_tensor() -> None:
    """A torch.nested jagged input traces through values()/offsets() into the ragged op (symbolic T)."""
    def retrieve(query: torch.Tensor, ids: torch.Tensor, table: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return et.topk_hamming_lookup(query, ids, table, 5, padding_id=0)

    gen = torch.Generator().manual_seed(1)
    table, query = torch.randint(0, 2**40, (50, 1), generator=gen), torch.randint(0, 2**40, (3, 1), generator=gen)
    compiled = torch.compile(retrieve, fullgraph=True, backend="aot_eager")
    for offsets in ([0, 10, 12, 30], [0, 0, 7, 9]):
        ids = _jagged(torch.randint(0, 50, (offsets[-1],), generator=gen), torch.tensor(offsets))
        for got, want in zip(compiled(query, ids, table), retrieve(query, ids, table)):
            assert torch.equal(got, want)


def test_inputs_are_not_modified() -> None:
    rng = np.random.default_rng(0)
    query, keys = t64(rng.integers(0, 8, (2, 1), np.uint64)), t64(rng.integers(0, 8, (9, 1), np.uint64))
    ids, table = torch.from_numpy(rng.integers(0, 5, size=9)), t64(rng.integers(0, 8, (5, 1), np.uint64))
    offsets, mask = torch.tensor([0, 4, 9]), torch.from_numpy(rng.random(9) < 0.5)
    inputs = (query, keys, ids, table, offsets, mask)
    before = [t.clone() for t in inputs]
    et.topk_hamming(query, keys, 4, mask=mask, offsets=offsets)
    idx, _ = et.topk_hamming_lookup(query, ids, table, 4, mask=mask, padding_id=1, offsets=offsets)
    assert all(torch.equal(t, b) for t, b in zip(inputs, before))
    assert idx.data_ptr() not in [t.data_ptr() for t in inputs]


def test_cuda_kernels_are_registered() -> None:
    """The ragged ops have CUDA kernels (cuda.ragged on torch's current stream; run on a GPU only)."""
    for name in ("topk_hamming_ragged", "topk_hamming_lookup_ragged"):
        assert torch._C._dispatch_has_kernel_for_dispatch_key(f"etaretrieval::{name}", "CUDA")


def _i64(*shape: int) -> torch.Tensor:
    return torch.zeros(shape, dtype=torch.int64)


@pytest.mark.parametrize(
    ("call", "error", "match"),
    [
        (lambda: et.topk_hamming(_i64(2, 1), _i64(5, 1), 3, lengths=_i64(2), offsets=torch.tensor([0, 2, 5])),
         ValueError, "either offsets .* or lengths"),
        (lambda: et.topk_hamming(_i64(2, 1), _i64(5, 1), 3, padding_side="left", offsets=torch.tensor([0, 2, 5])),
         ValueError, "padding_side applies to padded rows"),
        (lambda: et.topk_hamming_lookup(_i64(2, 1), _i64(5), _i64(3, 1), 3, lengths=_i64(2),
                                        offsets=torch.tensor([0, 2, 5])), ValueError, "either offsets"),
        (lambda: ops.topk_hamming_ragged(_i64(2, 1), _i64(5, 1), 3, torch.tensor([0.0, 2, 5])), TypeError,
         "offsets must have an integer dtype"),
        (lambda: ops.topk_hamming_ragged(_i64(2, 1), _i64(5, 1), 3, torch.tensor([0, 5])), ValueError,
         r"offsets must have shape \(3,\)"),
        (lambda: ops.topk_hamming_ragged(_i64(2, 1), _i64(5, 1), 3, torch.tensor([0, 3, 2])), ValueError,
         r"offsets must be non-decreasing, got offsets\[2\] = 2 < offsets\[1\] = 3"),
        (lambda: ops.topk_hamming_ragged(_i64(2, 1), _i64(5, 1), 3, torch.tensor([-1, 3, 4])), ValueError,
         "offsets must be >= 0"),
        (lambda: ops.topk_hamming_ragged(_i64(2, 1), _i64(5, 1), 3, torch.tensor([0, 3, 6])), ValueError,
         r"offsets must lie within the 5 entries of keys, got offsets\[2\] = 6"),
        (lambda: ops.topk_hamming_ragged(_i64(2, 1), _i64(2, 5, 1), 3, torch.tensor([0, 3, 5])), ValueError,
         r"keys must have shape \(T, W\)"),
        (lambda: ops.topk_hamming_ragged(_i64(2, 1), _i64(5, 2), 3, torch.tensor([0, 3, 5])), ValueError,
         "keys must have W = 1"),
        (lambda: ops.topk_hamming_ragged(_i64(2, 1), _i64(5, 1), -1, torch.tensor([0, 3, 5])), ValueError,
         "k must be >= 0"),
        (lambda: ops.topk_hamming_ragged(_i64(2, 1), _i64(5, 1), 3, torch.tensor([0, 3, 5]),
                                         torch.ones(4, dtype=torch.bool)), ValueError, r"mask must have shape \(5,\)"),
        (lambda: ops.topk_hamming_ragged(_i64(2, 1), _i64(5, 1), 3, torch.tensor([0, 3, 5], device="meta")),
         ValueError, "offsets must be on the device of the other inputs"),
        (lambda: ops.topk_hamming_lookup_ragged(_i64(2, 1), _i64(2, 5), _i64(3, 1), 3, torch.tensor([0, 3, 5])),
         ValueError, r"ids must have shape \(T,\)"),
        (lambda: ops.topk_hamming_lookup_ragged(_i64(2, 1), torch.ones(5), _i64(3, 1), 3, torch.tensor([0, 3, 5])),
         TypeError, "ids must have an integer dtype"),
        (lambda: ops.topk_hamming_lookup_ragged(_i64(2, 1), torch.tensor([0, 0, 0, 0, 7]), _i64(3, 1), 3,
                                                torch.tensor([0, 3, 5])), IndexError, r"ids\[1, 1\] = 7 is outside"),
        (lambda: et.topk_hamming(_i64(2, 1), _jagged(_i64(5, 1), torch.tensor([0, 3, 5])), 3,
                                 offsets=torch.tensor([0, 3, 5])), ValueError, "carries its own offsets"),
        (lambda: et.topk_hamming(_i64(2, 1), torch.nested.nested_tensor([_i64(3, 1), _i64(2, 1)]), 3),
         ValueError, "only torch.jagged nested tensors"),
        (lambda: et.topk_hamming(_i64(2, 1), torch.nested.narrow(_i64(2, 5, 1), 1, torch.tensor([0, 1]),
                                                                 torch.tensor([3, 2]), layout=torch.jagged), 3),
         ValueError, "with holes"),
    ],
)
@pytest.mark.filterwarnings("ignore:The PyTorch API of nested tensors is in prototype stage:UserWarning")
def test_clear_errors(call: object, error: type, match: str) -> None:
    with pytest.raises(error, match=match):
        call()  # type: ignore[operator]


@settings(max_examples=60, deadline=None)
@given(case=ragged_cases())
def test_aten_forms_equal_the_ragged_ops(case: dict) -> None:
    from etaretrieval.torch import aten

    t = tensors(case)
    args = (t["query"], t["keys"], case["k"], t["offsets"], t["mask"])
    for g, w in zip(aten.topk_hamming_ragged(*args), ops.topk_hamming_ragged(*args)):
        assert torch.equal(g, w) and g.dtype == w.dtype
    args = (t["query"], t["ids"], t["table"], case["k"], t["offsets"], t["mask"], case["padding_id"])
    for g, w in zip(aten.topk_hamming_lookup_ragged(*args), ops.topk_hamming_lookup_ragged(*args)):
        assert torch.equal(g, w) and g.dtype == w.dtype


def test_aten_forms_assert_bad_offsets_and_ids() -> None:
    from etaretrieval.torch import aten

    query, keys = _i64(2, 1), _i64(5, 1)
    for offsets in ([0, 3, 2], [-1, 3, 4], [0, 3, 6]):
        with pytest.raises(RuntimeError, match="offsets must be non-decreasing"):
            aten.topk_hamming_ragged(query, keys, 2, torch.tensor(offsets))
    ids = torch.tensor([0, 0, 0, 0, 7, 9])  # 9: a value of no row, never checked
    with pytest.raises(RuntimeError, match=r"outside the table's rows \[0, 3\)"):
        aten.topk_hamming_lookup_ragged(query, ids, _i64(3, 1), 2, torch.tensor([0, 3, 5]))
    idx, _ = aten.topk_hamming_lookup_ragged(query, ids, _i64(3, 1), 2, torch.tensor([0, 3, 4]))
    assert idx.tolist() == [[2, 1], [0, -1]]


class _RaggedLookup(torch.nn.Module):
    def forward(self, query: torch.Tensor, ids: torch.Tensor, table: torch.Tensor,
                offsets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return et.topk_hamming_lookup(query, ids, table, 4, padding_id=0, offsets=offsets)


@pytest.mark.filterwarnings("ignore::FutureWarning")
def test_exported_ragged_call_decomposes_to_aten() -> None:
    rng = np.random.default_rng(5)
    table = t64(rng.integers(0, 2**64, (20, 1), np.uint64))
    query = t64(rng.integers(0, 2**64, (3, 1), np.uint64))
    ids, offsets = torch.from_numpy(rng.integers(0, 20, size=30)), torch.tensor([0, 12, 12, 30])
    program = torch.export.export(_RaggedLookup(), (query, ids, table, offsets)).run_decompositions(
        et.decompositions())
    assert "etaretrieval" not in str(program.graph)
    ids2, offsets2 = torch.from_numpy(rng.integers(0, 20, size=30)), torch.tensor([2, 9, 20, 25])
    for args in ((query, ids, table, offsets), (query, ids2, table, offsets2)):
        for g, w in zip(program.module()(*args), _RaggedLookup()(*args)):
            assert torch.equal(g, w)


def _cuda_torch() -> None:
    import os

    if os.environ.get("NUMBA_ENABLE_CUDASIM", "0") not in ("", "0") or not torch.cuda.is_available():
        pytest.skip("needs torch with a CUDA GPU (torch CUDA tensors do not exist under the simulator)")


@pytest.mark.gpu
@pytest.mark.filterwarnings("ignore:Grid size")
def test_cuda_ragged_ops_equal_the_cpu_ones_on_a_side_stream() -> None:
    _cuda_torch()
    rng = np.random.default_rng(7)
    lens = np.concatenate([rng.integers(0, 40, size=30), [3000]])  # one long row among short ones
    offsets = torch.from_numpy(np.concatenate([[5], 5 + np.cumsum(lens)]).astype(np.int32))
    total = int(offsets[-1]) + 2
    query = t64(rng.integers(0, 16, (31, 2), np.uint64))
    keys = t64(rng.integers(0, 16, (total, 2), np.uint64))
    ids, table = torch.from_numpy(rng.integers(0, 50, size=total)), t64(rng.integers(0, 16, (50, 2), np.uint64))
    mask = torch.from_numpy(rng.random(total) < 0.8)
    want = (et.topk_hamming(query, keys, 20, mask=mask, offsets=offsets),
            et.topk_hamming_lookup(query, ids, table, 20, padding_id=0, offsets=offsets))
    stream = torch.cuda.Stream()
    with torch.cuda.stream(stream):
        c = [t.cuda() for t in (query, keys, ids, table, offsets, mask)]
        got = (et.topk_hamming(c[0], c[1], 20, mask=c[5], offsets=c[4]),
               et.topk_hamming_lookup(c[0], c[2], c[3], 20, padding_id=0, offsets=c[4]))
    stream.synchronize()
    for g, w in zip(got, want):
        assert g[0].is_cuda and torch.equal(g[0].cpu(), w[0]) and torch.equal(g[1].cpu(), w[1])
    row = int(np.flatnonzero(lens >= 2)[0])
    bad = ids.clone()
    bad[int(offsets[row]) + 1] = 99
    for args in ((query, bad, table, offsets), (c[0], bad.cuda(), c[3], c[4])):
        with pytest.raises(IndexError, match=rf"ids\[{row}, 1\] = 99"):
            et.topk_hamming_lookup(args[0], args[1], args[2], 20, offsets=args[3])


@st.composite
def sdim_cases(draw: st.DrawFn) -> dict:
    """A ragged case with integer-valued (T, d) values: every sum is exact, so orders of addition agree."""
    case = draw(ragged_cases())
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    words = case["query"].shape[1]
    tau = draw(st.sampled_from([1, 2, 4]))
    bits = 64 * words - draw(st.sampled_from([0, 4]))
    dtype = draw(st.sampled_from([np.float32, np.float64]))
    values = rng.integers(-8, 9, size=(case["keys"].shape[0], draw(st.integers(1, 3)))).astype(dtype)
    return dict(case, values=values, tau=tau, bits=bits)


@settings(max_examples=40, deadline=None)
@given(case=sdim_cases())
def test_sdim_ragged_equals_numpy_ragged_padded_and_aten(case: dict) -> None:
    from etaretrieval.torch import aten

    t = tensors(case)
    values = t["values"].clone().requires_grad_(True)
    args = (t["query"], t["keys"], values, case["tau"], case["bits"], t["offsets"], t["mask"])
    sums = ops.sdim_group_sums_ragged(*args)
    want = er.sdim_group_sums(case["query"], case["keys"], case["values"], case["tau"], bits=case["bits"],
                              mask=case["mask"], offsets=case["offsets"])
    assert torch.equal(sums.detach(), torch.from_numpy(want))
    keys, lens = padded(case["keys"], case["offsets"])
    pvals = torch.from_numpy(padded(case["values"], case["offsets"])[0]).requires_grad_(True)
    mask = np.arange(keys.shape[1]) < lens[:, None]
    if case["mask"] is not None:
        mask &= padded(case["mask"], case["offsets"], False)[0]
    pmask = torch.from_numpy(mask)
    psums = ops.sdim_group_sums(t["query"], t64(keys), pvals, case["tau"], case["bits"], None, pmask)
    assert torch.equal(sums.detach(), psums.detach())
    assert torch.equal(aten.sdim_group_sums_ragged(*args).detach(), sums.detach())
    grad = torch.from_numpy(np.random.default_rng(0).integers(-4, 5, size=sums.shape).astype(case["values"].dtype))
    sums.backward(grad)
    psums.backward(grad)
    assert values.grad is not None and pvals.grad is not None
    o = case["offsets"]
    flat_pgrad = torch.zeros_like(values.grad)
    for b in range(len(o) - 1):
        flat_pgrad[o[b]:o[b + 1]] = pvals.grad[b, : o[b + 1] - o[b]]
    assert torch.equal(values.grad, flat_pgrad)  # values of no row get zeros
    back = (t["query"], t["keys"], grad, case["tau"], case["bits"], t["offsets"], t["mask"])
    assert torch.equal(aten.sdim_group_sums_ragged_backward(*back), values.grad)


def test_opcheck_sdim_ragged_schemas() -> None:
    rng = np.random.default_rng(2)
    query, keys = t64(rng.integers(0, 2**64, (3, 1), np.uint64)), t64(rng.integers(0, 2**64, (14, 1), np.uint64))
    values = torch.randn(14, 4, dtype=torch.float64, requires_grad=True)
    offsets, mask = torch.tensor([1, 5, 5, 13]), torch.from_numpy(rng.random(14) < 0.7)
    torch.library.opcheck(ops.sdim_group_sums_ragged, (query, keys, values, 4, 64, offsets), {"mask": mask})
    values32 = torch.randn(14, 4, requires_grad=True)  # a leaf: opcheck reads .grad
    torch.library.opcheck(ops.sdim_group_sums_ragged, (query, keys, values32, 2, 60, offsets.int()), {})
    grad = torch.randn(3, 16, 4, dtype=torch.float64)
    torch.library.opcheck(ops.sdim_group_sums_ragged_backward, (query, keys, grad, 4, 64, offsets), {"mask": mask})


@pytest.mark.parametrize(
    ("call", "error", "match"),
    [
        (lambda: ops.sdim_group_sums_ragged(_i64(2, 1), _i64(5, 1), torch.ones(4, 2), 1, 64, torch.tensor([0, 2, 5])),
         ValueError, r"values must have shape \(5, d\)"),
        (lambda: ops.sdim_group_sums_ragged(_i64(2, 1), _i64(5, 1), torch.ones(5, 2), 3, 64, torch.tensor([0, 2, 5])),
         ValueError, "tau must divide bits"),
        (lambda: ops.sdim_group_sums_ragged(_i64(2, 1), _i64(5, 1), torch.ones(5, 2), 1, 64, torch.tensor([0, 6, 5])),
         ValueError, "offsets must be non-decreasing"),
        (lambda: ops.sdim_group_sums_ragged(_i64(2, 1), _i64(5, 1), torch.ones(5, 2), 1, 64, torch.tensor([0, 5])),
         ValueError, r"offsets must have shape \(3,\)"),
        (lambda: ops.sdim_group_sums_ragged_backward(_i64(2, 1), _i64(5, 1), torch.ones(2, 64, 1), 1, 64,
                                                     torch.tensor([0, 2, 7])), ValueError, "offsets must lie within"),
    ],
)
def test_sdim_ragged_errors(call: object, error: type, match: str) -> None:
    with pytest.raises(error, match=match):
        call()  # type: ignore[operator]
