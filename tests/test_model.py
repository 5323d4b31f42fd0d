"""ETAModel: shapes, swappable blocks, categories, and it learns on a small synthetic set."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from etaretrieval.datasets import make_sequence_ctr  # noqa: E402
from etaretrieval.torch import (  # noqa: E402
    CategoryMatchAttention,
    ETAAttention,
    ETAModel,
    ETARetriever,
    InnerProductTopKAttention,
    MeanPooling,
    RecentWindowAttention,
    SDIMBlock,
    SignatureCache,
    TargetAttention,
    TimeEncoding,
)

DIM = 16


@pytest.fixture(scope="module")
def data():  # type: ignore[no-untyped-def]
    return make_sequence_ctr(n_users=120, max_len=80, recent=8, n_categories=12, items_per_category=4,
                             samples_per_user=8, seed=1)


def inputs(data, rows: np.ndarray) -> tuple[dict[str, torch.Tensor], torch.Tensor]:  # type: ignore[no-untyped-def]
    b = data.batch(rows, max_len=80)
    return {"history": torch.from_numpy(b.history), "target": torch.from_numpy(b.target),
            "mask": torch.from_numpy(b.mask), "times": torch.from_numpy(b.times),
            "target_time": torch.from_numpy(b.target_time), "categories": torch.from_numpy(b.categories),
            "target_category": torch.from_numpy(b.target_category)}, torch.from_numpy(b.label)


@pytest.mark.parametrize("long", [
    None,
    RecentWindowAttention(DIM, 8, 2),
    CategoryMatchAttention(DIM, 8, 2, time=TimeEncoding(DIM)),
    InnerProductTopKAttention(DIM, 8, 2),
    TargetAttention(DIM, 2, time=TimeEncoding(DIM)),
    MeanPooling(DIM),
    ETAAttention(DIM, 64, 8, 2, candidates=16),
    SDIMBlock(DIM, 64, 4, time=TimeEncoding(DIM)),
], ids=lambda m: "default" if m is None else type(m).__name__)
def test_every_block_plugs_in_and_gradients_reach_the_embeddings(data, long) -> None:  # type: ignore[no-untyped-def]
    model = ETAModel(data.n_items, DIM, n_categories=data.n_categories, long=long, recent=8)
    x, y = inputs(data, np.arange(16))
    logits = model(**x)
    assert logits.shape == (16,) and bool(logits.isfinite().all())
    torch.nn.functional.binary_cross_entropy_with_logits(logits, y).backward()
    assert model.items.weight.grad is not None and model.items.weight.grad.abs().sum() > 0
    assert model.categories is not None and model.categories.weight.grad.abs().sum() > 0


def test_default_mask_and_no_categories(data) -> None:  # type: ignore[no-untyped-def]
    model = ETAModel(data.n_items, DIM)
    x, _ = inputs(data, np.arange(4))
    assert model.categories is None and model.items.embedding_dim == DIM
    out = model(x["history"], x["target"])  # mask = history != 0, no time (ETA uses positions)
    torch.testing.assert_close(out, model(x["history"], x["target"], x["mask"]))
    with pytest.raises(ValueError, match="categories"):
        ETAModel(data.n_items, DIM, n_categories=3)(x["history"], x["target"])
    with pytest.raises(ValueError, match="n_items"):
        ETAModel(0, DIM)


def test_the_model_learns(data) -> None:  # type: ignore[no-untyped-def]
    torch.manual_seed(0)
    model = ETAModel(data.n_items, DIM, n_categories=data.n_categories, recent=8, k=8, hidden=(32,))
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    rows = np.flatnonzero(data.train)
    x, y = inputs(data, rows)
    with torch.no_grad():
        before = torch.nn.functional.binary_cross_entropy_with_logits(model(**x), y).item()
    for step in range(40):
        batch = np.random.default_rng(step).choice(rows.size, 64, replace=False)
        xb = {name: t[batch] for name, t in x.items()}
        loss = torch.nn.functional.binary_cross_entropy_with_logits(model(**xb), y[batch])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    with torch.no_grad():
        after = torch.nn.functional.binary_cross_entropy_with_logits(model(**x), y).item()
    assert after < before - 0.05, (before, after)


def _reference(model, x):  # type: ignore[no-untyped-def]
    """The model's logits with both blocks given the whole embedded history (no window, no id lookup)."""
    seq = model.embed(x["history"], x.get("categories"))
    query = model.embed(x["target"], x.get("target_category"))
    context = {"seq_time": x.get("times"), "target_time": x.get("target_time"), "seq_cat": x.get("categories"),
               "target_cat": x.get("target_category")}
    short = model.short(query, seq, x["mask"], **context)
    long = model.long(query, seq, x["mask"], **context)
    return model.mlp(torch.cat([query, short, long, query * short, query * long], dim=-1)).squeeze(-1)


