"""
==========
Quickstart
==========

The whole retrieval step of ETA in a few calls: hash an item-embedding table
once into a :class:`~etaretrieval.SignatureTable`, hash the target items, and
fetch, for every target, the ``k`` behaviours of the user's long sequence whose
signatures are nearest in Hamming distance with
:func:`~etaretrieval.topk_hamming_lookup`. We check the result against a
brute-force computation and look at the distance histogram that the
counting-sort top-K works from.
"""

# %%
# An item-embedding table and a signature table
# ---------------------------------------------
# In a CTR model the item embeddings are a learned ``nn.Embedding``; here a
# seeded random table stands in for it. :class:`~etaretrieval.SimHasher` draws
# ``bits`` random hyperplanes (the same ones for the same seed on every
# platform) and :class:`~etaretrieval.SignatureTable` hashes every row once:
# 128 bits are two ``uint64`` words per item.
import matplotlib.pyplot as plt
import numpy as np

import etaretrieval as er

rng = np.random.default_rng(0)
n_items, dim, bits = 100_000, 64, 128
weight = rng.standard_normal((n_items, dim), dtype=np.float32)

hasher = er.SimHasher(dim, bits, seed=0)
table = er.SignatureTable(weight, hasher)
print(hasher, table, table.signatures.shape, table.signatures.dtype)

# %%
# A batch of users with long behaviour sequences
# ----------------------------------------------
# Each row of ``ids`` is one user's behaviour sequence, oldest first, padded
# on the right; ``lengths`` says how much of each row is real. Each user is
# scored for one target item.
batch, seq_len, k = 16, 5_000, 32
ids = rng.integers(0, n_items, size=(batch, seq_len), dtype=np.int32)
lengths = rng.integers(seq_len // 2, seq_len + 1, size=batch)
targets = rng.integers(0, n_items, size=batch)
query = table.signatures[targets]  # (B, W): the targets' signatures
print(ids.shape, query.shape)

# %%
# Top-K retrieval
# ---------------
# ``idx[b]`` holds positions into row ``b`` of ``ids`` (not item ids), ordered by
# ascending Hamming distance; among equal distances the more recent behaviour
# (larger position) comes first.
idx, dist = er.topk_hamming_lookup(query, ids, table.signatures, k, lengths=lengths)
print("positions:", idx[0, :8])
print("distances:", dist[0, :8])
print("item ids: ", ids[0, idx[0, :8]])

# %%
# The same answer, by brute force
# -------------------------------
# The order is total (distance, then position), so the result is unique and
# equals a plain NumPy reference exactly: a stable sort of the distances of the
# reversed valid prefix.
all_dist = er.hamming(query[:, None, :], table.signatures[ids])  # (B, L), int32
for b in range(batch):
    n = lengths[b]
    rev = all_dist[b, :n][::-1]  # newest first, so a stable sort breaks ties by recency
    order = np.argsort(rev, kind="stable")[:k]
    np.testing.assert_array_equal(idx[b], n - 1 - order)
    np.testing.assert_array_equal(dist[b], rev[order])
print("matches the brute-force reference for all", batch, "rows")

# %%
# Gathering the retrieved behaviours
# ----------------------------------
# The retrieved embeddings are what the model's target attention runs over:
# ``k`` rows per user instead of ``L``. Rows with fewer than ``k`` valid
# positions would end in ``-1``; mask them before gathering.
valid = idx >= 0
retrieved = weight[np.take_along_axis(ids, np.where(valid, idx, 0), axis=1)]  # (B, k, d)
print(retrieved.shape, bool(valid.all()))

# %%
# The histogram behind the counting sort
# --------------------------------------
# Distances are integers in ``0..bits``. The kernel counts them in a histogram,
# finds the bucket where the running count reaches ``k`` (the threshold), and
# emits every position below it plus the newest ones in the threshold bucket.
# No row is ever sorted.
b = 0
counts = np.bincount(all_dist[b, : lengths[b]], minlength=bits + 1)
threshold = dist[b, -1]
fig, ax = plt.subplots(figsize=(7, 3.2), layout="constrained")
ax.bar(np.arange(bits + 1), counts, width=1.0, color="0.75", label="all valid behaviours")
sel = np.bincount(dist[b], minlength=bits + 1)
ax.bar(np.arange(bits + 1), sel, width=1.0, color="C3", label=f"top-{k} retrieved")
ax.axvline(threshold + 0.5, color="C3", linestyle="--", linewidth=1)
seen = np.flatnonzero(counts)
ax.set_xlim(seen[0] - 3, seen[-1] + 3)
ax.set_xlabel(f"Hamming distance to the target ({bits}-bit signatures)")
ax.set_ylabel("behaviours")
ax.set_title(f"One user: {lengths[b]} behaviours, threshold bucket d = {threshold}")
ax.legend(loc="upper right")
plt.show()
