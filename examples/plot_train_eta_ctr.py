"""
==============================
Training a small ETA CTR model
==============================

A short training run of a click-through-rate model whose long-sequence block
is :class:`~etaretrieval.torch.ETAAttention`: at every step the current item
embeddings are SimHash-ed, the ``k`` behaviours nearest to the target in
Hamming distance are retrieved from the whole sequence, and multi-head target
attention runs over them. A twin model that only sees the recent window is
trained alongside for comparison.

The synthetic users of :func:`etaretrieval.datasets.make_long_behavior_ctr`
have long-term interests that appear only in the old part of their sequences,
so the recent window cannot see them. This run is kept to a few seconds; the
stand-alone ``examples/train_eta_ctr.py`` trains bigger models for longer.
"""

# %%
# Data
# ----
# 1,000 users with up to 300 behaviours each (padded with id 0 at the oldest
# end), the last 20 of which form the recent window. Each user has 8 targets: a
# third from a long-term interest, a third from a short-term one, a third from
# neither; interest targets are clicked with probability 0.8, others with 0.1.
import time

import matplotlib.pyplot as plt
import numpy as np
import torch
from torch import nn

from etaretrieval.datasets import LONG_TERM, OTHER, SHORT_TERM, make_long_behavior_ctr
from etaretrieval.torch import ETAAttention, TargetAttention

torch.manual_seed(0)
torch.set_num_threads(2)
n_users, seq_len, recent = 1_000, 300, 20
data = make_long_behavior_ctr(n_users, seq_len, recent=recent, n_categories=100, seed=0)
test_users = data.user >= n_users - 200
train_rows, test_rows = np.flatnonzero(~test_users), np.flatnonzero(test_users)
print(f"{data.sequences.shape[0]} sequences of length {seq_len}, {data.n_items} items, "
      f"{train_rows.size} training and {test_rows.size} test samples")

# %%
# The model
# ---------
# Item and category embeddings (16 dimensions each) form a 32-dimensional
# representation per item id. The recent window goes through target attention;
# the whole sequence through ``ETAAttention`` (64-bit signatures, ``k = 16``).
# Passing ``seq_ids`` with ``items=table`` hashes the rows of the current table
# and gathers only the ``k`` retrieved rows: no batch x sequence x dim tensor.
DIM, BITS, K, HEADS = 32, 64, 16, 2


class CTR(nn.Module):
    def __init__(self, use_eta: bool) -> None:
        super().__init__()
        self.register_buffer("category", torch.from_numpy(data.item_category))
        self.items = nn.Embedding(data.n_items + 1, DIM // 2)
        self.categories = nn.Embedding(data.n_categories + 1, DIM // 2)
        self.recent = TargetAttention(DIM, HEADS)
        self.eta = ETAAttention(DIM, BITS, K, HEADS, seed=0) if use_eta else None
        width = DIM * (5 if use_eta else 3)
        self.mlp = nn.Sequential(nn.Linear(width, 64), nn.ReLU(), nn.Linear(64, 1))

    def forward(self, seq_ids: torch.Tensor, target_ids: torch.Tensor) -> torch.Tensor:
        table = torch.cat([self.items.weight, self.categories(self.category)], dim=-1)  # (N, DIM)
        target, mask = table[target_ids], seq_ids != 0
        short = self.recent(target, table[seq_ids[:, -recent:]], mask[:, -recent:])
        features = [target, short, target * short]
        if self.eta is not None:
            long = self.eta(target, mask=mask, seq_ids=seq_ids, items=table)  # (B, DIM)
            features += [long, target * long]
        return self.mlp(torch.cat(features, dim=-1)).squeeze(-1)


# %%
# Training
# --------
# Two epochs of Adam over the same batches for both models.
sequences = torch.from_numpy(data.sequences)
users, targets = torch.from_numpy(data.user), torch.from_numpy(data.target)
labels = torch.from_numpy(data.label)


def auc(y: np.ndarray, score: np.ndarray) -> float:
    """Area under the ROC curve (rank statistic; scores are continuous here)."""
    ranks = np.empty(score.size)
    ranks[np.argsort(score)] = np.arange(1, score.size + 1)
    pos = y > 0.5
    return float((ranks[pos].sum() - pos.sum() * (pos.sum() + 1) / 2) / (pos.sum() * (~pos).sum()))


def predict(model: CTR, rows: np.ndarray) -> np.ndarray:
    model.eval()
    with torch.no_grad():
        r = torch.from_numpy(rows)
        return torch.sigmoid(model(sequences[users[r]], targets[r])).numpy()


models = {"recent window only": CTR(use_eta=False), "ETA": CTR(use_eta=True)}
history = {name: [] for name in models}
for name, model in models.items():
    torch.manual_seed(0)
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    loss_fn = nn.BCEWithLogitsLoss()
    start = time.perf_counter()
    for epoch in range(2):
        model.train()
        order = torch.from_numpy(np.random.default_rng(epoch).permutation(train_rows))
        for rows in order.split(128):
            loss = loss_fn(model(sequences[users[rows]], targets[rows]), labels[rows])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            history[name].append(loss.item())
    print(f"{name:>20}: {time.perf_counter() - start:.1f} s, "
          f"test AUC {auc(data.label[test_rows], predict(model, test_rows)):.3f}")

# %%
# What each model learned
# -----------------------
# The mean predicted click probability per kind of target on the test users.
# Both models recognise short-term interests, which the recent window shows;
# only ETA, which retrieves from the whole sequence, recognises the long-term
# ones.
kinds = {"long-term interest": LONG_TERM, "short-term interest": SHORT_TERM, "neither": OTHER}
fig, (ax0, ax1) = plt.subplots(1, 2, figsize=(10, 3.8), layout="constrained")
width = 0.38
for i, (name, model) in enumerate(models.items()):
    p = predict(model, test_rows)
    means = [p[data.kind[test_rows] == kind].mean() for kind in kinds.values()]
    ax0.bar(np.arange(3) + (i - 0.5) * width, means, width, label=name)
    smooth = np.convolve(history[name], np.ones(10) / 10, mode="valid")
    ax1.plot(smooth, label=name)
ax0.set_xticks(np.arange(3), list(kinds))
ax0.set_ylabel("mean predicted click probability")
ax0.set_title("Test predictions by kind of target")
ax0.legend()
ax1.set_xlabel("training step")
ax1.set_ylabel("training loss (moving average)")
ax1.set_title("Training loss")
ax1.legend()
plt.show()
