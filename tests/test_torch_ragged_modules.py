"""Ragged histories (torch.nested jagged tensors) in the torch modules: equal to the padded path on the same rows."""

from __future__ import annotations

import functools

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402
from torch.utils._python_dispatch import TorchDispatchMode  # noqa: E402

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


# --- the modules: a jagged history against the same rows padded ---------------------------------------------------

from etaretrieval.torch import (  # noqa: E402
    ETAAttention,
    ETAModel,
    ETARetriever,
    SignatureCache,
    TargetAttention,
    TimeEncoding,
)

DIM = 4


@st.composite
def histories(draw: st.DrawFn) -> dict:
    """Rows of 0..9 behaviours (B = 0..4), values before the first row and after the last (Arrow semantics),
    int64 or int32 offsets: ids (0 possible: the padding id), timestamps, categories, a mask."""
    lens = draw(st.lists(st.integers(0, 9), max_size=4))
    head, tail = draw(st.sampled_from([(0, 0), (0, 0), (2, 1)]))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    bounds = head + np.concatenate([[0], np.cumsum(lens, dtype=np.int64)])
    total = head + sum(lens) + tail
    return dict(
        spans=[(int(a), int(b)) for a, b in zip(bounds[:-1], bounds[1:])],
        offsets=torch.tensor(bounds, dtype=draw(st.sampled_from([torch.int64, torch.int32]))),
        ids=torch.from_numpy(rng.integers(0 if draw(st.booleans()) else 1, 12, size=total)).to(
            draw(st.sampled_from([torch.int64, torch.int32]))),
        times=torch.from_numpy(np.sort(rng.integers(0, 1000, size=total))),
        cats=torch.from_numpy(rng.integers(1, 4, size=total)),
        valid=torch.from_numpy(rng.random(total) < 0.7) if draw(st.booleans()) else None,
        seed=int(rng.integers(0, 2**31)),
    )


def jagged(values: torch.Tensor, offsets: torch.Tensor) -> torch.Tensor:
    return torch.nested.nested_tensor_from_jagged(values, offsets)


def padded(values: torch.Tensor, spans: list[tuple[int, int]], fill: float = 0) -> torch.Tensor:
    """``(B, L, ...)`` the rows ``values[a:b]`` right-padded (``L = max(b - a, 1)``)."""
    out = values.new_full((len(spans), max((b - a for a, b in spans), default=0) or 1, *values.shape[1:]), fill)
    for row, (a, b) in enumerate(spans):
        out[row, :b - a] = values[a:b]
    return out


def unpadded(x: torch.Tensor, spans: list[tuple[int, int]], total: int) -> torch.Tensor:
    """The ``(total, ...)`` flat values of right-padded rows; zeros for values of no row."""
    out = x.new_zeros((total, *x.shape[2:]))
    for row, (a, b) in enumerate(spans):
        out[a:b] = x[row, :b - a]
    return out


def grad(t: torch.Tensor) -> torch.Tensor:
    """``t.grad``, zeros where nothing reached ``t`` (no behaviours: the outputs do not depend on it)."""
    return torch.zeros_like(t) if t.grad is None else t.grad


def row_mask(spans: list[tuple[int, int]]) -> torch.Tensor:
    return padded(torch.ones(spans[-1][1] if spans else 0, dtype=torch.bool), spans, False)


@settings(max_examples=40, deadline=None)
@given(case=histories(), timed=st.sampled_from([None, "positions", "timestamps"]))
def test_target_attention_equals_padded(case: dict, timed: str | None) -> None:
    """Full attention over jagged items: the padded output and gradients, to float64 rounding."""
    torch.manual_seed(case["seed"])
    spans, offsets, total = case["spans"], case["offsets"], len(case["ids"])
    block = TargetAttention(DIM, 2, time=None if timed is None else TimeEncoding(DIM)).double()
    for p in block.parameters():
        torch.nn.init.normal_(p)
    target, flat = torch.randn(len(spans), DIM, dtype=torch.float64), torch.randn(total, DIM, dtype=torch.float64)
    flat.requires_grad_()
    stamps = {} if timed != "timestamps" else dict(target_time=torch.full((len(spans),), 1000))
    valid = case["valid"]
    got = block(target, jagged(flat, offsets), None if valid is None else jagged(valid, offsets),
                **({} if not stamps else dict(stamps, seq_time=jagged(case["times"], offsets))))
    dense = padded(flat.detach(), spans).requires_grad_()
    mask = row_mask(spans) if valid is None else padded(valid, spans, False)
    want = block(target, dense, mask, **({} if not stamps else dict(stamps, seq_time=padded(case["times"], spans))))
    torch.testing.assert_close(got, want)
    weights = torch.randn(got.shape, dtype=torch.float64)
    (got * weights).sum().backward()
    (want * weights).sum().backward()
    torch.testing.assert_close(grad(flat), unpadded(grad(dense), spans, len(flat)))