@pytest.mark.parametrize("side", ["left", "right"])
@pytest.mark.parametrize("numeric_mask", [False, True])
@pytest.mark.parametrize("hash_space", ["embedding", "attention"])
def test_window_and_id_lookup_equal_the_whole_history(data, side, numeric_mask, hash_space) -> None:  # type: ignore[no-untyped-def]
    """The short block on the newest `recent` behaviours and ETA by id give the whole-history model's logits and
    gradients, and no B x L x d embedding is built (in either hash space)."""
    table = torch.from_numpy(data.item_categories())
    torch.manual_seed(0)
    model = ETAModel(data.n_items, DIM, n_categories=data.n_categories, recent=8, k=8, item_categories=table,
                     hash_space=hash_space)
    assert isinstance(model.long, ETAAttention) and model.long.hash_space == hash_space
    with torch.no_grad():  # projections away from the identity: the attention space differs from the embeddings'
        for proj in (model.long.attention.query, model.long.attention.key):
            proj.weight.add_(0.3 * torch.randn_like(proj.weight))
            proj.bias.add_(0.3 * torch.randn_like(proj.bias))
    rows = np.arange(24)
    b = data.batch(rows, max_len=80, padding_side=side)
    x, _ = inputs(data, rows)
    x.update(history=torch.from_numpy(b.history), times=torch.from_numpy(b.times),
             categories=torch.from_numpy(b.categories), mask=torch.from_numpy(b.mask))
    x["history"][:3, :] = torch.where(x["mask"][:3], x["history"][:3], 0)
    x["mask"][:3] &= torch.arange(80) % 3 != 0  # holes, and rows shorter than the window
    x["mask"][3] = False
    if numeric_mask:
        x["mask"] = x["mask"].to(torch.float32)
    widths = []
    embed = model.embed

    def recording(ids, categories):  # type: ignore[no-untyped-def]
        widths.append(ids.shape[-1] if ids.dim() == 2 else 0)
        return embed(ids, categories)

    model.embed = recording  # type: ignore[method-assign]
    fast = model(**x)
    assert max(widths) == 8  # the window only: the long block reads its k rows from the item table
    fast.sum().backward()
    grads = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    bool_x = dict(x, mask=x["mask"] != 0)
    slow = _reference(model, bool_x)
    slow.sum().backward()
    torch.testing.assert_close(fast, slow, rtol=1e-6, atol=1e-6)
    for g, p in zip(grads, model.parameters()):
        torch.testing.assert_close(g, p.grad, rtol=1e-5, atol=1e-6)


def test_item_table_without_categories_and_validation(data) -> None:  # type: ignore[no-untyped-def]
    model = ETAModel(data.n_items, DIM, k=8)
    x, _ = inputs(data, np.arange(8))
    del x["categories"], x["target_category"]
    torch.testing.assert_close(model(**x), _reference(model, x))
    torch.testing.assert_close(model.item_table(), model.items.weight)
    with_cats = ETAModel(data.n_items, DIM, n_categories=data.n_categories)
    assert with_cats.item_table() is None  # categories, but not known per item: the embedded history
    good = torch.zeros(data.n_items + 1, dtype=torch.int64)
    with pytest.raises(ValueError, match="item_categories needs n_categories"):
        ETAModel(data.n_items, DIM, item_categories=good)
    with pytest.raises(ValueError, match=r"item_categories must have shape \(49,\)"):
        ETAModel(48, DIM, n_categories=3, item_categories=good[:10])
    with pytest.raises(ValueError, match=r"item_categories must lie in \[0, 3\]"):
        ETAModel(48, DIM, n_categories=3, item_categories=torch.full((49,), 4))
    with pytest.raises(TypeError, match="item_categories must have an integer dtype"):
        ETAModel(48, DIM, n_categories=3, item_categories=torch.zeros(49))


def test_custom_short_block_sees_the_whole_history_and_padding_gets_no_gradient(data) -> None:  # type: ignore[no-untyped-def]
    """Only a RecentWindowAttention short block is fed its window (its own k, not `recent`); a valid position
    holding the padding id 0 leaves the padding row without gradient, as nn.Embedding does."""
    x, _ = inputs(data, np.arange(12))
    for short in (RecentWindowAttention(DIM, 24, 2), TargetAttention(DIM, 2, time=TimeEncoding(DIM))):
        torch.manual_seed(0)
        model = ETAModel(data.n_items, DIM, n_categories=data.n_categories, recent=4, k=8, short=short,
                         item_categories=torch.from_numpy(data.item_categories()))
        torch.testing.assert_close(model(**x), _reference(model, x), rtol=1e-6, atol=1e-6)
    model = ETAModel(data.n_items, DIM, recent=4, k=40)
    history = x["history"].clone()
    history[:, :30] = 0
    model(history, x["target"], torch.ones_like(history, dtype=torch.bool)).sum().backward()
    assert model.items.weight.grad is not None and not model.items.weight.grad[0].any()
    assert model.items.weight.grad[1:].any()


