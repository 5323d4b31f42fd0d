"""SDIM over ragged rows (flat keys and values + offsets) on the CPU.

Each row goes through the padded kernel of :mod:`etaretrieval.cpu.sdim`
(:func:`~etaretrieval.cpu.sdim.group_sums`) on ``(1, n, x)`` views of the flat
arrays, so the arithmetic contract (float64 sums in position order, rounded to
the values' dtype) and the results are the padded path's bit for bit. Rows are
not cut: a group sum is one ordered sum. Pooling normalises and averages the
sums as :func:`~etaretrieval.cpu.sdim.pool` does. Bucket summaries go through
the padded :func:`~etaretrieval.cpu.sdim.buckets` one (row, group) pair at a
time, the padded work split.
"""

from __future__ import annotations

import numpy as np

from .._jit import jit, kernel_input
from .._threads import parallel_rows
from .ragged import block_of, row_of, rows_of
from .sdim import add_normalised, buckets, group_sums

__all__ = ["ragged_group_sums", "ragged_buckets", "average_groups", "sdim_group_sums", "sdim_pool", "sdim_buckets"]


@jit()
def ragged_group_sums(query, keys, values, tau, starts, lens, mask, use_mask, lo, hi, out):
    """``out[b]`` = the ``(G, d)`` group sums of row ``b`` (``keys[starts[b]:][:lens[b]]``), rows ``lo..hi-1``."""
    length = np.empty(1, dtype=np.int64)
    for b in range(lo, hi):
        s, n = starts[b], lens[b]
        length[0] = n
        group_sums(rows_of(query, b, 1), block_of(keys, s, n), block_of(values, s, n), tau, length,
                   row_of(mask, s if use_mask else 0, n if use_mask else 0), use_mask, 0, 1, out[b : b + 1])


@jit()
def ragged_buckets(keys, values, tau, starts, lens, mask, use_mask, lo, hi, out):
    """``out[b, g]`` = the ``(2**tau, d)`` bucket sums of group ``g`` of row ``b``, for the pairs ``lo..hi-1``.

    Pair ``b * G + g``, as in the padded :func:`~etaretrieval.cpu.sdim.buckets`
    (a single long row still spreads over the threads by its groups).
    """
    groups = out.shape[1]
    length = np.empty(1, dtype=np.int64)
    for pair in range(lo, hi):
        b, g = pair // groups, pair % groups
        s, n = starts[b], lens[b]
        length[0] = n
        buckets(block_of(keys, s, n), block_of(values, s, n), tau, length,
                row_of(mask, s if use_mask else 0, n if use_mask else 0), use_mask, g, g + 1, out[b : b + 1])


@jit()
def average_groups(sums, lo, hi, out):
    """``out[b]`` = the average over groups of the L2-normalised ``sums[b, g]`` (float64, groups in order)."""
    groups, d = sums.shape[1], sums.shape[2]
    total = np.empty(d, dtype=np.float64)
    for b in range(lo, hi):
        total[:] = 0.0
        for g in range(groups):
            add_normalised(sums[b, g], total)
        for i in range(d):
            out[b, i] = total[i] / groups


def sdim_group_sums(q: np.ndarray, keys: np.ndarray, values: np.ndarray, tau: int, groups: int,
                    starts: np.ndarray, lens: np.ndarray, mask: np.ndarray | None) -> np.ndarray:
    """Host path of :func:`etaretrieval.ragged.sdim_group_sums_ragged`: ``(B, G, d)``."""
    batch, words = q.shape
    out = np.empty((batch, groups, values.shape[1]), dtype=values.dtype)
    if batch:
        q, kk, v = (kernel_input(a, contiguous=True) for a in (q, keys, values))
        m = kernel_input(np.zeros(0, dtype=np.bool_) if mask is None else mask, contiguous=True)
        parallel_rows(lambda lo, hi: ragged_group_sums(q, kk, v, tau, starts, lens, m, mask is not None, lo, hi, out),
                      batch, int(lens.sum()) * words)
    return out


def sdim_pool(q: np.ndarray, keys: np.ndarray, values: np.ndarray, tau: int, groups: int,
              starts: np.ndarray, lens: np.ndarray, mask: np.ndarray | None) -> np.ndarray:
    """Host path of :func:`etaretrieval.ragged.sdim_pool_ragged`: ``(B, d)``, from the group sums."""
    sums = sdim_group_sums(q, keys, values, tau, groups, starts, lens, mask)
    out = np.empty((q.shape[0], values.shape[1]), dtype=values.dtype)
    if out.shape[0]:
        parallel_rows(lambda lo, hi: average_groups(sums, lo, hi, out), out.shape[0], sums.size)
    return out


def sdim_buckets(keys: np.ndarray, values: np.ndarray, tau: int, groups: int, starts: np.ndarray, lens: np.ndarray,
                 mask: np.ndarray | None) -> np.ndarray:
    """Host path of :func:`etaretrieval.ragged.sdim_buckets_ragged`: ``(B, G, 2**tau, d)``."""
    batch = starts.shape[0]
    out = np.empty((batch, groups, 1 << tau, values.shape[1]), dtype=values.dtype)
    if batch:
        kk, v = (kernel_input(a, contiguous=True) for a in (keys, values))
        m = kernel_input(np.zeros(0, dtype=np.bool_) if mask is None else mask, contiguous=True)
        parallel_rows(lambda lo, hi: ragged_buckets(kk, v, tau, starts, lens, m, mask is not None, lo, hi, out),
                      batch * groups, int(lens.sum()) * groups)
    return out
