"""Retrieval baselines against plain references: selection, attention, padding, gradients, errors."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from etaretrieval import DTypeError  # noqa: E402
from etaretrieval.torch import (  # noqa: E402
    CategoryMatchAttention,
    ETAAttention,
    InnerProductTopKAttention,
    MeanPooling,
    RecentWindowAttention,
    SDIMBlock,
    TargetAttention,
    TimeEncoding,
    TWINAttention,
    gather_positions,
    select_top,
)

DIM = 8


def select_reference(score: list[float], mask: list[bool], k: int) -> list[int]:
    """Eligible positions by score descending, equal scores newest first; -1 padded to k."""
    eligible = [p for p in range(len(score)) if mask[p] and score[p] > float("-inf")]
    chosen = sorted(eligible, key=lambda p: (-score[p], -p))[:k]
    return chosen + [-1] * (k - len(chosen))


@settings(deadline=None, max_examples=50)
@given(rows=st.integers(1, 4), length=st.integers(0, 15), k=st.integers(0, 18), seed=st.integers(0, 2**31 - 1))
def test_select_top_equals_a_sorted_reference(rows: int, length: int, k: int, seed: int) -> None:
    gen = torch.Generator().manual_seed(seed)
    score = torch.randint(0, 4, (rows, length), generator=gen).double()  # many ties
    mask = torch.rand(rows, length, generator=gen) < 0.7
    index, valid = select_top(score, mask, k)
    want = [select_reference(score[b].tolist(), mask[b].tolist(), k) for b in range(rows)]
    assert index.tolist() == want
    assert torch.equal(valid, index >= 0)
    assert index.shape == (rows, k) and index.dtype == torch.int64


def data(seed: int, b: int = 4, length: int = 30, n_cat: int = 3):
    gen = torch.Generator().manual_seed(seed)
    seq = torch.randint(-2, 3, (b, length, DIM), generator=gen).double()  # integer-valued: exact ties
    target = torch.randint(-2, 3, (b, DIM), generator=gen).double()
    mask = torch.rand(b, length, generator=gen) < 0.75
    cats = torch.randint(1, n_cat + 1, (b, length), generator=gen)
    tcat = torch.randint(1, n_cat + 1, (b,), generator=gen)
    times = torch.cumsum(torch.randint(1, 100, (b, length), generator=gen), dim=1)
    return target, seq, mask, cats, tcat, times, times[:, -1] + 1


@pytest.mark.parametrize("seed", range(4))
def test_recent_window_picks_the_last_k_valid(seed: int) -> None:
    target, seq, mask, *_ = data(seed)
    index, valid = RecentWindowAttention(DIM, k=5, heads=2).select(target, seq, mask)
    for b in range(mask.shape[0]):
        valid_pos = [p for p in range(mask.shape[1]) if mask[b, p]]
        want = valid_pos[::-1][:5]
        assert index[b].tolist() == want + [-1] * (5 - len(want))


@pytest.mark.parametrize("seed", range(4))
def test_category_match_picks_the_most_recent_k_of_the_target_category(seed: int) -> None:
    target, seq, mask, cats, tcat, *_ = data(seed)
    index, _ = CategoryMatchAttention(DIM, k=4, heads=2).select(target, seq, mask, seq_cat=cats, target_cat=tcat)
    for b in range(mask.shape[0]):
        same = [p for p in range(mask.shape[1]) if mask[b, p] and cats[b, p] == tcat[b]]
        want = same[::-1][:4]
        assert index[b].tolist() == want + [-1] * (4 - len(want))


@pytest.mark.parametrize("seed", range(4))
def test_inner_product_top_k_equals_brute_force_with_newest_first_ties(seed: int) -> None:
    target, seq, mask, *_ = data(seed)
    index, _ = InnerProductTopKAttention(DIM, k=6, heads=2).select(target, seq, mask)
    for b in range(mask.shape[0]):
        score = (seq[b] @ target[b]).tolist()
        assert index[b].tolist() == select_reference(score, mask[b].tolist(), 6)


def blocks(timed: bool) -> list[torch.nn.Module]:
    time = (lambda: TimeEncoding(DIM)) if timed else (lambda: None)
    return [
        RecentWindowAttention(DIM, 5, 2, time=time()),
        CategoryMatchAttention(DIM, 4, 2, time=time()),
        InnerProductTopKAttention(DIM, 6, 2, time=time()),
        MeanPooling(DIM, time=time()),
        TargetAttention(DIM, 2, time=time()),
        ETAAttention(DIM, 64, 6, 2, time=time()),
        SDIMBlock(DIM, 64, 4, time=time()),
        TWINAttention(DIM, 6, 2, time=time()),
    ]


@pytest.mark.parametrize("timed", [False, True])
def test_retrieval_forward_equals_gather_then_attend(timed: bool) -> None:
    target, seq, mask, cats, tcat, times, request = data(7)
    context = dict(seq_time=times, target_time=request, seq_cat=cats, target_cat=tcat)
    for block in blocks(timed)[:3]:
        block = block.double()
        got = block(target, seq, mask, **context)
        index, valid = block.select(target, seq, mask, seq_cat=cats, target_cat=tcat)
        values = gather_positions(seq, index) * valid.unsqueeze(-1)
        if timed:
            values = values + block.time.embed(gather_positions(request.unsqueeze(1) - times, index)) * valid[..., None]
        torch.testing.assert_close(got, block.attention.attend(target, values, valid))


def test_mean_pooling_equals_a_loop() -> None:
    target, seq, mask, *_ = data(8)
    got = MeanPooling(DIM)(target, seq, mask)
    for b in range(mask.shape[0]):
        rows = seq[b][mask[b]]
        want = rows.mean(0) if rows.shape[0] else torch.zeros(DIM, dtype=seq.dtype)
        torch.testing.assert_close(got[b], want)
    torch.testing.assert_close(MeanPooling(DIM)(target, seq), seq.mean(1))


@pytest.mark.parametrize("timed", [False, True])
def test_left_and_right_padding_give_the_same_output(timed: bool) -> None:
    target, seq, mask, cats, tcat, times, request = data(9, length=16)
    lengths = mask.sum(1, keepdim=True)
    left_mask = torch.arange(16) >= 16 - lengths
    right_mask = torch.arange(16) < lengths

    def move(x: torch.Tensor, where: torch.Tensor) -> torch.Tensor:
        out = torch.zeros_like(x)
        out[where] = x[mask]
        return out

    outputs = []
    for where in (left_mask, right_mask, mask):
        torch.manual_seed(0)
        result = []
        for block in blocks(timed):
            block = block.double()
            result.append(block(target, move(seq, where), where, seq_time=move(times, where), target_time=request,
                                seq_cat=move(cats, where), target_cat=tcat))
        outputs.append(result)
    for left, right, scattered in zip(*outputs):
        torch.testing.assert_close(left, right)
        torch.testing.assert_close(left, scattered)


@pytest.mark.parametrize("timed", [False, True])
def test_all_masked_rows_are_finite_and_gradients_reach_the_selected_rows(timed: bool) -> None:
    target, seq, mask, cats, tcat, times, request = data(10)
    mask[0] = False
    for block in blocks(timed):
        block = block.double()
        s = seq.clone().requires_grad_(True)
        out = block(target, s, mask, seq_time=times, target_time=request, seq_cat=cats, target_cat=tcat)
        assert out.shape == (4, DIM) and bool(out.isfinite().all())
        out.sum().backward()
        assert s.grad is not None and torch.equal(s.grad[0], torch.zeros_like(s.grad[0]))
        assert s.grad[1:].abs().sum() > 0 and bool((s.grad[~mask] == 0).all())
        params = [p for p in block.parameters() if p.grad is not None]
        assert params or isinstance(block, (MeanPooling, SDIMBlock)) and not timed


def test_fewer_behaviours_than_k_and_empty_sequences() -> None:
    target = torch.randn(2, DIM)
    out = RecentWindowAttention(DIM, 10, 2)(target, torch.randn(2, 3, DIM))
    assert out.shape == (2, DIM)
    index, valid = RecentWindowAttention(DIM, 4, 2).select(target, torch.randn(2, 0, DIM))
    assert index.tolist() == [[-1] * 4] * 2 and not valid.any()
    assert MeanPooling(DIM)(target, torch.randn(2, 0, DIM)).abs().sum() == 0


def test_bad_arguments() -> None:
    target, seq, mask, cats, tcat, *_ = data(11)
    block = CategoryMatchAttention(DIM, 4, 2).double()
    with pytest.raises(ValueError, match="seq_cat is required"):
        block(target, seq, mask)
    with pytest.raises(DTypeError, match="target_cat"):
        block(target, seq, mask, seq_cat=cats, target_cat=tcat.double())
    with pytest.raises(ValueError, match=r"seq_cat must have shape \(4, 30\)"):
        block(target, seq, mask, seq_cat=cats[:, 1:], target_cat=tcat)
    with pytest.raises(ValueError, match="seq must have shape"):
        RecentWindowAttention(DIM, 4, 2).double()(target, seq[..., 1:], mask)
    with pytest.raises(DTypeError, match="mask"):
        RecentWindowAttention(DIM, 4, 2).double()(target, seq, mask.to(torch.complex64))
    block = RecentWindowAttention(DIM, 4, 2).double()  # numeric masks: non-zero = valid
    torch.testing.assert_close(block(target, seq, mask.int()), block(target, seq, mask))
    with pytest.raises(ValueError, match="k must be >= 0"):
        RecentWindowAttention(DIM, -1, 2)
    with pytest.raises(TypeError, match="TimeEncoding"):
        MeanPooling(DIM, time=3)  # type: ignore[arg-type]


@pytest.mark.parametrize("timed", [False, True])
def test_sdim_block_sums_the_values_with_time_and_hashes_the_embeddings(timed: bool) -> None:
    from etaretrieval.torch import SDIMAttention

    target, seq, mask, cats, tcat, times, request = data(12)
    block = SDIMBlock(DIM, 64, 4, seed=3, time=TimeEncoding(DIM) if timed else None).double()
    s = seq.clone().requires_grad_(True)
    got = block(target, s, mask, seq_time=times, target_time=request, seq_cat=cats, target_cat=tcat)
    values = seq + block.time(mask, times, request) if timed else seq
    want = SDIMAttention(DIM, 64, 4, seed=3)(target, seq, mask, values=values)
    torch.testing.assert_close(got, want)
    got.sum().backward()
    assert s.grad is not None and bool((s.grad[~mask] == 0).all()) and s.grad.abs().sum() > 0


def perturbed_twin(k: int, timed: bool, seed: int) -> TWINAttention:
    """A float64 TWIN block whose projections moved away from the identity (and so from plain inner products)."""
    torch.manual_seed(seed)
    block = TWINAttention(DIM, k, 2, time=TimeEncoding(DIM) if timed else None).double()
    with torch.no_grad():
        for proj in (block.attention.query, block.attention.key, block.attention.value):
            proj.weight.add_(0.5 * torch.randn_like(proj.weight))
            proj.bias.add_(0.5 * torch.randn_like(proj.bias))
    return block


def twin_logits(block: TWINAttention, target: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
    """Plain reference: per row and position, the sum over heads of q_h . k_h / sqrt(d / heads)."""
    h, dh = block.attention.heads, DIM // block.attention.heads
    q = target @ block.attention.query.weight.T + block.attention.query.bias
    keys = items @ block.attention.key.weight.T + block.attention.key.bias
    out = torch.zeros(items.shape[:2], dtype=items.dtype)
    for b in range(items.shape[0]):
        for pos in range(items.shape[1]):
            out[b, pos] = sum(q[b, j * dh:(j + 1) * dh] @ keys[b, pos, j * dh:(j + 1) * dh] for j in range(h))
    return out / dh ** 0.5


@pytest.mark.parametrize("timed", [False, True])
@pytest.mark.parametrize("seed", range(3))
def test_twin_selects_its_attention_top_k_with_newest_first_ties(timed: bool, seed: int) -> None:
    target, seq, mask, cats, tcat, times, request = data(20 + seed)
    block = perturbed_twin(6, timed, seed)
    index, valid = block.retrieve(target, seq, mask, seq_time=times, target_time=request)
    items = seq + block.time(mask, times, request) if timed else seq
    score = twin_logits(block, target, items)
    for b in range(mask.shape[0]):
        assert index[b].tolist() == select_reference(score[b].tolist(), mask[b].tolist(), 6)
    assert torch.equal(valid, index >= 0)
    # identity projections at the start, no time: exact ties between equal inner products, newest first
    plain = TWINAttention(DIM, 6, 2).double()
    got, _ = plain.select(target, seq, mask)
    for b in range(mask.shape[0]):
        assert got[b].tolist() == select_reference((seq[b] @ target[b]).tolist(), mask[b].tolist(), 6)


@pytest.mark.parametrize("timed", [False, True])
def test_twin_attends_over_its_selection_with_time(timed: bool) -> None:
    target, seq, mask, cats, tcat, times, request = data(30)
    block = perturbed_twin(5, timed, 1)
    got = block(target, seq, mask, seq_time=times, target_time=request, seq_cat=cats, target_cat=tcat)
    index, valid = block.retrieve(target, seq, mask, seq_time=times, target_time=request)
    values = gather_positions(seq, index)
    if timed:
        values = values + block.time.embed(gather_positions(request.unsqueeze(1) - times, index))
    torch.testing.assert_close(got, block.attention.attend(target, values * valid[..., None], valid))


@pytest.mark.parametrize("timed", [False, True])
def test_twin_with_k_at_least_the_history_is_full_attention(timed: bool) -> None:
    target, seq, mask, cats, tcat, times, request = data(31)
    twin = perturbed_twin(seq.shape[1] + 3, timed, 2)
    full = TargetAttention(DIM, 2, time=twin.time).double()
    full.load_state_dict(twin.attention.state_dict(), strict=False)
    context = dict(seq_time=times, target_time=request)
    torch.testing.assert_close(twin(target, seq, mask, **context), full(target, seq, mask, **context))


def test_twin_edges_and_errors() -> None:
    target, seq, mask, *_ = data(32)
    block = TWINAttention(DIM, 0, 2).double()  # k = 0: nothing selected, the output projection's bias
    assert block.retrieve(target, seq, mask)[0].shape == (4, 0)
    torch.testing.assert_close(block(target, seq, mask), block.attention.out.bias.expand(4, -1))
    index, valid = TWINAttention(DIM, 3, 2).double().retrieve(target, seq[:, :0], mask[:, :0])
    assert index.tolist() == [[-1] * 3] * 4 and not valid.any()
    s = seq.clone().requires_grad_(True)
    TWINAttention(DIM, 3, 2).double()(target, s, mask).sum().backward()
    assert s.grad is not None and int((s.grad.abs().sum(-1) > 0).sum(1).max()) <= 3  # the selected rows only
    with pytest.raises(ValueError, match="seq must have shape"):
        block(target, seq[..., 1:], mask)
    with pytest.raises(ValueError, match="k must be >= 0"):
        TWINAttention(DIM, -1, 2)
    with pytest.raises(TypeError, match="TimeEncoding"):
        TWINAttention(DIM, 2, 2, time=3)  # type: ignore[arg-type]
