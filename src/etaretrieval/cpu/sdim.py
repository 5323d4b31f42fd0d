"""SDIM (Cao et al., CIKM 2022) on packed SimHash signatures: Numba CPU kernels.

Internal: :mod:`etaretrieval.sdim` validates the inputs and calls these.

Arithmetic contract, reproduced bit for bit by :mod:`etaretrieval.cuda.sdim`
(no step depends on how the work is split between threads):

1. *Codes.* Group ``g`` of a signature is its bits ``[g tau, (g + 1) tau)``,
   bit ``g tau`` the least significant bit of the code; a group may straddle
   two words (:func:`code`).
2. *Group sums.* ``S[b, g, :]`` is the sum of ``values[b, l, :]`` over the
   valid positions ``l`` whose code equals the target's, added in increasing
   ``l`` into a float64 accumulator that starts at ``+0.0``, then rounded to
   the dtype of ``values``. A bucket summary ``buckets[b, g, c, :]`` is the
   same sum over the positions whose code is ``c``.
3. *Normalisation* (:func:`add_normalised`): ``n2 = sum_i S_i * S_i`` in
   float64 (``S_i`` widened exactly, products rounded, no fused multiply-add,
   ``i`` increasing, from ``0.0``); unless ``n2 == 0`` the group contributes
   ``S_i / sqrt(n2)`` (correctly rounded square root and division); a group
   with ``n2 == 0`` (no match, or an exactly zero sum) contributes zero. There
   is no eps.
4. *Average.* ``out_i = (sum_g contribution_{g, i}, g increasing, from 0.0) / G``,
   rounded to the dtype of ``values``.

Non-finite values at valid matching positions propagate (NaN in, NaN out):
only an exactly zero squared norm skips a group.
"""

from __future__ import annotations

import numpy as np
from numba.extending import overload

from .._bits import popcount
from .._jit import jit
from .._threads import parallel_rows

__all__ = [
    "code", "group_layout", "matches", "add_normalised", "codes", "group_sums", "pool", "buckets", "from_buckets",
    "group_sums_backward", "sdim_codes", "sdim_group_sums", "sdim_pool", "sdim_buckets", "sdim_from_buckets",
    "sdim_group_sums_backward",
]


@jit()
def code(sig, start, tau):
    """The ``tau``-bit code at bits ``[start, start + tau)`` of the 1-D signature ``sig`` (uint64 words)."""
    word = start >> 6
    off = start & 63
    c = sig[word] >> np.uint64(off)
    if off + tau > 64:  # the group straddles a word boundary: its high bits start the next word
        c |= sig[word + 1] << np.uint64(64 - off)
    return np.int64(c & np.uint64((1 << tau) - 1))


@jit()
def add_normalised(srow, total):
    """``total += srow / ||srow||`` in float64 (nothing when the squared norm is exactly 0); see step 3."""
    d = srow.shape[0]
    n2 = 0.0
    for i in range(d):
        x = np.float64(srow[i])
        n2 += x * x
    if n2 != 0.0:  # NaN goes on (and propagates)
        r = np.sqrt(n2)
        for i in range(d):
            total[i] += np.float64(srow[i]) / r


@jit()
def codes(sig, tau, lo, hi, out):
    """``out[n, g]`` = code of group ``g`` of ``sig[n]`` (``(N, W)`` uint64 -> ``(N, G)``), rows ``lo..hi-1``.

    Like every kernel here, serial over a range of items: the library's
    threads (:func:`etaretrieval._threads.parallel_rows`) spread the ranges.
    """
    groups = out.shape[1]
    for r in range(lo, hi):
        for g in range(groups):
            out[r, g] = code(sig[r], g * tau, tau)


@jit()
def group_layout(tau, groups, words):
    """Where the groups lie: per word, a mask of the start bits of the groups inside it, and its straddling group.

    Returns ``(starts, straddle, group_at)``: ``starts[w]`` has bit ``j`` set
    iff a group occupies bits ``[j, j + tau)`` of word ``w``; ``straddle[w]``
    is the group that starts in word ``w`` and ends in word ``w + 1``, or
    ``-1``; ``group_at[64 w + j]`` is the group starting at bit ``j`` of word
    ``w`` (no division in the scan).
    """
    starts = np.zeros(words, dtype=np.uint64)
    straddle = np.full(words, -1, dtype=np.int64)
    group_at = np.zeros(64 * words, dtype=np.int64)
    for g in range(groups):
        start = g * tau
        off = start & 63
        group_at[start] = g
        if off + tau > 64:
            straddle[start >> 6] = g
        else:
            starts[start >> 6] |= np.uint64(1) << np.uint64(off)
    return starts, straddle, group_at