def test_large_catalogue_hashes_the_history_not_the_table(data) -> None:  # type: ignore[no-untyped-def]
    """With n_items + 1 > 2 B L the ETA block gets the embedded history (hashing the table would cost more)."""
    x, _ = inputs(data, np.arange(2))
    del x["categories"], x["target_category"]
    model = ETAModel(4 * 2 * 80, DIM, k=8)
    calls = []
    forward = model.long.forward

    def recording(*args, **kwargs):  # type: ignore[no-untyped-def]
        calls.append(kwargs.get("items") is None)
        return forward(*args, **kwargs)

    model.long.forward = recording  # type: ignore[method-assign]
    out = model(**x)
    assert calls == [True]
    torch.testing.assert_close(out, _reference(model, x))


def test_forward_names_bad_arguments(data) -> None:  # type: ignore[no-untyped-def]
    model = ETAModel(data.n_items, DIM, n_categories=data.n_categories,
                     item_categories=torch.from_numpy(data.item_categories()))
    x, _ = inputs(data, np.arange(3))
    bad = {"categories": torch.ones(7, 30, dtype=torch.int64), "times": x["times"][:, :8],
           "target_time": torch.zeros(4, dtype=torch.int64), "target": x["target"].float()}
    for name, value in bad.items():
        with pytest.raises((ValueError, TypeError), match=name):
            model(**dict(x, **{name: value}))
    with pytest.raises(ValueError, match="history must be a"):
        model(**dict(x, history=x["history"].float()))
    with pytest.raises(ValueError, match="mask must have shape"):
        model(**dict(x, mask=x["mask"][:, :5]))


@pytest.mark.parametrize("long", [None, RecentWindowAttention(DIM, 4, 2, time=TimeEncoding(DIM)),
                                  CategoryMatchAttention(DIM, 4, 2, time=TimeEncoding(DIM)),
                                  ETAAttention(DIM, 64, 4, 2, time=TimeEncoding(DIM), candidates=8)],
                         ids=lambda m: "default" if m is None else type(m).__name__)
def test_empty_histories(long) -> None:  # type: ignore[no-untyped-def]
    """L = 0: every block sees no behaviour; the logits are finite and equal the whole-history form's."""
    model = ETAModel(20, DIM, n_categories=3, k=4, long=long, item_categories=torch.arange(21) % 4)
    x = {"history": torch.zeros(3, 0, dtype=torch.int64), "target": torch.tensor([1, 2, 3]),
         "mask": torch.zeros(3, 0, dtype=torch.bool), "times": torch.zeros(3, 0, dtype=torch.int64),
         "target_time": torch.tensor([5, 6, 7]), "categories": torch.zeros(3, 0, dtype=torch.int64),
         "target_category": torch.tensor([1, 2, 3])}
    out = model(**x)
    assert out.shape == (3,) and bool(out.isfinite().all())
    torch.testing.assert_close(out, _reference(model, x))
    out.sum().backward()


def test_half_and_double_keep_the_hyperplanes_and_boundaries(data) -> None:  # type: ignore[no-untyped-def]
    """model.half() / .double() convert the weights, never the hyperplanes nor the time-bucket boundaries."""
    x, _ = inputs(data, np.arange(6))
    del x["categories"], x["target_category"]
    torch.manual_seed(0)
    model = ETAModel(data.n_items, DIM, k=8)
    assert isinstance(model.long, ETAAttention) and model.long.time is not None
    planes = model.long.retriever.planes.clone()
    bounds = model.long.time.boundaries.clone()
    for convert, dtype in ((ETAModel.double, torch.float64), (ETAModel.half, torch.float16)):
        convert(model)
        assert model.items.weight.dtype == dtype
        assert torch.equal(model.long.retriever.planes, planes) and torch.equal(model.long.time.boundaries, bounds)
        out = model(**x)
        assert out.dtype == dtype and bool(out.isfinite().all())
    cache = SignatureCache(torch.nn.Embedding(10, DIM), ETARetriever(DIM, 64, 4)).half()
    assert cache.planes.dtype == torch.float32


def test_attention_space_model_exports() -> None:
    model = ETAModel(100, DIM, hash_space="attention").eval()
    with torch.no_grad():
        model.long.attention.key.bias.add_(0.5)  # type: ignore[union-attr]
    history, target = torch.randint(1, 101, (4, 300)), torch.randint(1, 101, (4,))
    program = torch.export.export(model, (history, target))
    assert torch.equal(program.module()(history, target), model(history, target))
