"""TimeEncoding (interval buckets) and time information in TargetAttention / ETAAttention."""

from __future__ import annotations

import math

import pytest

torch = pytest.importorskip("torch")

from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from etaretrieval import DTypeError  # noqa: E402
from etaretrieval.torch import ETAAttention, TargetAttention, TimeEncoding, gather_positions  # noqa: E402

DIM = 8


def bucket_reference(x: float, n_buckets: int, base: float, unit: float) -> int:
    """The number of boundaries ``unit * base**i`` (``i < n_buckets - 1``) at or below ``x``."""
    return sum(1 for i in range(n_buckets - 1) if unit * base**i <= x)


@settings(deadline=None, max_examples=50)
@given(values=st.lists(st.integers(-10, 10**7), min_size=1, max_size=30), n_buckets=st.integers(2, 40),
       base=st.sampled_from([2.0, 3.0, 10.0]), unit=st.sampled_from([1.0, 60.0, 3600.0]))
def test_buckets_equal_the_boundary_count(values: list[int], n_buckets: int, base: float, unit: float) -> None:
    enc = TimeEncoding(DIM, n_buckets, base=base, unit=unit)
    got = enc.bucketize(torch.tensor(values)).tolist()
    assert got == [bucket_reference(v, n_buckets, base, unit) for v in values]


def test_bucket_boundaries_exactly() -> None:
    enc = TimeEncoding(DIM, n_buckets=6, base=10.0, unit=60.0)  # [0, 60), [60, 600), ..., [6e5, inf)
    x = torch.tensor([-5, 0, 59, 60, 599, 600, 5999, 6000, 59_999, 60_000, 599_999, 600_000, 10**12])
    assert enc.bucketize(x).tolist() == [0, 0, 0, 1, 1, 2, 2, 3, 3, 4, 4, 5, 5]
    assert enc.boundaries.tolist() == [60.0, 600.0, 6000.0, 60000.0, 600000.0]


def test_intervals_from_timestamps_and_positions() -> None:
    enc = TimeEncoding(DIM)
    mask = torch.tensor([[False, True, True, True], [True, True, False, False], [True, False, True, False]])
    seq_time = torch.tensor([[0, 5, 7, 9], [3, 4, 0, 0], [1, 0, 2, 0]])
    got = enc.intervals(mask, seq_time, torch.tensor([10, 6, 4]))
    assert torch.equal(got, torch.tensor([10, 6, 4]).unsqueeze(1) - seq_time)
    positions = enc.intervals(mask)  # valid behaviours newer than each position
    want = [[3, 2, 1, 0], [1, 0, 0, 0], [1, 1, 0, 0]]
    assert (torch.where(mask, positions, 0) == torch.where(mask, torch.tensor(want), 0)).all()
    assert enc.intervals(None, shape=(2, 3)).tolist() == [[2, 1, 0], [2, 1, 0]]


def test_forward_shape_and_gradient() -> None:
    enc = TimeEncoding(DIM, n_buckets=4)
    out = enc(torch.ones(2, 5, dtype=torch.bool), torch.zeros(2, 5, dtype=torch.int32), torch.tensor([0, 100]))
    assert out.shape == (2, 5, DIM)
    assert torch.equal(out[0], enc.embedding.weight[0].expand(5, -1))  # interval 0 -> bucket 0
    assert torch.equal(out[1], enc.embedding.weight[3].expand(5, -1))  # 100 -> last bucket
    out.sum().backward()
    assert enc.embedding.weight.grad is not None and enc.embedding.weight.grad[[0, 3]].abs().sum() > 0


def test_initial_scale() -> None:
    torch.manual_seed(0)
    weight = TimeEncoding(64, 64).embedding.weight.detach()
    assert abs(float(weight.std()) - 0.3) < 0.02 and abs(float(weight.mean())) < 0.02
    assert not TimeEncoding(8, init_std=0.0).embedding.weight.any()


def test_bad_arguments() -> None:
    with pytest.raises(ValueError, match="n_buckets"):
        TimeEncoding(DIM, 1)
    with pytest.raises(ValueError, match="base"):
        TimeEncoding(DIM, base=1.0)
    with pytest.raises(ValueError, match="unit"):
        TimeEncoding(DIM, unit=math.inf)
    with pytest.raises(ValueError, match="init_std must be a finite number >= 0, got -1"):
        TimeEncoding(DIM, init_std=-1)
    enc = TimeEncoding(DIM)
    mask = torch.ones(2, 3, dtype=torch.bool)
    with pytest.raises(ValueError, match="together"):
        enc.intervals(mask, torch.zeros(2, 3, dtype=torch.int64))
    with pytest.raises(DTypeError, match="seq_time"):
        enc.intervals(mask, torch.zeros(2, 3), torch.zeros(2, dtype=torch.int64))
    with pytest.raises(ValueError, match=r"seq_time must have shape \(2, 3\)"):
        enc.intervals(mask, torch.zeros(2, 4, dtype=torch.int64), torch.zeros(2, dtype=torch.int64))
    with pytest.raises(ValueError, match=r"target_time must have shape \(2,\)"):
        enc.intervals(mask, torch.zeros(2, 3, dtype=torch.int64), torch.zeros(3, dtype=torch.int64))
    with pytest.raises(ValueError, match="mask or shape"):
        enc.intervals(None)
    with pytest.raises(TypeError, match="TimeEncoding"):
        TargetAttention(DIM, 2, time=torch.nn.Embedding(3, DIM))  # type: ignore[arg-type]