MODES = ["seq", "seq+ids", "items", "cache"]


@settings(max_examples=40, deadline=None)
@given(case=histories(), mode=st.sampled_from(MODES), k=st.integers(0, 6))
def test_retriever_equals_padded(case: dict, mode: str, k: int) -> None:
    """Positions identical (counted from each row's start), values and their gradients equal, in every mode."""
    torch.manual_seed(case["seed"])
    spans, offsets, ids, valid = case["spans"], case["offsets"], case["ids"], case["valid"]
    retriever = ETARetriever(DIM, 16, k, seed=case["seed"])
    emb = torch.nn.Embedding(12, DIM)
    target = torch.randn(len(spans), DIM)
    mask = row_mask(spans) if valid is None else padded(valid, spans, False)
    jmask = None if valid is None else jagged(valid, offsets)
    if mode == "seq":
        flat = emb(ids.long()).detach().requires_grad_()
        dense = padded(flat.detach(), spans).requires_grad_()
        got, want = retriever(target, jagged(flat, offsets), jmask), retriever(target, dense, mask)
    elif mode == "seq+ids":
        flat = emb(ids.long()).detach().requires_grad_()
        dense = padded(flat.detach(), spans).requires_grad_()
        got = retriever(target, jagged(flat, offsets), jmask, seq_ids=jagged(ids, offsets))
        want = retriever(target, dense, mask, seq_ids=padded(ids, spans))
    elif mode == "items":
        flat, dense = emb.weight.detach().clone().requires_grad_(), emb.weight.detach().clone().requires_grad_()
        got = retriever(target, None, jmask, seq_ids=jagged(ids, offsets), items=flat)
        want = retriever(target, None, mask, seq_ids=padded(ids, spans), items=dense)
    else:
        cache = SignatureCache(emb, retriever)
        got = retriever(target, None, jmask, seq_ids=jagged(ids, offsets), cache=cache)
        want = retriever(target, None, mask, seq_ids=padded(ids, spans), cache=cache)
    assert torch.equal(got.index, want.index) and torch.equal(got.mask, want.mask)
    assert got.values.shape == (len(spans), k, DIM)
    assert torch.equal(got.values, want.values)
    if mode != "cache" and got.values.requires_grad:
        weights = torch.randn(got.values.shape)
        (got.values * weights).sum().backward()
        (want.values * weights).sum().backward()
        want_grad = grad(dense) if mode == "items" else unpadded(grad(dense), spans, len(flat))
        torch.testing.assert_close(grad(flat), want_grad)


@settings(max_examples=40, deadline=None)
@given(case=histories(), timed=st.sampled_from([None, "positions", "timestamps"]),
       candidates=st.sampled_from([None, 6]), space=st.sampled_from(["embedding", "attention"]),
       by_id=st.booleans())
