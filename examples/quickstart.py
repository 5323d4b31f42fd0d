"""Quickstart: serve ETA retrieval from a signature table on synthetic data.

Builds a 1,000,000 x 64 item-embedding table, hashes it into 64-bit SimHash
signatures, draws a batch of users with 10,000-long behaviour sequences and
retrieves, for each user's target item, the 64 behaviours nearest in Hamming
distance with the fused :func:`etaretrieval.topk_hamming_lookup`. A few rows are
checked against a numpy brute force, and the throughput of both is printed,
measured in this run.

Run: ``python examples/quickstart.py`` (about 10 s on 2 cores).
"""

from __future__ import annotations

import time

import numpy as np

import etaretrieval as er

N_ITEMS, DIM, BITS = 1_000_000, 64, 64
BATCH, SEQ_LEN, K = 256, 10_000, 64
N_CHECK = 16  # rows scored by the numpy brute force


def brute_force(query: np.ndarray, ids: np.ndarray, table: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Numpy reference: all distances, then a full sort by (distance, -position)."""
    dist = np.bitwise_count(query[:, None, :] ^ table[ids]).sum(axis=-1, dtype=np.int32)
    pos = np.broadcast_to(np.arange(ids.shape[1]), ids.shape)
    order = np.lexsort((-pos, dist), axis=-1)[:, :k]
    return order, np.take_along_axis(dist, order, axis=-1)


def best_of(repeat: int, fn, *args) -> float:  # type: ignore[no-untyped-def]
    """Shortest wall time of ``repeat`` calls of ``fn(*args)``."""
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn(*args)
        times.append(time.perf_counter() - start)
    return min(times)


def main() -> None:
    rng = np.random.default_rng(0)
    t0 = time.perf_counter()
    embeddings = rng.standard_normal((N_ITEMS, DIM), dtype=np.float32)
    hasher = er.SimHasher(DIM, BITS, seed=0)
    table = er.SignatureTable(embeddings, hasher)
    print(f"hashed {N_ITEMS:,} items x {DIM} dims into {BITS}-bit signatures in {time.perf_counter() - t0:.2f} s")

    seq_ids = rng.integers(0, N_ITEMS, size=(BATCH, SEQ_LEN), dtype=np.int64)
    targets = rng.integers(0, N_ITEMS, size=BATCH)
    query = table.signatures[targets]

    er.topk_hamming_lookup(query[:1], seq_ids[:1, :100], table.signatures, K)  # JIT warm-up (cached on disk)
    idx, dist = er.topk_hamming_lookup(query, seq_ids, table.signatures, K)
    ref_idx, ref_dist = brute_force(query[:N_CHECK], seq_ids[:N_CHECK], table.signatures, K)
    assert np.array_equal(idx[:N_CHECK], ref_idx) and np.array_equal(dist[:N_CHECK], ref_dist)
    print(f"top-{K} of {N_CHECK} rows identical to the numpy brute force (ties: most recent first)")
    print(f"user 0: nearest behaviours at positions {idx[0, :5].tolist()}, distances {dist[0, :5].tolist()}")

    fused = best_of(5, er.topk_hamming_lookup, query, seq_ids, table.signatures, K)
    brute = best_of(3, brute_force, query[:N_CHECK], seq_ids[:N_CHECK], table.signatures, K)
    fused_rate = BATCH * SEQ_LEN / fused
    brute_rate = N_CHECK * SEQ_LEN / brute
    print(f"etaretrieval.topk_hamming_lookup: {fused_rate / 1e6:8.1f} M behaviours/s  "
          f"({BATCH} x {SEQ_LEN:,} in {fused * 1e3:.1f} ms)")
    print(f"numpy brute force (same run):     {brute_rate / 1e6:8.1f} M behaviours/s")
    print(f"speed-up: {fused_rate / brute_rate:.0f}x")


if __name__ == "__main__":
    main()
