"""Counting-sort top-K by Hamming distance, plain and fused with an id lookup.

Per row: one pass computes each valid position's distance into per-task
uint16 scratch while building a histogram over ``0..64 W``; the histogram gives
the threshold bucket; a second pass, from the newest position backwards, places
each selected position at its bucket's next slot. The result is ordered by
(distance ascending, position descending) in ``O(L + bits)`` per row, with no
sort and no ``B x L`` matrix.
"""

from __future__ import annotations

import numba
import numpy as np

from .._bits import popcount
from .._jit import jit

__all__ = ["topk_keys", "topk_lookup", "INVALID"]

#: Scratch value of a position that is not a candidate (above any distance).
INVALID = 0xFFFF


@jit()
def _emit(scratch, hist, end, nvalid, k, idx_row, dist_row):  # type: ignore[no-untyped-def]
    """Write the top-``k`` of ``scratch[:end]`` (histogram ``hist``) in tie order."""
    take = min(k, nvalid)
    if take > 0:
        acc = 0
        t = 0
        while acc + hist[t] < take:
            acc += hist[t]
            t += 1
        need_t = take - acc
        start = 0
        for v in range(t + 1):  # bucket counts -> first output slot of each bucket
            c = hist[v]
            hist[v] = start
            start += c
        filled = 0
        pos = end - 1
        while filled < take:
            d = np.int64(scratch[pos])
            if d < t or (d == t and need_t > 0):
                if d == t:
                    need_t -= 1
                slot = hist[d]
                hist[d] = slot + 1
                idx_row[slot] = pos
                dist_row[slot] = d
                filled += 1
            pos -= 1
    for p in range(take, k):
        idx_row[p] = -1
        dist_row[p] = -1


@jit(parallel=True)
def topk_keys(query, keys, k, lengths, mask, use_mask, ntasks, idx, dist):  # type: ignore[no-untyped-def]
    """Top-``k`` of ``keys[b]`` (``(B, L, W)``, may be a broadcast view) for each ``query[b]``."""
    batch, length, words = keys.shape
    for task in numba.prange(ntasks):
        scratch = np.empty(length, dtype=np.uint16)
        hist = np.empty(64 * words + 1, dtype=np.int64)
        for b in range(task * batch // ntasks, (task + 1) * batch // ntasks):
            hist[:] = 0
            end = lengths[b]
            nvalid = 0
            for pos in range(end):
                if use_mask and not mask[b, pos]:
                    scratch[pos] = INVALID
                    continue
                d = 0
                for w in range(words):
                    d += popcount(query[b, w] ^ keys[b, pos, w])
                scratch[pos] = d
                hist[d] += 1
                nvalid += 1
            _emit(scratch, hist, end, nvalid, k, idx[b], dist[b])


@jit(parallel=True)
def topk_lookup(query, ids, table, k, lengths, mask, use_mask, pad, use_pad, ntasks, idx, dist, bad):  # type: ignore[no-untyped-def]
    """Fused ids -> table rows -> Hamming -> top-``k``.

    ``bad[b]`` receives the first position of row ``b`` holding an id outside
    ``[0, N)``, or stays ``-1``; such a row gets no result.
    """
    batch, length = ids.shape
    nrows, words = table.shape
    for task in numba.prange(ntasks):
        scratch = np.empty(length, dtype=np.uint16)
        hist = np.empty(64 * words + 1, dtype=np.int64)
        for b in range(task * batch // ntasks, (task + 1) * batch // ntasks):
            hist[:] = 0
            end = lengths[b]
            nvalid = 0
            for pos in range(end):
                if use_mask and not mask[b, pos]:
                    scratch[pos] = INVALID
                    continue
                item = np.int64(ids[b, pos])
                if use_pad and item == pad:
                    scratch[pos] = INVALID
                    continue
                if item < 0 or item >= nrows:
                    bad[b] = pos
                    break
                d = 0
                for w in range(words):
                    d += popcount(query[b, w] ^ table[item, w])
                scratch[pos] = d
                hist[d] += 1
                nvalid += 1
            if bad[b] < 0:
                _emit(scratch, hist, end, nvalid, k, idx[b], dist[b])
