"""
=================================================
Serving: many candidates against one sequence
=================================================

At the ranking stage one request scores hundreds or thousands of candidate
items for the *same* user. The user's long behaviour sequence is then shared by
every row of the batch: pass it once, as ``(L,)`` ids (or ``(L, W)``
signatures), and :func:`~etaretrieval.topk_hamming_lookup` /
:func:`~etaretrieval.topk_hamming` broadcast it to every candidate without
copying it. Each candidate gets its own top-K of the same history.
"""

# %%
# A catalogue with categories
# ---------------------------
# 200,000 items in 100 categories; row 0 of the table is reserved for padding,
# as is common in recommender models. The signature table is built once (at
# serving time it is refreshed when the embedding table is updated).
import time

import matplotlib.pyplot as plt
import numpy as np

import etaretrieval as er

rng = np.random.default_rng(7)
n_items, dim, bits, n_cats = 200_000, 64, 128, 100
category = rng.integers(0, n_cats, n_items)
centers = rng.standard_normal((n_cats, dim))
weight = (centers[category] + 0.8 * rng.standard_normal((n_items, dim))).astype(np.float32)
table = er.SignatureTable(weight, er.SimHasher(dim, bits, seed=0))
signatures = table.signatures
print(table)

# %%
# One user, many candidates
# -------------------------
# The user's 3,000 behaviours come mostly from six favourite categories; the
# sequence is right-padded with id 0 to a fixed 4,096. A thousand candidate
# items are scored for this user: half from the user's categories, half from
# anywhere.
seq_len, n_real, n_cand, k = 4_096, 3_000, 1_000, 48
favourites = rng.choice(n_cats, 6, replace=False)
by_cat = [np.flatnonzero(category[1:] == c) + 1 for c in range(n_cats)]  # never id 0


def items_of(cats):
    """One random item of each of the given categories."""
    return np.array([rng.choice(by_cat[c]) for c in cats])


cats = np.where(rng.random(n_real) < 0.9, rng.choice(favourites, n_real), rng.integers(0, n_cats, n_real))
ids = np.zeros(seq_len, dtype=np.int32)  # (L,): shared by every candidate
ids[:n_real] = items_of(cats)
cand_cats = np.where(np.arange(n_cand) < n_cand // 2, rng.choice(favourites, n_cand), rng.integers(0, n_cats, n_cand))
candidates = items_of(cand_cats)
query = signatures[candidates]  # (B, W)
print("ids", ids.shape, "query", query.shape)

# %%
# The fused lookup with shared ids
# --------------------------------
# ``ids`` is ``(L,)``: every candidate row reads the same sequence, nothing is
# tiled. ``padding_id=0`` marks the padding; it is never looked up.
er.topk_hamming_lookup(query[:1], ids, signatures, k, padding_id=0)  # load the compiled kernel once
start = time.perf_counter()
idx, dist = er.topk_hamming_lookup(query, ids, signatures, k, padding_id=0)
elapsed = time.perf_counter() - start
print(f"{n_cand} candidates x {seq_len} behaviours in {elapsed * 1e3:.1f} ms "
      f"({n_cand * seq_len / elapsed / 1e6:.0f} M behaviours/s on this machine)")

# %%
# The same with pre-gathered signatures
# -------------------------------------
# When the sequence's signatures are at hand (e.g. cached per user), pass them
# as shared ``(L, W)`` keys, with the padding as a shared ``(L,)`` mask. The
# answer is identical, ties included.
keys = signatures[ids]  # (L, W), gathered once per request
idx2, dist2 = er.topk_hamming(query, keys, k, mask=ids != 0)
np.testing.assert_array_equal(idx, idx2)
np.testing.assert_array_equal(dist, dist2)
print("identical:", idx.shape, dist.shape)

# %%
# What was retrieved
# ------------------
# ``idx`` holds positions into the sequence; ``ids[idx]`` the items. For
# candidates from the user's favourite categories, most retrieved behaviours
# share the candidate's category; for the others the retrieval finds the
# nearest the history has to offer.
retrieved_cat = category[ids[idx]]  # (B, k)
same = (retrieved_cat == cand_cats[:, None]).mean(axis=1)
liked = np.isin(cand_cats, favourites)
share = np.bincount(category[ids[:n_real]], minlength=n_cats) / n_real  # of the whole sequence
print("share of the candidate's category among the retrieved behaviours vs the whole sequence:")
print(f"  favourite categories: {same[liked].mean():.2f} vs {share[cand_cats[liked]].mean():.2f}")
print(f"  other categories:     {same[~liked].mean():.2f} vs {share[cand_cats[~liked]].mean():.2f}")

# %%
# A tiny target attention over the retrieved behaviours
# ------------------------------------------------------
# This is what the model does next (see :class:`etaretrieval.torch.ETAAttention`
# for the PyTorch module): attention of each candidate over its own ``k``
# retrieved embeddings only, instead of all ``L``.
cand_emb = weight[candidates]  # (B, d)
retrieved = weight[ids[idx]]  # (B, k, d)
logits = np.einsum("bd,bkd->bk", cand_emb, retrieved) / np.sqrt(dim)
att = np.exp(logits - logits.max(axis=1, keepdims=True))
att /= att.sum(axis=1, keepdims=True)
interest = np.einsum("bk,bkd->bd", att, retrieved)  # (B, d): one user vector per candidate
print("user-interest vectors:", interest.shape)

# %%
# Each candidate reads its own part of the history
# ------------------------------------------------
# Positions retrieved for 40 candidates (rows, grouped by category), coloured by
# Hamming distance. Candidates of the same category pick overlapping parts of
# the history; the others pick different ones.
show = np.argsort(cand_cats[:40], kind="stable")
fig, ax = plt.subplots(figsize=(9, 4.5), layout="constrained")
rows = np.repeat(np.arange(show.size), k)
sc = ax.scatter(idx[show].ravel(), rows, c=dist[show].ravel(), s=6, cmap="viridis_r")
ax.set_yticks(np.arange(show.size), [str(c) for c in cand_cats[show]], fontsize=6)
ax.set_xlim(0, n_real)
ax.set_xlabel("position in the behaviour sequence (oldest to newest)")
ax.set_ylabel("candidate (its category)")
ax.set_title(f"Top-{k} of {n_real} behaviours for each of 40 candidates")
fig.colorbar(sc, ax=ax, label="Hamming distance")
plt.show()
