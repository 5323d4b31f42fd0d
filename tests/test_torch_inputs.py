"""The torch API with the inputs of a real CTR code base.

Front-padded sequences (``padding_side="left"``), numeric 0/1 masks,
float16 / bfloat16 embeddings, non-finite values at padded positions, and
modules built on existing hyperplanes; each against the NumPy API or the
equivalent bool-mask call.
"""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

import etaretrieval as er  # noqa: E402
from etaretrieval.torch import ETAAttention, ETARetriever, SignatureCache, TargetAttention  # noqa: E402

ops = torch.ops.etaretrieval
DIM, BITS = 8, 64
TORCH_INTERNAL_WARNING = "ignore:`torch.jit.script_method` is deprecated:DeprecationWarning"


def sigs(gen: torch.Generator, *shape: int) -> torch.Tensor:
    """int64 signature tensors with few distinct values (many ties)."""
    return torch.randint(0, 4, shape, generator=gen, dtype=torch.int64)


def left_mask(lengths: torch.Tensor, length: int) -> torch.Tensor:
    """Row ``b`` valid on its last ``lengths[b]`` positions (a plain loop)."""
    out = torch.zeros(len(lengths), length, dtype=torch.bool)
    for b, n in enumerate(lengths.tolist()):
        out[b, length - n:] = True
    return out


# --------------------------------------------------------------------------- padding_side in the ops


@settings(deadline=None, max_examples=25)
@given(seed=st.integers(0, 2**31 - 1), batch=st.integers(0, 4), length=st.integers(0, 10), k=st.integers(0, 12),
       shared=st.booleans())
def test_ops_left_padding_equals_the_mask(seed: int, batch: int, length: int, k: int, shared: bool) -> None:
    gen = torch.Generator().manual_seed(seed)
    query = sigs(gen, batch, 1)
    keys = sigs(gen, length, 1) if shared else sigs(gen, batch, length, 1)
    ids = torch.randint(0, 5, (length,) if shared else (batch, length), generator=gen)
    table = sigs(gen, 5, 1)
    lengths = torch.randint(0, length + 1, (batch,), generator=gen)
    mask = left_mask(lengths, length)
    for got, want in (
        (ops.topk_hamming(query, keys, k, lengths, None, "left"), ops.topk_hamming(query, keys, k, None, mask)),
        (ops.topk_hamming_lookup(query, ids, table, k, lengths, None, 2, "left"),
         ops.topk_hamming_lookup(query, ids, table, k, None, mask, 2)),
    ):
        assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])


def test_ops_padding_side_errors() -> None:
    q, keys = torch.zeros(2, 1, dtype=torch.int64), torch.zeros(2, 5, 1, dtype=torch.int64)
    with pytest.raises(ValueError, match="padding_side must be 'right' or 'left'"):
        ops.topk_hamming(q, keys, 2, torch.tensor([1, 2]), None, "front")
    with pytest.raises(ValueError, match="padding_side must be 'right' or 'left'"):
        ops.topk_hamming(q.to("meta"), keys.to("meta"), 2, None, None, "front")  # the fake kernel checks too
    with pytest.raises(ValueError, match=r"lengths must lie in 0\.\.5, got lengths\[1\] = 6"):
        ops.topk_hamming(q, keys, 2, torch.tensor([1, 6]), None, "left")


