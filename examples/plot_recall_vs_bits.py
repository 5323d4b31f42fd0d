"""
=====================================
Recall of SimHash top-K against bits
=====================================

ETA replaces the exact inner-product top-K of target attention by a top-K in
Hamming distance between SimHash signatures. How much of the exact top-K does
it find? This example measures recall@K of :func:`~etaretrieval.topk_hamming`
against the exact top-K by inner product (what target attention weights most)
and by cosine similarity (what SimHash estimates), as the signature length
grows, and how retrieving more than ``K`` items buys recall back at a fixed
signature length. Use it to choose ``bits`` and ``k`` for your own embeddings:
swap in a sample of your item table and user sequences.
"""

# %%
# Synthetic embeddings with interests
# -----------------------------------
# Items belong to one of 64 interest clusters and their norms vary (a lognormal
# scale), as learned embeddings' norms do. Each user's 1,000-long sequence mixes
# eight interests; the target comes from one of them.
import matplotlib.pyplot as plt
import numpy as np

import etaretrieval as er

rng = np.random.default_rng(42)
dim, n_clusters, batch, seq_len = 64, 64, 64, 1_000
centers = rng.standard_normal((n_clusters, dim))


def sample(cluster_ids):
    """Embeddings around the given cluster centres, with varying norms."""
    x = centers[cluster_ids] + rng.standard_normal(cluster_ids.shape + (dim,))
    return (x * rng.lognormal(0.0, 0.2, cluster_ids.shape + (1,))).astype(np.float32)


interests = np.stack([rng.choice(n_clusters, 8, replace=False) for _ in range(batch)])
seq = sample(np.take_along_axis(interests, rng.integers(0, 8, (batch, seq_len)), axis=1))
target = sample(interests[np.arange(batch), rng.integers(0, 8, batch)])
print(seq.shape, target.shape)

# %%
# Exact top-K
# -----------
# The reference sets: the ``k`` positions of each row with the largest inner
# product with the target, and the ``k`` with the largest cosine similarity.
k = 32
scores = np.einsum("bld,bd->bl", seq, target)
cosine = scores / np.linalg.norm(seq, axis=-1)
exact_ip = np.argpartition(-scores, k, axis=1)[:, :k]
exact_cos = np.argpartition(-cosine, k, axis=1)[:, :k]


def recall(found, exact):
    """Mean fraction of each row of ``exact`` present in the same row of ``found``."""
    hit = np.zeros((batch, seq_len), dtype=bool)
    np.put_along_axis(hit, np.where(found >= 0, found, 0), True, axis=1)
    return np.take_along_axis(hit, exact, axis=1).mean()


# %%
# Recall@K as a function of the signature length
# ----------------------------------------------
# For each length we hash the sequence and the targets with the same
# hyperplanes and retrieve the top ``k`` by Hamming distance. Three seeds of
# hyperplanes give an idea of the spread.
bits_grid = [8, 16, 32, 64, 128, 256, 512, 1024]
seeds = [0, 1, 2]
rec_ip = np.zeros((len(seeds), len(bits_grid)))
rec_cos = np.zeros_like(rec_ip)
signatures = {}
for i, seed in enumerate(seeds):
    for j, bits in enumerate(bits_grid):
        hasher = er.SimHasher(dim, bits, seed=seed)
        query, keys = hasher(target), hasher(seq)
        idx, _ = er.topk_hamming(query, keys, k)
        rec_ip[i, j] = recall(idx, exact_ip)
        rec_cos[i, j] = recall(idx, exact_cos)
        if seed == 0:
            signatures[bits] = query, keys
for bits, a, c in zip(bits_grid, rec_ip.mean(0), rec_cos.mean(0)):
    print(f"{bits:5d} bits: recall@{k} vs inner product {a:.3f}, vs cosine {c:.3f}")

# %%
# Retrieving more than K
# ----------------------
# At a fixed signature length, the Hamming top-``k'`` with ``k' > K`` contains
# more of the exact top-``K``. The attention that follows costs ``O(k' d)`` per
# target, so this is the other knob next to ``bits``.
K = 16
exact_k = np.argpartition(-scores, K, axis=1)[:, :K]
k_grid = [16, 32, 64, 128, 256]
recall_k = {
    bits: [recall(er.topk_hamming(*signatures[bits], kk)[0], exact_k) for kk in k_grid]
    for bits in (64, 128, 256)
}
for bits, r in recall_k.items():
    print(f"{bits:4d} bits:", " ".join(f"k={kk}: {v:.2f}" for kk, v in zip(k_grid, r)))

# %%
# The figure
# ----------
fig, (ax0, ax1) = plt.subplots(1, 2, figsize=(10, 4), layout="constrained")
for rec, label in ((rec_ip, "vs exact inner-product top-K"), (rec_cos, "vs exact cosine top-K")):
    ax0.plot(bits_grid, rec.mean(0), marker="o", label=label)
    ax0.fill_between(bits_grid, rec.min(0), rec.max(0), alpha=0.2)
ax0.set_xscale("log", base=2)
ax0.set_xticks(bits_grid, [str(b) for b in bits_grid])
ax0.set_ylim(0, 1)
ax0.set_xlabel("signature bits")
ax0.set_ylabel(f"recall@{k}")
ax0.set_title(f"Hamming top-{k} of {seq_len} behaviours")
ax0.legend(loc="lower right")
for bits, r in recall_k.items():
    ax1.plot(k_grid, r, marker="o", label=f"{bits} bits")
ax1.set_xscale("log", base=2)
ax1.set_xticks(k_grid, [str(v) for v in k_grid])
ax1.set_ylim(0, 1)
ax1.set_xlabel("k retrieved by Hamming distance")
ax1.set_ylabel(f"fraction of the exact inner-product top-{K} found")
ax1.set_title(f"Retrieving more than K = {K}")
ax1.legend(loc="lower right")
plt.show()

# %%
# Reading the plot
# ----------------
# SimHash estimates the *angle* between two vectors: each bit differs with
# probability ``angle / pi``, so the Hamming distance concentrates around
# ``bits * angle / pi`` as ``bits`` grows, and the recall against the cosine
# top-K keeps rising towards 1. Against the inner-product top-K it levels off
# below 1, because the norms of the behaviours, which the inner product
# rewards, are invisible to the signatures. The gap is the price of a
# norm-free, hashable similarity; retrieving a few times more than ``K`` (the
# right panel) recovers most of the inner-product top-K at a modest ``bits``.