def test_eta_attention_equals_padded(case: dict, timed: str | None, candidates: int | None, space: str,
                                     by_id: bool) -> None:
    torch.manual_seed(case["seed"])
    spans, offsets, ids, valid = case["spans"], case["offsets"], case["ids"], case["valid"]
    block = ETAAttention(DIM, 16, 3, 2, seed=case["seed"], time=None if timed is None else TimeEncoding(DIM),
                         candidates=candidates, hash_space=space)
    emb = torch.nn.Embedding(12, DIM)
    target = torch.randn(len(spans), DIM)
    mask = row_mask(spans) if valid is None else padded(valid, spans, False)
    jmask = None if valid is None else jagged(valid, offsets)
    stamps: dict = {}
    jstamps: dict = {}
    if timed == "timestamps":
        stamps = dict(seq_time=padded(case["times"], spans), target_time=torch.full((len(spans),), 1000))
        jstamps = dict(stamps, seq_time=jagged(case["times"], offsets))
    if by_id:
        flat, dense = emb.weight.detach().clone().requires_grad_(), emb.weight.detach().clone().requires_grad_()
        got = block(target, None, jmask, seq_ids=jagged(ids, offsets), items=flat, **jstamps)
        want = block(target, None, mask, seq_ids=padded(ids, spans), items=dense, **stamps)
    else:
        flat = emb(ids.long()).detach().requires_grad_()
        dense = padded(flat.detach(), spans).requires_grad_()
        got, want = block(target, jagged(flat, offsets), jmask, **jstamps), block(target, dense, mask, **stamps)
    torch.testing.assert_close(got, want)
    weights = torch.randn(got.shape)
    (got * weights).sum().backward()
    (want * weights).sum().backward()
    torch.testing.assert_close(grad(flat), grad(dense) if by_id else unpadded(grad(dense), spans, len(flat)))


def _model(n_items: int, categories: str, blocks: str, seed: int) -> ETAModel:
    torch.manual_seed(seed)
    item_categories = torch.arange(n_items + 1) % 3 + 1 if categories == "by item" else None
    if item_categories is not None:
        item_categories[0] = 0
    kwargs: dict = {}
    if blocks == "full attention":
        width = DIM if categories == "none" else DIM
        kwargs = dict(short=TargetAttention(width, 2, time=TimeEncoding(width)), long=TargetAttention(width, 2))
    return ETAModel(n_items, DIM, n_categories=0 if categories == "none" else 3, recent=3, k=4, bits=16,
                    hidden=(8,), item_categories=item_categories, seed=seed, **kwargs)


@settings(max_examples=30, deadline=None)
@given(case=histories(), categories=st.sampled_from(["none", "given", "by item"]), timed=st.booleans(),
       blocks=st.sampled_from(["default", "full attention"]), n_items=st.sampled_from([11, 400]))
def test_model_equals_padded(case: dict, categories: str, timed: bool, blocks: str, n_items: int) -> None:
    """ETAModel's logits and parameter gradients on a jagged batch equal those of the padded batch."""
    spans, offsets, ids, valid = case["spans"], case["offsets"], case["ids"], case["valid"]
    if categories == "by item":
        cats = (ids.long() % 3 + 1).where(ids != 0, 0)
    else:
        cats = case["cats"]
    model = _model(n_items, categories, blocks, case["seed"])
    batch = len(spans)
    target = torch.arange(batch) % 11 + 1
    extra: dict = {}
    jextra: dict = {}
    if categories != "none":
        tcat = target % 3 + 1 if categories == "by item" else torch.ones(batch, dtype=torch.int64)
        extra.update(categories=padded(cats, spans), target_category=tcat)
        jextra.update(categories=jagged(cats, offsets), target_category=tcat)
    if timed:
        extra.update(times=padded(case["times"], spans), target_time=torch.full((batch,), 1000))
        jextra.update(times=jagged(case["times"], offsets), target_time=torch.full((batch,), 1000))
    history = padded(ids, spans)
    mask = (history != 0) if valid is None else padded(valid, spans, False)
    jmask = None if valid is None else jagged(valid, offsets)
    want = model(history, target, mask, **extra)
    grads_want = torch.autograd.grad(want.sum(), list(model.parameters()), allow_unused=True) if batch else None
    got = model(jagged(ids, offsets), target, jmask, **jextra)
    torch.testing.assert_close(got, want)
    if grads_want is not None:
        grads = torch.autograd.grad(got.sum(), list(model.parameters()), allow_unused=True)
        for g, w in zip(grads, grads_want):
            if w is None:
                assert g is None or not g.any()
            else:
                torch.testing.assert_close(g, w)


