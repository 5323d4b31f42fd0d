"""Ragged histories (torch.nested jagged tensors) in the torch modules: equal to the padded path on the same rows."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from etaretrieval.torch import _jagged  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore:The PyTorch API of nested tensors is in prototype stage:UserWarning")


@st.composite
def segments(draw: st.DrawFn) -> tuple[torch.Tensor, int, list[tuple[int, int]]]:
    """``(offsets, T, spans)``: rows of 0..7 values, ``offsets[0]`` possibly above 0, values past the last row."""
    lens = draw(st.lists(st.integers(0, 7), max_size=6))
    head, tail = draw(st.integers(0, 2)), draw(st.integers(0, 2))
    bounds = head + np.concatenate([[0], np.cumsum(lens, dtype=np.int64)])
    dtype = draw(st.sampled_from([torch.int32, torch.int64]))
    spans = [(int(a), int(b)) for a, b in zip(bounds[:-1], bounds[1:])]
    return torch.tensor(bounds, dtype=dtype), int(bounds[-1]) + tail, spans


@settings(max_examples=80, deadline=None)
@given(case=segments(), seed=st.integers(0, 2**32 - 1), heads=st.integers(1, 3), masked=st.booleans())
def test_segment_softmax_and_sum_equal_per_row_ones(case: tuple, seed: int, heads: int, masked: bool) -> None:
    offsets, total, spans = case
    gen = torch.Generator().manual_seed(seed)
    scores = (torch.randn(total, heads, generator=gen, dtype=torch.float64) * 5).requires_grad_()
    valid = torch.rand(total, generator=gen) < 0.7 if masked else None
    rows = _jagged.row_index(offsets, total)
    assert rows.dtype == torch.int64 and rows.shape == (total,)
    weights = _jagged.segment_softmax(scores, rows, len(spans), valid)
    pooled = _jagged.segment_sum(weights * scores, rows, len(spans))
    assert pooled.shape == (len(spans), heads)
    for b, (lo, hi) in enumerate(spans):
        assert (rows[lo:hi] == b).all()
        keep = torch.ones(hi - lo, dtype=torch.bool) if valid is None else valid[lo:hi]
        want = torch.zeros(hi - lo, heads, dtype=torch.float64)
        if keep.any():
            want[keep] = torch.softmax(scores[lo:hi][keep], dim=0)
        torch.testing.assert_close(weights[lo:hi], want)
        torch.testing.assert_close(pooled[b], (want * scores[lo:hi]).sum(0))
    outside = torch.ones(total, dtype=torch.bool)
    for lo, hi in spans:
        outside[lo:hi] = False
    assert (rows[outside] == len(spans)).all()
    if total:  # gradients: those of the per-row softmax; none for values of no row
        pooled.sum().backward()
        assert scores.grad is not None and bool((scores.grad[outside] == 0).all())


@settings(max_examples=80, deadline=None)
@given(case=segments(), n=st.integers(0, 9), seed=st.integers(0, 2**32 - 1), masked=st.booleans())
def test_newest_and_newer_equal_per_row_ones(case: tuple, n: int, seed: int, masked: bool) -> None:
    offsets, total, spans = case
    gen = torch.Generator().manual_seed(seed)
    valid = torch.rand(total, generator=gen) < 0.6 if masked else None
    rows = _jagged.row_index(offsets, total)
    index, filled = _jagged.newest(offsets, n, valid, rows)
    count = _jagged.newer(offsets, rows, valid)
    assert index.shape == filled.shape == (len(spans), n) and index.dtype == torch.int64
    for b, (lo, hi) in enumerate(spans):
        ok = [i for i in range(lo, hi) if valid is None or bool(valid[i])]
        want = ([-1] * n + ok)[-n:] if n else []
        assert index[b].tolist() == want and filled[b].tolist() == [i >= 0 for i in want]
        for i in range(lo, hi):
            assert int(count[i]) == sum(1 for j in ok if j > i)


def test_take_and_flat_index() -> None:
    values = torch.arange(10.0).view(5, 2).requires_grad_()
    got = _jagged.take(values, _jagged.flat_index(torch.tensor([1, 3, 5]), torch.tensor([[1, -1], [0, 1]])))
    assert got.tolist() == [[[4.0, 5.0], [0.0, 0.0]], [[6.0, 7.0], [8.0, 9.0]]]
    got.sum().backward()
    assert values.grad is not None and values.grad.sum(1).tolist() == [0.0, 0.0, 2.0, 2.0, 2.0]
    assert _jagged.take(torch.zeros(0, 3), torch.tensor([[-1, -1]])).shape == (1, 2, 3)


def test_parts_and_aligned_name_the_argument() -> None:
    offsets = torch.tensor([0, 2, 5])
    seq = torch.nested.nested_tensor_from_jagged(torch.randn(5, 3), offsets)
    values, own = _jagged.parts("seq", seq)
    assert own is offsets and values.shape == (5, 3)
    with pytest.raises(TypeError, match="seq must be a torch.Tensor, got list"):
        _jagged.parts("seq", [1, 2])
    with pytest.raises(ValueError, match="seq must be a torch.nested jagged tensor here"):
        _jagged.parts("seq", torch.zeros(2, 3))
    with pytest.raises(ValueError, match="seq is a jagged nested tensor with holes"):
        _jagged.parts("seq", torch.nested.narrow(torch.zeros(2, 5), 1, torch.tensor([0, 1]), torch.tensor([3, 2]),
                                                 layout=torch.jagged))
    times = torch.nested.nested_tensor_from_jagged(torch.arange(5), offsets.clone())  # equal offsets, another tensor
    assert _jagged.aligned("times", times, offsets, 5, "seq").tolist() == [0, 1, 2, 3, 4]
    for bad, match in ((torch.tensor([0, 3, 5]), r"times must have the offsets of seq \(\[0, 2, 5\]\)"),
                       (torch.tensor([0, 5]), "times must have the 2 rows of seq, got 1")):
        with pytest.raises(ValueError, match=match):
            _jagged.aligned("times", torch.nested.nested_tensor_from_jagged(torch.arange(5), bad), offsets, 5, "seq")
    with pytest.raises(ValueError, match="times must have the 4 values of seq, got 5"):
        _jagged.aligned("times", times, offsets, 4, "seq")
