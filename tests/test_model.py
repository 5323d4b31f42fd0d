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
    InnerProductTopKAttention,
    MeanPooling,
    RecentWindowAttention,
    SDIMBlock,
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