#: Inductor uses a deprecated torch.jit API internally (torch 2.13); not ours to fix.
TORCH_INTERNAL_WARNING = "ignore:`torch.jit.script_method` is deprecated:DeprecationWarning"
#: NestedTensor has no stable hash for the AOT autograd cache (torch 2.13): the graph compiles, uncached.
NESTED_CACHE_WARNING = "ignore:NestedTensor does not implement _stable_hash_for_caching:UserWarning"
#: Dynamo reads ``.grad`` of a jagged tensor made from values that require grad (a non-leaf): torch's warning.
DYNAMO_NESTED_GRAD_WARNING = "ignore:The .grad attribute of a Tensor that is not a leaf Tensor:UserWarning"


@pytest.mark.filterwarnings(TORCH_INTERNAL_WARNING, NESTED_CACHE_WARNING, DYNAMO_NESTED_GRAD_WARNING)
@pytest.mark.parametrize(("backend", "blocks", "n_items"), [("aot_eager", "default", 11), ("inductor", "default", 11),
                                                            ("aot_eager", "full attention", 400)])
def test_model_compiles_fullgraph_over_jagged_batches(backend: str, blocks: str, n_items: int) -> None:
    """torch.compile(fullgraph) of ETAModel's forward + backward on jagged batches: eager's logits and gradients.

    The default blocks (ETA by id, the window) and jagged embedded histories (full attention, short and long).
    """
    model = _model(n_items, "given", blocks, 0)

    def step(history: torch.Tensor, target: torch.Tensor, times: torch.Tensor, target_time: torch.Tensor,
             categories: torch.Tensor, target_category: torch.Tensor) -> torch.Tensor:
        return model(history=history, target=target, times=times, target_time=target_time,
                     categories=categories, target_category=target_category)

    compiled = torch.compile(step, fullgraph=True, backend=backend)
    gen = torch.Generator().manual_seed(0)
    for lens in ([5, 0, 12, 3], [1, 9, 2, 0, 7]):  # two sets of offsets (and B): one graph, symbolic sizes
        offsets = torch.tensor(np.concatenate([[0], np.cumsum(lens)]))
        total, batch = int(offsets[-1]), len(lens)
        args = (jagged(torch.randint(1, 12, (total,), generator=gen), offsets), torch.randint(1, 12, (batch,)),
                jagged(torch.arange(total), offsets), torch.full((batch,), total),
                jagged(torch.randint(1, 4, (total,), generator=gen), offsets), torch.ones(batch, dtype=torch.int64))
        want = step(*args)
        grads_want = torch.autograd.grad(want.sum(), list(model.parameters()))
        got = compiled(*args)
        torch.testing.assert_close(got, want)
        for g, w in zip(torch.autograd.grad(got.sum(), list(model.parameters())), grads_want):
            torch.testing.assert_close(g, w)