@pytest.mark.filterwarnings(TORCH_INTERNAL_WARNING)
def test_ops_left_padding_compiled_equals_eager() -> None:
    gen = torch.Generator().manual_seed(1)
    query, keys, lengths = sigs(gen, 3, 2), sigs(gen, 3, 9, 2), torch.tensor([9, 4, 0])

    def retrieve(query: torch.Tensor, keys: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return ops.topk_hamming(query, keys, 5, lengths, None, "left")

    compiled = torch.compile(retrieve, fullgraph=True)
    for got, want in zip(compiled(query, keys, lengths), retrieve(query, keys, lengths)):
        assert torch.equal(got, want)


# --------------------------------------------------------------------------- numeric masks


NUMERIC = [torch.float32, torch.float16, torch.bfloat16, torch.float64, torch.int64, torch.int32, torch.uint8]


@pytest.mark.parametrize("dtype", NUMERIC, ids=str)
def test_numeric_masks_in_the_ops(dtype: torch.dtype) -> None:
    gen = torch.Generator().manual_seed(2)
    query, keys, table = sigs(gen, 3, 1), sigs(gen, 3, 8, 1), sigs(gen, 5, 1)
    ids = torch.randint(0, 5, (3, 8), generator=gen)
    mask = torch.rand(3, 8, generator=gen) < 0.6
    numeric = mask.to(dtype) * (3 if dtype.is_floating_point else 1)  # any non-zero value is valid
    before = numeric.clone()
    for m in (numeric, numeric[0]):
        want_mask = mask if m.dim() == 2 else mask[0]
        got = ops.topk_hamming(query, keys, 4, None, m)
        want = ops.topk_hamming(query, keys, 4, None, want_mask)
        assert torch.equal(got[0], want[0])
        got = ops.topk_hamming_lookup(query, ids, table, 4, None, m)
        want = ops.topk_hamming_lookup(query, ids, table, 4, None, want_mask)
        assert torch.equal(got[0], want[0])
    assert torch.equal(numeric, before)


def test_numeric_masks_in_the_modules() -> None:
    gen = torch.Generator().manual_seed(3)
    target, seq = torch.randn(3, DIM, generator=gen), torch.randn(3, 12, DIM, generator=gen)
    mask = torch.rand(3, 12, generator=gen) < 0.5
    torch.manual_seed(0)
    eta = ETAAttention(DIM, BITS, k=4, heads=2)
    attn = TargetAttention(DIM, 2)
    for numeric in (mask.float(), mask.long(), mask.to(torch.uint8), mask.double() * 0.5):
        got = eta.retriever(target, seq, numeric)
        want = eta.retriever(target, seq, mask)
        assert torch.equal(got.index, want.index) and torch.equal(got.values, want.values)
        torch.testing.assert_close(eta(target, seq, numeric), eta(target, seq, mask), rtol=0, atol=0)
        torch.testing.assert_close(attn(target, seq, numeric), attn(target, seq, mask), rtol=0, atol=0)


@pytest.mark.parametrize(
    ("mask", "error", "match"),
    [
        (torch.ones(3, 12, dtype=torch.complex64), TypeError, "mask must have dtype torch.bool or a real numeric"),
        (torch.ones(3, 11), ValueError, r"mask must have shape \(3, 12\)"),
        (torch.ones(12), ValueError, r"mask must have shape \(3, 12\)"),
        ([[1] * 12] * 3, TypeError, "mask must be a torch.Tensor"),
    ],
)
def test_bad_masks_still_raise(mask: object, error: type, match: str) -> None:
    retriever = ETARetriever(DIM, BITS, k=2)
    with pytest.raises(error, match=match):
        retriever(torch.randn(3, DIM), torch.randn(3, 12, DIM), mask)
    with pytest.raises(error, match=match):
        TargetAttention(DIM, 2)(torch.randn(3, DIM), torch.randn(3, 12, DIM), mask)


def test_bad_op_masks_still_raise() -> None:
    q, keys = torch.zeros(2, 1, dtype=torch.int64), torch.zeros(2, 5, 1, dtype=torch.int64)
    with pytest.raises(TypeError, match="mask must have dtype torch.bool or a real numeric"):
        ops.topk_hamming(q, keys, 2, None, torch.ones(2, 5, dtype=torch.complex128))
    with pytest.raises(ValueError, match=r"mask must have shape \(2, 5\) or \(5,\)"):
        ops.topk_hamming(q, keys, 2, None, torch.ones(2, 4))


# --------------------------------------------------------------------------- half-precision embeddings


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
def test_half_embeddings_hash_in_float32(dtype: torch.dtype) -> None:
    gen = torch.Generator().manual_seed(4)
    x = torch.randint(-4, 5, (5, 3, DIM), generator=gen).to(dtype)  # exact in every precision
    planes = torch.from_numpy(er.hyperplanes(DIM, 100))
    before = x.clone()
    assert torch.equal(ops.pack_signatures(x, planes), ops.pack_signatures(x.float(), planes))
    assert torch.equal(ops.pack_signatures(x[:, 1], planes), ops.pack_signatures(x.float()[:, 1], planes))
    assert torch.equal(x, before) and x.dtype == dtype
    retriever = ETARetriever(DIM, BITS, k=3)
    mask = torch.rand(5, 3, generator=gen) < 0.7
    got = retriever(x[:, 0], x, mask)
    want = retriever(x[:, 0].float(), x.float(), mask)
    assert torch.equal(got.index, want.index)
    assert got.values.dtype == dtype and torch.equal(got.values.float(), want.values)
    x[1, 2, 3] = float("nan")
    with pytest.raises(ValueError, match=r"non-finite value \(NaN or inf\) in row \(1, 2\)"):
        ops.pack_signatures(x, planes)


# --------------------------------------------------------------------------- non-finite values at padding


def nan_batch() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(5)
    target, seq = torch.randn(3, DIM, generator=gen), torch.randn(3, 10, DIM, generator=gen)
    mask = torch.ones(3, 10, dtype=torch.bool)
    mask[0, 7:] = False
    mask[2, :4] = False
    return target, seq, mask


def test_nonfinite_values_at_masked_positions_are_ignored() -> None:
    target, seq, mask = nan_batch()
    clean = seq.clone()
    seq[0, 8] = float("nan")
    seq[2, 1, 3] = float("inf")
    seq[2, 0] = float("-inf")
    retriever = ETARetriever(DIM, BITS, k=4)
    want = retriever(target, clean, mask)
    for m in (mask, mask.float()):
        got = retriever(target, seq, m)
        assert torch.equal(got.index, want.index) and torch.equal(got.values, want.values)
    for lengths, side in ((torch.tensor([7, 10, 0]), "right"), (torch.tensor([0, 10, 6]), "left")):
        same = torch.arange(10) < lengths[:, None] if side == "right" else left_mask(lengths, 10)
        got = retriever(target, seq, lengths=lengths, padding_side=side)
        assert torch.equal(got.index, retriever(target, clean, same).index)


def test_nonfinite_value_at_a_valid_position_names_row_and_position() -> None:
    target, seq, mask = nan_batch()
    seq[2, 5, 1] = float("nan")
    retriever = ETARetriever(DIM, BITS, k=4)
    with pytest.raises(ValueError, match=r"non-finite value \(NaN or inf\) in row 2 at position 5, a valid one"):
        retriever(target, seq, mask)
    with pytest.raises(ValueError, match=r"in row \(2, 5\)"):  # no mask: every position is valid
        retriever(target, seq)
    with pytest.raises(ValueError, match=r"in row 2 at position 5"):
        retriever(target, seq, lengths=torch.tensor([7, 10, 6]), padding_side="left")


def test_nonfinite_values_at_masked_positions_with_seq_ids() -> None:
    """The distinct-id path hashes each id from a valid occurrence; padding ids may hold NaN embeddings."""
    gen = torch.Generator().manual_seed(6)
    emb = torch.randn(6, DIM, generator=gen)
    emb[0] = float("nan")  # the padding row
    ids = torch.randint(1, 6, (3, 10), generator=gen)
    ids[0, 7:] = 0
    ids[2, :4] = 0
    mask = ids != 0
    target = torch.randn(3, DIM, generator=gen)
    retriever = ETARetriever(DIM, BITS, k=4)
    got = retriever(target, emb[ids], mask, seq_ids=ids)
    want = retriever(target, torch.nan_to_num(emb)[ids], mask)
    assert torch.equal(got.index, want.index)
    got = retriever(target, mask=mask, seq_ids=ids, items=emb)  # row 0 of the table: padding only
    assert torch.equal(got.index, want.index)
    with pytest.raises(ValueError, match=r"non-finite value"):
        retriever(target, emb[ids], mask | (ids == 0), seq_ids=ids)
    with pytest.raises(ValueError, match=r"non-finite value \(NaN or inf\) in row 0, a valid one"):
        retriever(target, mask=mask | (ids == 0), seq_ids=ids, items=emb)


def test_hamming_topk_ignores_nonfinite_values_at_masked_positions() -> None:
    from etaretrieval.torch import HammingTopK

    target, seq, mask = nan_batch()
    planes = torch.randn(DIM, 70, generator=torch.Generator().manual_seed(1))
    want = HammingTopK.apply(target, seq, planes, 4, mask)
    seq[0, 8] = float("nan")
    for m in (mask, mask.float()):
        got = HammingTopK.apply(target, seq, planes, 4, m)
        assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])
    shared = seq[1].clone()
    shared[3] = float("inf")
    row_mask = torch.arange(10) != 3
    got = HammingTopK.apply(target, shared, planes, 4, row_mask)
    assert torch.equal(got[0], HammingTopK.apply(target, torch.nan_to_num(shared), planes, 4, row_mask)[0])
    got = HammingTopK.apply(target, shared, planes, 4, row_mask.expand(3, 10))
    assert torch.equal(got[0], HammingTopK.apply(target, torch.nan_to_num(shared), planes, 4, row_mask)[0])
    with pytest.raises(ValueError, match=r"in row \(0, 8\)"):  # every position is valid
        HammingTopK.apply(target, seq, planes, 4, None)
    with pytest.raises(ValueError, match=r"mask must have shape \(3, 10\) or \(10,\)"):
        HammingTopK.apply(target, torch.nan_to_num(seq), planes, 4, mask[:, :9])