def data(seed: int, b: int = 3, length: int = 30):
    gen = torch.Generator().manual_seed(seed)
    seq = torch.randn(b, length, DIM, generator=gen, dtype=torch.float64)
    target = torch.randn(b, DIM, generator=gen, dtype=torch.float64)
    mask = torch.rand(b, length, generator=gen) < 0.7
    times = torch.cumsum(torch.randint(1, 1000, (b, length), generator=gen), dim=1)
    return target, seq, mask, times, times[:, -1] + 5


@pytest.mark.parametrize("timestamps", [True, False])
def test_target_attention_adds_the_time_embedding_to_the_items(timestamps: bool) -> None:
    target, seq, mask, times, request = data(1)
    attn = TargetAttention(DIM, 2, time=TimeEncoding(DIM)).double()
    context = dict(seq_time=times, target_time=request) if timestamps else {}
    got = attn(target, seq, mask, **context)
    interval = request.unsqueeze(1) - times if timestamps else attn.time.intervals(mask)
    want = attn.attend(target, seq + attn.time.embedding(attn.time.bucketize(interval)), mask)
    torch.testing.assert_close(got, want)
    plain = TargetAttention(DIM, 2).double()
    plain.load_state_dict(attn.state_dict(), strict=False)
    assert not torch.allclose(got, plain(target, seq, mask))


def test_position_time_is_the_same_with_left_or_right_padding() -> None:
    target, seq, mask, _, _ = data(2, length=12)
    lengths = mask.sum(1)
    right = torch.zeros_like(seq)
    right_mask = torch.arange(12) < lengths.unsqueeze(1)
    right[right_mask] = seq[mask]
    left = torch.zeros_like(seq)
    left_mask = torch.arange(12) >= 12 - lengths.unsqueeze(1)
    left[left_mask] = seq[mask]
    attn = TargetAttention(DIM, 2, time=TimeEncoding(DIM)).double()
    torch.testing.assert_close(attn(target, left, left_mask), attn(target, right, right_mask))
    torch.testing.assert_close(attn(target, seq, mask), attn(target, right, right_mask))


@pytest.mark.parametrize("candidates", [None, 12])
def test_eta_attention_with_time_equals_retrieve_gather_attend(candidates: int | None) -> None:
    target, seq, mask, times, request = data(3, length=40)
    eta = ETAAttention(DIM, 64, k=5, heads=2, time=TimeEncoding(DIM), candidates=candidates).double()
    got = eta(target, seq, mask, seq_time=times, target_time=request)
    found = eta.retriever(target, seq, mask)
    index, valid = found.index, found.mask
    if candidates is not None:  # the 5 most recent of the 12 nearest
        index = torch.where(valid, index, -1).sort(dim=1, descending=True).values[:, :5]
        valid = index >= 0
    values = gather_positions(seq, index) * valid.unsqueeze(-1)
    interval = gather_positions(request.unsqueeze(1) - times, index)
    values = values + eta.time.embed(interval) * valid.unsqueeze(-1)
    torch.testing.assert_close(got, eta.attention.attend(target, values, valid))
    got.sum().backward()
    assert eta.time.embedding.weight.grad is not None and eta.time.embedding.weight.grad.abs().sum() > 0


def test_eta_candidates_must_not_be_fewer_than_k() -> None:
    with pytest.raises(ValueError, match="candidates must be >= k"):
        ETAAttention(DIM, 64, k=4, heads=2, candidates=3)


def test_eta_attention_time_with_the_signature_cache() -> None:
    """The serving form (ids + cache) gives the same output as the training form with time."""
    from etaretrieval.torch import SignatureCache

    gen = torch.Generator().manual_seed(5)
    emb = torch.nn.Embedding(30, DIM)
    ids = torch.randint(0, 30, (2, 25), generator=gen)
    times = torch.cumsum(torch.randint(1, 100, (2, 25), generator=gen), dim=1)
    request = times[:, -1] + 1
    eta = ETAAttention(DIM, 64, k=6, heads=2, time=TimeEncoding(DIM))
    target = emb(ids[:, 3])
    served = eta(target, mask=None, seq_ids=ids, cache=SignatureCache(emb, eta.retriever),
                 seq_time=times, target_time=request)
    fresh = eta(target, emb(ids), seq_time=times, target_time=request)
    torch.testing.assert_close(served, fresh)


@pytest.mark.parametrize("side", ["left", "right"])
def test_eta_position_time_with_lengths_equals_the_mask(side: str) -> None:
    target, seq, _, _, _ = data(6, length=20)
    lengths = torch.tensor([20, 7, 0])
    col = torch.arange(20)
    mask = col >= 20 - lengths[:, None] if side == "left" else col < lengths[:, None]
    eta = ETAAttention(DIM, 64, k=5, heads=2, time=TimeEncoding(DIM)).double()
    torch.testing.assert_close(eta(target, seq, lengths=lengths, padding_side=side), eta(target, seq, mask))
    torch.testing.assert_close(eta(target, seq, mask.int()), eta(target, seq, mask))  # numeric mask