@functools.cache
def _errors() -> list:
    offsets, other = torch.tensor([0, 2, 5]), torch.tensor([0, 3, 5])
    ids, stamps = jagged(torch.tensor([1, 2, 3, 4, 5]), offsets), jagged(torch.arange(5), offsets)
    flat = torch.randn(5, DIM)
    seq, target, when = jagged(flat, offsets), torch.randn(2, DIM), torch.full((2,), 9)
    model, ta = ETAModel(11, DIM, k=2, bits=16, recent=2), TargetAttention(DIM, 2, time=TimeEncoding(DIM))
    eta, retriever = ETAAttention(DIM, 16, 2, 2, time=TimeEncoding(DIM)), ETARetriever(DIM, 16, 2)
    tgt = torch.tensor([1, 2])
    return [
        (lambda: model(ids, tgt, times=jagged(torch.arange(5), other), target_time=when), ValueError,
         r"times must have the offsets of history \(\[0, 2, 5\]\), got \[0, 3, 5\]"),
        (lambda: model(ids, tgt, times=jagged(torch.arange(5), torch.tensor([0, 5])), target_time=when), ValueError,
         "times must have the 2 rows of history, got 1"),
        (lambda: model(ids, tgt, times=jagged(torch.arange(6), torch.tensor([0, 2, 5])), target_time=when),
         ValueError, "times must have the 5 values of history, got 6"),
        (lambda: model(ids, tgt, times=torch.zeros(2, 3, dtype=torch.int64), target_time=when), ValueError,
         "times must be a torch.nested jagged tensor here"),
        (lambda: model(ids, tgt, torch.ones(2, 3, dtype=torch.bool)), ValueError,
         "mask must be None or a jagged tensor with the rows of history"),
        (lambda: model(jagged(torch.ones(5), offsets), tgt), ValueError, r"history must be a \(B, j\) integer jagged"),
        (lambda: model(ids, torch.tensor([1, 2, 3])), ValueError, r"target must have shape \(2,\)"),
        (lambda: model(jagged(torch.arange(5), torch.tensor([0, 3, 2])), tgt), ValueError,
         r"history has bad offsets: offsets must be non-decreasing, got offsets\[2\] = 2 < offsets\[1\] = 3"),
        (lambda: model(jagged(torch.arange(5), torch.tensor([0, 3, 7])), tgt), ValueError,
         r"history has bad offsets: offsets must lie within the 5 entries of history"),
        (lambda: model(torch.nested.narrow(torch.ones(2, 5, dtype=torch.int64), 1, torch.tensor([0, 1]),
                                           torch.tensor([3, 2]), layout=torch.jagged), tgt), ValueError,
         "history is a jagged nested tensor with holes"),
        (lambda: model(ids, tgt, categories=jagged(torch.ones(5), offsets), target_category=tgt), TypeError,
         "categories must have an integer dtype"),
        (lambda: ta(target, jagged(torch.randn(5, DIM + 1), offsets)), ValueError,
         r"items must have shape \(2, j, 4\) \(a jagged tensor\), got 2 rows, values of shape \(5, 5\)"),
        (lambda: ta(target, jagged(torch.ones(5, DIM, dtype=torch.int64), offsets)), TypeError,
         "items must have a floating-point dtype"),
        (lambda: ta(torch.randn(3, DIM), seq), ValueError, r"items must have shape \(3, j, 4\)"),
        (lambda: ta(target, seq, seq_time=jagged(torch.arange(5), other), target_time=when), ValueError,
         "seq_time must have the offsets of items"),
        (lambda: ta(target, seq, jagged(torch.ones(5, 2), offsets)), ValueError, r"mask must be a \(B, j\) jagged"),
        (lambda: eta(target, seq, seq_time=jagged(torch.arange(5), other), target_time=when), ValueError,
         "seq_time must have the offsets of seq"),
        (lambda: eta(target, seq, seq_time=stamps), ValueError, "pass seq_time and target_time together"),
        (lambda: retriever(target, seq, seq_ids=torch.zeros(2, 3, dtype=torch.int64)), ValueError,
         "seq_ids must be a jagged tensor like the other of seq and seq_ids"),
        (lambda: retriever(target, seq, seq_ids=jagged(torch.arange(5), other)), ValueError,
         "seq_ids must have the offsets of seq"),
        (lambda: retriever(target, seq, lengths=torch.tensor([2, 3])), ValueError, "either offsets .* or lengths"),
        (lambda: retriever(target, seq, padding_side="left"), ValueError, "padding_side applies to padded rows"),
        (lambda: retriever(target, None, seq_ids=jagged(torch.ones(5), offsets), items=torch.randn(9, DIM)),
         TypeError, "seq_ids must have an integer dtype"),
        (lambda: retriever(target, None, seq_ids=jagged(torch.tensor([1, 2, 3, 4, 9]), offsets),
                           items=torch.randn(9, DIM)), IndexError, r"ids\[1, 2\] = 9 is outside the table's rows"),
        (lambda: retriever(target, jagged(flat.clone().index_fill_(0, torch.tensor([3]), float("nan")), offsets)),
         ValueError, r"seq holds a non-finite value \(NaN or inf\) in row 1 at position 1, a valid one"),
    ]


@pytest.mark.parametrize("index", range(len(_errors())))
def test_clear_errors(index: int) -> None:
    call, error, match = _errors()[index]
    with pytest.raises(error, match=match):
        call()