def test_pack_op_valid_rows_whose_sum_overflows_are_finite() -> None:
    x = torch.full((2, 3, 4), 3e38)
    x[0, 1, 0] = float("nan")
    valid = torch.ones(2, 3, dtype=torch.bool)
    valid[0, 1] = False
    planes = torch.randn(4, 8)
    assert torch.equal(ops.pack_signatures(x, planes, True, valid)[1], ops.pack_signatures(x[1], planes))
    x[1, 2, 3] = -float("inf")
    with pytest.raises(ValueError, match=r"in row 1 at position 2, a valid one"):
        ops.pack_signatures(x, planes, True, valid)


def test_pack_op_checks_only_valid_rows() -> None:
    x = torch.ones(2, 3, 4)
    x[1, 0, 2] = float("nan")
    planes = torch.randn(4, 70)
    valid = torch.ones(2, 3, dtype=torch.bool)
    valid[1, 0] = False
    sig = ops.pack_signatures(x, planes, True, valid)
    assert torch.equal(sig[0], ops.pack_signatures(x[0], planes)) and torch.equal(sig[1, 1:], sig[0, 1:])
    valid[1, 0] = True
    with pytest.raises(ValueError, match=r"in row 1 at position 0, a valid one"):
        ops.pack_signatures(x, planes, True, valid)
    with pytest.raises(ValueError, match=r"valid must be a bool tensor of shape \(2, 3\)"):
        ops.pack_signatures(x, planes, True, valid[0])