@jit()
def _spread(x, tau):
    """Bit ``j`` of the result = OR of bits ``j .. j + tau - 1`` of ``x`` (``O(log tau)`` shifts)."""
    result = np.uint64(0)
    have = np.uint64(0)  # bits already covered by result
    width = 1  # bits covered by x
    while width <= tau:
        if tau & width:
            result |= x >> have
            have += np.uint64(width)
        x |= x >> np.uint64(width)
        width *= 2
    return result


def matches(query, keys, b, pos, tau, starts, straddle, group_at, found):
    """The groups where ``keys[b, pos]`` has the code of ``query[b]``, increasing, into ``found``; returns their number.

    Bit-parallel: a group matches when its bits of ``keys ^ query`` are all 0,
    which :func:`_spread` tests for every group inside a word at once; only a
    group straddling two words is extracted on its own.
    """
    low = np.uint64((1 << tau) - 1)
    one = np.uint64(1)
    none = np.uint64(0)  # uint64 compared with uint64: no float conversion
    n = 0
    for w in range(starts.shape[0]):
        x = keys[b, pos, w] ^ query[b, w]
        zero = ~_spread(x, tau) & starts[w]  # start bits of the groups of word w whose bits are all 0
        while zero != none:
            lowest = zero & (~zero + one)
            found[n] = group_at[64 * w + popcount(lowest - one)]
            n += 1
            zero ^= lowest
        g = straddle[w]
        if g >= 0:  # after the groups inside word w: the order stays increasing
            off = np.uint64((g * tau) & 63)
            c = (x >> off) | ((keys[b, pos, w + 1] ^ query[b, w + 1]) << (np.uint64(64) - off))
            if (c & low) == none:
                found[n] = g
                n += 1
    return n


@overload(matches, inline="always", jit_options={"nogil": True})
def _matches_jit(query, keys, b, pos, tau, starts, straddle, group_at, found):
    """Compiled :func:`matches`, inlined into each caller's loop (no call, no reference counting per position)."""
    return matches


@jit()
def _row_sums(query, keys, values, b, end, mask, use_mask, tau, layout, found, acc):
    """float64 group sums of row ``b`` into ``acc`` ``(G, d)``, positions in increasing order (step 2)."""
    starts, straddle, group_at = layout
    d = acc.shape[1]
    acc[:, :] = 0.0
    for pos in range(end):
        if use_mask and not mask[b, pos]:
            continue
        for j in range(matches(query, keys, b, pos, tau, starts, straddle, group_at, found)):
            g = found[j]
            for i in range(d):
                acc[g, i] += values[b, pos, i]


@jit()
def group_sums(query, keys, values, tau, lengths, mask, use_mask, lo, hi, out):
    """``out[b, g, :]`` = the group sums ``S`` (``(B, G, d)``, the dtype of ``values``), rows ``lo..hi-1``."""
    groups, d = out.shape[1], out.shape[2]
    layout = group_layout(tau, groups, keys.shape[2])
    found = np.empty(groups, dtype=np.int64)
    acc = np.empty((groups, d), dtype=np.float64)
    for b in range(lo, hi):
        _row_sums(query, keys, values, b, lengths[b], mask, use_mask, tau, layout, found, acc)
        for g in range(groups):
            for i in range(d):
                out[b, g, i] = acc[g, i]


