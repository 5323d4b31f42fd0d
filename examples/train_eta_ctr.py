"""Train a small ETA CTR model next to a recent-window-only model.

The synthetic users of :func:`etaretrieval.datasets.make_long_behavior_ctr`
have long-term interests that appear only in the old part of their
1,000-long behaviour sequences, and short-term ones in the last 50
behaviours. Clicks depend on both. Two models share everything but the
long-sequence block:

* recent-only: item + category embeddings, multi-head target attention over the
  recent window, MLP;
* ETA: the same plus :class:`etaretrieval.torch.ETAAttention` over the whole
  sequence (SimHash signatures of the current embeddings at every step, the 32
  nearest behaviours in Hamming distance, target attention over them).

Both are trained with the same seed and budget; the script prints their test
AUC next to the AUC of the Bayes-optimal scores of what each model can see.

Run: ``python examples/train_eta_ctr.py`` (about two minutes on 2 cores).
"""

from __future__ import annotations

import os

# numpy's BLAS only projects small blocks here (the signatures); left multi-threaded,
# its busy-waiting threads fight torch's for the cores. Set before numpy loads.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import time  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402
from torch import nn  # noqa: E402

from etaretrieval.datasets import OTHER, SHORT_TERM, LongBehaviorData, make_long_behavior_ctr  # noqa: E402
from etaretrieval.torch import ETAAttention, TargetAttention  # noqa: E402

SEED = 0
N_USERS, SEQ_LEN, RECENT = 3000, 1000, 50
TEST_USERS = 600
DIM, BITS, K, HEADS = 32, 64, 32, 2  # DIM = item (16) + category (16) embedding
BATCH, EPOCHS, LR = 256, 3, 3e-3


class CTRModel(nn.Module):
    """Embeddings -> [target, recent interest, (long-term interest)] -> MLP -> click logit."""

    def __init__(self, item_category: torch.Tensor, n_categories: int, use_eta: bool) -> None:
        super().__init__()
        self.register_buffer("item_category", item_category)
        self.items = nn.Embedding(item_category.shape[0], DIM // 2)
        self.categories = nn.Embedding(n_categories + 1, DIM // 2)
        self.recent = TargetAttention(DIM, HEADS)
        self.long = ETAAttention(DIM, BITS, K, HEADS, seed=SEED) if use_eta else None
        blocks = 2 if use_eta else 1
        self.mlp = nn.Sequential(nn.Linear(DIM * (1 + 2 * blocks), 64), nn.ReLU(), nn.Linear(64, 1))

    def forward(self, seq_ids: torch.Tensor, target_ids: torch.Tensor) -> torch.Tensor:
        # Representation of every item id: its own embedding next to its category's.
        table = torch.cat([self.items.weight, self.categories(self.item_category)], dim=-1)
        target = table[target_ids]
        mask = seq_ids != 0
        recent = self.recent(target, table[seq_ids[:, -RECENT:]], mask[:, -RECENT:])
        features = [target, recent, target * recent]
        if self.long is not None:
            # Hashes the (current) rows of the table and reads only the K retrieved
            # behaviours: no batch x sequence x dim tensor is built.
            long = self.long(target, mask=mask, seq_ids=seq_ids, items=table)
            features += [long, target * long]
        return self.mlp(torch.cat(features, dim=-1)).squeeze(-1)


def auc(labels: np.ndarray, scores: np.ndarray) -> float:
    """Area under the ROC curve (Mann-Whitney U, ties counted half)."""
    _, inverse, counts = np.unique(scores, return_inverse=True, return_counts=True)
    ranks = (np.cumsum(counts) - (counts - 1) / 2.0)[inverse]  # average 1-based ranks
    pos = labels > 0.5
    n_pos, n_neg = int(pos.sum()), int((~pos).sum())
    return float((ranks[pos].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def predict(model: CTRModel, data: LongBehaviorData, samples: np.ndarray) -> np.ndarray:
    sequences = torch.from_numpy(data.sequences)
    out = []
    model.eval()
    with torch.no_grad():
        for start in range(0, samples.size, 1024):
            rows = torch.from_numpy(samples[start : start + 1024])
            users = torch.from_numpy(data.user)[rows]
            out.append(model(sequences[users], torch.from_numpy(data.target)[rows]))
    return torch.cat(out).numpy()


def train(data: LongBehaviorData, train_rows: np.ndarray, test_rows: np.ndarray, use_eta: bool) -> float:
    """Train one model; return its test AUC."""
    torch.manual_seed(SEED)
    model = CTRModel(torch.from_numpy(data.item_category), data.n_categories, use_eta)
    optimizer = torch.optim.Adam(model.parameters(), lr=LR)
    loss_fn = nn.BCEWithLogitsLoss()
    sequences, users = torch.from_numpy(data.sequences), torch.from_numpy(data.user)
    targets, labels = torch.from_numpy(data.target), torch.from_numpy(data.label)
    order = np.random.default_rng(SEED)
    name = "ETA" if use_eta else "recent-only"
    for epoch in range(EPOCHS):
        model.train()
        start = time.perf_counter()
        total = 0.0
        perm = torch.from_numpy(order.permutation(train_rows))
        for rows in perm.split(BATCH):
            loss = loss_fn(model(sequences[users[rows]], targets[rows]), labels[rows])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            total += loss.item() * rows.numel()
        score = auc(data.label[test_rows], predict(model, data, test_rows))
        print(f"  {name:12s} epoch {epoch + 1}: train loss {total / train_rows.size:.4f}  "
              f"test AUC {score:.4f}  ({time.perf_counter() - start:.1f} s)")
    return score


def main() -> None:
    torch.set_num_threads(min(4, os.cpu_count() or 1))
    begin = time.perf_counter()
    data = make_long_behavior_ctr(N_USERS, SEQ_LEN, recent=RECENT, items_per_category=20, seed=SEED)
    test = data.user >= N_USERS - TEST_USERS
    train_rows, test_rows = np.flatnonzero(~test), np.flatnonzero(test)
    print(f"{N_USERS} users x {SEQ_LEN} behaviours, {data.n_items} items; "
          f"{train_rows.size} training and {test_rows.size} test samples")
    results = {use_eta: train(data, train_rows, test_rows, use_eta) for use_eta in (False, True)}
    kind, labels = data.kind[test_rows], data.label[test_rows]
    print(f"\ntest AUC  ETA: {results[True]:.4f}   recent-only: {results[False]:.4f}")
    print(f"Bayes-optimal AUC  whole sequence: {auc(labels, (kind != OTHER).astype(float)):.4f}   "
          f"recent window only: {auc(labels, (kind == SHORT_TERM).astype(float)):.4f}")
    print(f"total {time.perf_counter() - begin:.0f} s")


if __name__ == "__main__":
    main()