@pytest.mark.filterwarnings(TORCH_INTERNAL_WARNING)
def test_masked_nonfinite_compiled_equals_eager() -> None:
    target, seq, mask = nan_batch()
    seq[0, 9] = float("nan")
    retriever = ETARetriever(DIM, BITS, k=4)

    def index(target: torch.Tensor, seq: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return retriever(target, seq, mask).index

    compiled = torch.compile(index, fullgraph=True)
    assert torch.equal(compiled(target, seq, mask), index(target, seq, mask))
    seq[1, 2] = float("nan")
    with pytest.raises(ValueError, match=r"in row 1 at position 2"):
        compiled(target, seq, mask)


# --------------------------------------------------------------------------- lengths and padding_side in the modules


def test_module_lengths_both_sides() -> None:
    gen = torch.Generator().manual_seed(7)
    target, seq = torch.randn(4, DIM, generator=gen), torch.randn(4, 9, DIM, generator=gen)
    lengths = torch.tensor([9, 3, 0, 5])
    torch.manual_seed(0)
    eta = ETAAttention(DIM, BITS, k=4, heads=2)
    right = eta.retriever(target, seq, lengths=lengths)
    assert torch.equal(right.index, eta.retriever(target, seq, torch.arange(9) < lengths[:, None]).index)
    left = eta.retriever(target, seq, lengths=lengths, padding_side="left")
    assert torch.equal(left.index, eta.retriever(target, seq, left_mask(lengths, 9)).index)
    long_seq = torch.randn(4, 300, DIM, generator=gen)
    long_seq[:, :295] = float("nan")  # front padding of uint8 lengths on a row longer than 255
    small = eta.retriever(target, long_seq, lengths=torch.tensor([5, 1, 0, 3], dtype=torch.uint8), padding_side="left")
    assert (small.index[small.mask] >= 295).all()
    valid = left.index[left.mask]
    assert (valid >= 9 - lengths.repeat_interleave(left.mask.sum(1))).all()
    torch.testing.assert_close(eta(target, seq, lengths=lengths, padding_side="left"),
                               eta(target, seq, left_mask(lengths, 9)), rtol=0, atol=0)
    ids = torch.randint(0, 5, (4, 9), generator=gen)
    emb = torch.nn.Embedding(5, DIM)
    cache = SignatureCache(emb, eta.retriever)
    got = eta.retriever(target, lengths=lengths, padding_side="left", seq_ids=ids, cache=cache)
    want = eta.retriever(target, mask=left_mask(lengths, 9), seq_ids=ids, cache=cache)
    assert torch.equal(got.index, want.index)


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"lengths": torch.tensor([1, 2, 3]), "mask": torch.ones(3, 12, dtype=torch.bool)}, ValueError,
         "either lengths or mask"),
        ({"lengths": torch.tensor([1.0, 2.0, 3.0])}, ValueError, r"lengths must be an integer tensor of shape \(3,\)"),
        ({"lengths": torch.tensor([1, 2])}, ValueError, r"lengths must be an integer tensor of shape \(3,\)"),
        ({"lengths": [1, 2, 3]}, TypeError, "lengths must be a torch.Tensor"),
        ({"lengths": torch.tensor([1, 2, 13])}, ValueError, r"lengths must lie in 0\.\.12, got lengths\[2\] = 13"),
        ({"lengths": torch.tensor([1, 2, 3]), "padding_side": "top"}, ValueError, "padding_side must be"),
    ],
)
def test_module_lengths_errors(kwargs: dict, error: type, match: str) -> None:
    retriever = ETARetriever(DIM, BITS, k=2)
    with pytest.raises(error, match=match):
        retriever(torch.randn(3, DIM), torch.randn(3, 12, DIM), **kwargs)