@jit()
def pool(query, keys, values, tau, groups, lengths, mask, use_mask, lo, hi, out):
    """``out[b, :]`` = the SDIM user-interest vector of row ``b`` over ``groups`` groups (steps 2 to 4).

    Fills rows ``lo..hi-1``.
    """
    d = out.shape[1]
    layout = group_layout(tau, groups, keys.shape[2])
    found = np.empty(groups, dtype=np.int64)
    acc = np.empty((groups, d), dtype=np.float64)
    srow = np.empty(d, dtype=out.dtype)
    total = np.empty(d, dtype=np.float64)
    for b in range(lo, hi):
        _row_sums(query, keys, values, b, lengths[b], mask, use_mask, tau, layout, found, acc)
        total[:] = 0.0
        for g in range(groups):
            for i in range(d):
                srow[i] = acc[g, i]  # S, rounded to the dtype of values
            add_normalised(srow, total)
        for i in range(d):
            out[b, i] = total[i] / groups


@jit()
def buckets(keys, values, tau, lengths, mask, use_mask, lo, hi, out):
    """``out[b, g, c, :]`` = sum of the valid ``values[b, l]`` whose group-``g`` code is ``c`` (step 2).

    The items are the ``B x G`` (row, group) pairs ``lo..hi-1``, so that a
    single user's summary (``B = 1``) still runs in parallel; each pair scans
    its row once with a ``(2**tau, d)`` float64 accumulator.
    """
    groups, ncodes, d = out.shape[1], out.shape[2], out.shape[3]
    acc = np.empty((ncodes, d), dtype=np.float64)
    for pair in range(lo, hi):
        b, g = pair // groups, pair % groups
        acc[:, :] = 0.0
        for pos in range(lengths[b]):
            if use_mask and not mask[b, pos]:
                continue
            c = code(keys[b, pos], g * tau, tau)
            for i in range(d):
                acc[c, i] += values[b, pos, i]
        for c in range(ncodes):
            for i in range(d):
                out[b, g, c, i] = acc[c, i]


@jit()
def from_buckets(query, summary, tau, lo, hi, out):
    """``out[b, :]`` from the bucket sums ``summary`` (``(B, G, 2**tau, d)``, may be a broadcast view).

    Reads ``G`` rows of ``d`` values per target: ``O(d G)`` whatever the
    sequence length (steps 3 and 4).
    """
    d = out.shape[1]
    groups = summary.shape[1]
    total = np.empty(d, dtype=np.float64)
    srow = np.empty(d, dtype=summary.dtype)
    for b in range(lo, hi):
        target = query[b]
        total[:] = 0.0
        for g in range(groups):
            c = code(target, g * tau, tau)
            for i in range(d):  # a copy rather than a view per group: no reference counting in the loop
                srow[i] = summary[b, g, c, i]
            add_normalised(srow, total)
        for i in range(d):
            out[b, i] = total[i] / groups


@jit()
def group_sums_backward(query, keys, grad, tau, lengths, mask, use_mask, lo, hi, out):
    """``out[b, l, :]`` = sum over the groups ``g`` where position ``l`` matches of ``grad[b, g, :]``.

    The gradient of :func:`group_sums` with respect to ``values``: float64,
    groups in increasing order, rounded to ``out``'s dtype; zero at positions
    that are not valid.
    """
    length, d = out.shape[1], out.shape[2]
    groups = grad.shape[1]
    starts, straddle, group_at = group_layout(tau, groups, keys.shape[2])
    found = np.empty(groups, dtype=np.int64)
    acc = np.empty(d, dtype=np.float64)
    for b in range(lo, hi):
        end = lengths[b]
        for pos in range(length):
            acc[:] = 0.0
            if pos < end and (not use_mask or mask[b, pos]):
                for j in range(matches(query, keys, b, pos, tau, starts, straddle, group_at, found)):
                    g = found[j]
                    for i in range(d):
                        acc[i] += grad[b, g, i]
            for i in range(d):
                out[b, pos, i] = acc[i]


# Host paths of the etaretrieval.sdim functions (inputs validated; lengths ``n`` and optional mask ``m``
# as returned by ``etaretrieval._validate.validity``; keys, values ``(B, L, x)`` or shared ``(L, x)``).

_NO_MASK = np.zeros((0, 0), dtype=np.bool_)


def _rows(a: np.ndarray, batch: int) -> np.ndarray:
    """``a`` (``(B, L, x)`` or shared ``(L, x)``) as a ``(B, L, x)`` view, without copying."""
    return np.broadcast_to(a, (batch, *a.shape[-2:]))


def _mask(m: np.ndarray | None) -> tuple[np.ndarray, bool]:
    """The kernels' ``(mask, use_mask)`` arguments."""
    return (_NO_MASK, False) if m is None else (m, True)