def test_cache_refreshes_the_rows_of_a_jagged_batch() -> None:
    emb = torch.nn.Embedding(12, DIM)
    cache = SignatureCache(emb, ETARetriever(DIM, 16, 2))
    before = cache.signatures.clone()
    with torch.no_grad():
        emb.weight.mul_(-1)
    cache.refresh(jagged(torch.tensor([3, 5, 3]), torch.tensor([0, 1, 3])))
    changed = (cache.signatures != before).any(1)
    assert set(torch.nonzero(changed).flatten().tolist()) <= {3, 5} and bool(changed[[3, 5]].all())


@settings(max_examples=60, deadline=None)
@given(case=segments(), seed=st.integers(0, 2**32 - 1), masked=st.booleans())
def test_newer_at_equals_newer(case: tuple, seed: int, masked: bool) -> None:
    offsets, total, spans = case
    gen = torch.Generator().manual_seed(seed)
    valid = torch.rand(total, generator=gen) < 0.6 if masked else None
    every = _jagged.newer(offsets, _jagged.row_index(offsets, total), valid)
    width = max((hi - lo for lo, hi in spans), default=0)
    position = torch.tensor([[p if p < hi - lo else -1 for p in range(width)] for lo, hi in spans],
                            dtype=torch.int64).reshape(len(spans), width)
    flat = _jagged.flat_index(offsets, position)
    got = _jagged.newer_at(offsets, flat, valid)
    assert torch.equal(got[flat >= 0], every[flat[flat >= 0]])


class Largest(TorchDispatchMode):
    """Records the most elements of any dense tensor an operation makes (forward and backward)."""

    def __init__(self) -> None:
        super().__init__()
        self.numel = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # type: ignore[no-untyped-def]
        out = func(*args, **(kwargs or {}))
        for t in out if isinstance(out, (tuple, list)) else (out,):
            if isinstance(t, torch.Tensor) and not t.is_nested:
                self.numel = max(self.numel, t.numel())
        return out


@pytest.mark.parametrize("blocks", ["default", "full attention"])
@pytest.mark.parametrize("n_items", [11, 20_000])  # ETA by id (the item table), or over the embedded history
def test_no_batch_by_longest_row_tensor(blocks: str, n_items: int) -> None:
    """One row of 4,000 among 255 of 1 (B * L_max = 1,024,000 for 4,255 behaviours): nothing near B * L_max."""
    lens = [4000] + [1] * 255
    offsets = torch.tensor(np.concatenate([[0], np.cumsum(lens)]))
    total = int(offsets[-1])
    model = _model(n_items, "given", blocks, 0)
    history = jagged(torch.randint(0, min(n_items, 11) + 1, (total,)), offsets)
    kwargs = dict(times=jagged(torch.arange(total), offsets), target_time=torch.full((256,), total),
                  categories=jagged(torch.randint(1, 4, (total,)), offsets), target_category=torch.ones(256).long())
    with Largest() as seen:
        model(history, torch.randint(1, 11, (256,)), **kwargs).sum().backward()
        retrieved = ETARetriever(DIM, 16, 8)(torch.randn(256, DIM), jagged(torch.randn(total, DIM), offsets))
    assert retrieved.values.shape == (256, 8, DIM)
    assert seen.numel <= max(8 * total, (n_items + 1) * DIM), seen.numel  # a few values per behaviour at most


@pytest.mark.filterwarnings(NESTED_CACHE_WARNING)
def test_compiled_graph_checks_other_offsets_when_it_runs() -> None:
    """Under torch.compile, equal offsets held in another tensor pass; different ones raise, naming the argument."""
    block = TargetAttention(DIM, 2, time=TimeEncoding(DIM))
    compiled = torch.compile(block, fullgraph=True, backend="aot_eager")
    offsets, target, now = torch.tensor([0, 2, 5]), torch.randn(2, DIM), torch.full((2,), 9)
    items = jagged(torch.randn(5, DIM), offsets)
    same = jagged(torch.arange(5), offsets.clone())
    torch.testing.assert_close(compiled(target, items, seq_time=same, target_time=now),
                               block(target, items, seq_time=same, target_time=now))
    with pytest.raises(RuntimeError, match="seq_time must have the offsets of items"):
        compiled(target, items, seq_time=jagged(torch.arange(5), torch.tensor([0, 3, 5])), target_time=now)