# --------------------------------------------------------------------------- from_planes


def test_from_planes_equals_the_seeded_module_and_round_trips() -> None:
    planes = er.hyperplanes(DIM, BITS, seed=5)
    seeded = ETARetriever(DIM, BITS, k=3, seed=5)
    for given_planes in (planes.tolist(), planes, er.SimHasher(DIM, BITS, seed=5).planes, torch.from_numpy(planes)):
        built = ETARetriever.from_planes(given_planes, k=3)
        assert torch.equal(built.planes, seeded.planes) and built.k == 3
    gen = torch.Generator().manual_seed(8)
    target, seq = torch.randn(2, DIM, generator=gen), torch.randn(2, 20, DIM, generator=gen)
    assert torch.equal(built(target, seq).index, seeded(target, seq).index)
    source = torch.from_numpy(planes.copy())
    built = ETARetriever.from_planes(source, k=3)
    source.zero_()  # the module holds its own copy
    assert torch.equal(built.planes, seeded.planes)
    other = ETARetriever(DIM, BITS, k=3, seed=99)
    other.load_state_dict(built.state_dict())
    assert torch.equal(other.planes, built.planes)
    assert torch.equal(other(target, seq).index, built(target, seq).index)
    wide = ETARetriever.from_planes(torch.randn(DIM, 130, dtype=torch.float64), k=2)
    assert (wide.dim, wide.bits, wide.planes.dtype) == (DIM, 130, torch.float64)


def test_eta_attention_from_planes_round_trips() -> None:
    planes = torch.randn(DIM, 96, generator=torch.Generator().manual_seed(9))
    eta = ETAAttention.from_planes(planes, k=4, heads=2)
    assert torch.equal(eta.retriever.planes, planes) and eta.retriever.k == 4 and eta.attention.heads == 2
    copy = ETAAttention(DIM, 96, k=4, heads=2, seed=1)
    copy.load_state_dict(eta.state_dict())
    target, seq = torch.randn(3, DIM), torch.randn(3, 30, DIM)
    torch.testing.assert_close(copy(target, seq), eta(target, seq), rtol=0, atol=0)


@pytest.mark.parametrize(
    ("planes", "error", "match"),
    [
        (torch.ones(DIM, 8, dtype=torch.int32), TypeError, "planes must have dtype"),
        (torch.ones(DIM, 1025), ValueError, r"planes must have shape \(dim, bits\).*\(8, 1025\)"),
        (torch.ones(DIM), ValueError, r"planes must have shape \(dim, bits\)"),
        (torch.full((DIM, 8), float("nan")), ValueError, "planes must be finite"),
        ("planes", TypeError, "planes must be a torch.Tensor or an array"),
    ],
)
def test_from_planes_errors(planes: object, error: type, match: str) -> None:
    with pytest.raises(error, match=match):
        ETARetriever.from_planes(planes, k=2)
    with pytest.raises(error, match=match):
        ETAAttention.from_planes(planes, k=2, heads=2)


def test_from_planes_checks_k_and_heads() -> None:
    with pytest.raises(ValueError, match="k must be >= 0"):
        ETARetriever.from_planes(torch.ones(DIM, 8), k=-1)
    with pytest.raises(ValueError, match="heads must be >= 1 and divide dim"):
        ETAAttention.from_planes(torch.ones(DIM, 8), k=1, heads=3)


# --------------------------------------------------------------------------- sizes


def test_huge_k_in_the_ops_names_k() -> None:
    q, keys = torch.zeros(2, 1, dtype=torch.int64), torch.zeros(2, 5, 1, dtype=torch.int64)
    with pytest.raises(ValueError, match=r"k = \d+ is too large"):
        ops.topk_hamming(q, keys, 2**45)
    with pytest.raises(ValueError, match=r"k must be at most"):
        ops.topk_hamming(q, keys, 2**62)