def sdim_codes(s: np.ndarray, tau: int, groups: int) -> np.ndarray:
    """Host path of :func:`etaretrieval.sdim_codes`: ``(..., W)`` signatures -> ``(..., G)`` int32 codes."""
    lead = s.shape[:-1]
    flat = s.reshape(-1, s.shape[-1])
    out = np.empty((flat.shape[0], groups), dtype=np.int32)
    if out.size:
        parallel_rows(lambda lo, hi: codes(flat, tau, lo, hi, out), flat.shape[0], out.size)
    return out.reshape(lead + (groups,))


def sdim_group_sums(q: np.ndarray, kk: np.ndarray, v: np.ndarray, tau: int, groups: int, n: np.ndarray,
                    m: np.ndarray | None) -> np.ndarray:
    """Host path of :func:`etaretrieval.sdim_group_sums`: ``(B, G, d)``."""
    batch, length = q.shape[0], kk.shape[-2]
    out = np.empty((batch, groups, v.shape[-1]), dtype=v.dtype)
    if batch:
        kr, vr, (mm, use) = _rows(kk, batch), _rows(v, batch), _mask(m)
        parallel_rows(lambda lo, hi: group_sums(q, kr, vr, tau, n, mm, use, lo, hi, out),
                      batch, batch * length * kk.shape[-1])
    return out


def sdim_pool(q: np.ndarray, kk: np.ndarray, v: np.ndarray, tau: int, groups: int, n: np.ndarray,
              m: np.ndarray | None) -> np.ndarray:
    """Host path of :func:`etaretrieval.sdim_pool`: ``(B, d)``."""
    batch, length = q.shape[0], kk.shape[-2]
    out = np.empty((batch, v.shape[-1]), dtype=v.dtype)
    if batch:
        kr, vr, (mm, use) = _rows(kk, batch), _rows(v, batch), _mask(m)
        parallel_rows(lambda lo, hi: pool(q, kr, vr, tau, groups, n, mm, use, lo, hi, out),
                      batch, batch * length * kk.shape[-1])
    return out


def sdim_buckets(kk: np.ndarray, v: np.ndarray, tau: int, groups: int, batch: int, n: np.ndarray,
                 m: np.ndarray | None) -> np.ndarray:
    """Host path of :func:`etaretrieval.sdim_buckets`: ``(B, G, 2**tau, d)``."""
    length = kk.shape[-2]
    out = np.empty((batch, groups, 1 << tau, v.shape[-1]), dtype=v.dtype)
    if batch:
        kr, vr, (mm, use) = _rows(kk, batch), _rows(v, batch), _mask(m)
        parallel_rows(lambda lo, hi: buckets(kr, vr, tau, n, mm, use, lo, hi, out),
                      batch * groups, batch * groups * length)
    return out


def sdim_from_buckets(q: np.ndarray, bk: np.ndarray, tau: int) -> np.ndarray:
    """Host path of :func:`etaretrieval.sdim_from_buckets`: ``(B, d)`` from ``(B or 1, G, 2**tau, d)`` summaries."""
    batch = q.shape[0]
    out = np.empty((batch, bk.shape[-1]), dtype=bk.dtype)
    if batch:
        summary = np.broadcast_to(bk, (batch, *bk.shape[-3:]))
        parallel_rows(lambda lo, hi: from_buckets(q, summary, tau, lo, hi, out), batch, out.size)
    return out


def sdim_group_sums_backward(q: np.ndarray, kk: np.ndarray, gr: np.ndarray, tau: int, n: np.ndarray,
                             m: np.ndarray | None) -> np.ndarray:
    """Host gradient of :func:`etaretrieval.sdim_group_sums` with respect to the values: ``(B, L, d)``."""
    batch, length = q.shape[0], kk.shape[-2]
    out = np.empty((batch, length, gr.shape[-1]), dtype=gr.dtype)
    if batch:
        kr, (mm, use) = _rows(kk, batch), _mask(m)
        parallel_rows(lambda lo, hi: group_sums_backward(q, kr, gr, tau, n, mm, use, lo, hi, out),
                      batch, batch * length * kk.shape[-1])
    return out
