"""The floor: the memory traffic that any fused lookup + Hamming top-K must pay.

:func:`floor_lookup` reads every id, gathers every signature and popcounts its
XOR with the query, then only sums the distances (so the work cannot be
optimised away). It selects nothing, so no top-K kernel over the same inputs
can be faster. It is the fastest such loop we could write (measured
against alternatives for 1 to 16 words, 10^4 to 10^7 table rows and int32,
int64 and unsigned ids), in one of two forms. A table of at most
:data:`~etaretrieval.cpu.topk.CACHED_TABLE_BYTES`, and any table of 4 to 8
words (a row is one cache line), is read a position at a time: one pass
reads each position's every word (unrolled for 2 words, vector loads along
the row from 4). Other tables are read per
:data:`~etaretrieval.cpu.topk.CHUNK` positions: one pass reads the ids into
a stack buffer of table rows and popcounts the first word, then one gather
pass per further word, which keeps more cache misses in flight. Indices are
unsigned (no negative-index wrap-around), so every pass vectorises (gathers
+ vector popcount). One ``(L,)`` sequence shared by every row is gathered
once and copied word-major, as the library does, and each row sums one
contiguous pass per word. Rows are spread over threads like the library's kernels.
:func:`floor_lookup_cuda` is the same measuring stick on the GPU: one block
per row, like the library's CUDA top-K, and a block-wide sum.
"""

from __future__ import annotations

import functools
from typing import Any

import numpy as np
import numpy.typing as npt

from .._bits import popcount
from .._jit import jit
from .._threads import parallel_rows
from ..cpu.topk import CACHED_TABLE_BYTES, CHUNK, _stack_buffer

__all__ = ["floor_lookup", "floor_lookup_cuda"]

#: Threads per block of :func:`floor_lookup_cuda` (a power of two).
CUDA_THREADS = 256


@jit()
def _row_sum_cached(query, ids, table, b, words):
    """``sum_l hamming(query[b], table[ids[b, l]])``, every word of a position at once."""
    row = np.uint64(b)
    total = np.uint64(0)
    for pos in range(ids.shape[1]):
        item = np.uint64(ids[row, np.uint64(pos)])
        d = 0
        for w in range(words):
            d += popcount(query[row, np.uint64(w)] ^ table[item, np.uint64(w)])
        total += np.uint64(d)
    return total


@jit()
def _row_sum(query, ids, table, b, words):
    """``sum_l hamming(query[b], table[ids[b, l]])``, one vectorised pass per word and chunk."""
    rows = _stack_buffer(np.uint64)
    row = np.uint64(b)
    zero = np.uint64(0)
    first = query[row, zero]
    total = zero
    length = ids.shape[1]
    for lo in range(0, length, CHUNK):
        start = np.uint64(lo)
        n = min(CHUNK, length - lo)
        for j in range(n):
            item = np.uint64(ids[row, start + np.uint64(j)])
            rows[j] = item
            total += np.uint64(popcount(first ^ table[item, zero]))
        for w in range(1, words):
            word = query[row, np.uint64(w)]
            for j in range(n):
                total += np.uint64(popcount(word ^ table[rows[j], np.uint64(w)]))
    return total


@jit()
def _floor_shared(query, keys_t, lo, hi, base, out):
    """Rows ``lo..hi-1``: ``sum_l hamming(query[b], keys_t[:, l])`` over word-major ``(W, L)`` shared keys."""
    words, length = keys_t.shape
    for b in range(lo, hi):
        row = np.uint64(b)
        total = np.uint64(0)
        for w in range(words):
            word = query[row, np.uint64(w)]
            for pos in range(length):
                total += np.uint64(popcount(word ^ keys_t[np.uint64(w), np.uint64(pos)]))
        out[b - base] = total


@jit()
def _floor(query, ids, table, cached, lo, hi, base, out):
    """Rows ``lo..hi-1`` into ``out[b - base]`` (tasks as the top-K kernels': :func:`parallel_rows` with outputs)."""
    words = table.shape[1]
    for b in range(lo, hi):
        if words == 1:  # a constant: the further-word loop and the row buffer compile away
            out[b - base] = _row_sum(query, ids, table, b, 1)
        elif not cached:
            out[b - base] = _row_sum(query, ids, table, b, words)
        elif words == 2:  # a constant: unrolled, two gathers per vector of positions
            out[b - base] = _row_sum_cached(query, ids, table, b, 2)
        else:  # vector loads along each row
            out[b - base] = _row_sum_cached(query, ids, table, b, words)


def floor_lookup(query: np.ndarray, ids: np.ndarray, table: np.ndarray) -> npt.NDArray[np.int64]:
    """Sum of the Hamming distances of each row's looked-up signatures to its query.

    Rows are spread over the library's threads exactly as the top-K kernels
    spread them (:func:`etaretrieval.threads` bounds both).

    Parameters
    ----------
    query : numpy.ndarray
        ``(B, W)`` uint64 signatures.
    ids : numpy.ndarray
        ``(B, L)`` integer ids, or ``(L,)`` shared by every row; all must lie
        in ``[0, N)`` (they are not checked: this is a measuring stick).
    table : numpy.ndarray
        ``(N, W)`` uint64 signature table.

    Returns
    -------
    numpy.ndarray
        ``(B,)`` int64: ``sum_l hamming(query[b], table[ids[b, l]])``.

    Examples
    --------
    >>> import numpy as np
    >>> table = np.array([[0b0], [0b1], [0b11]], dtype=np.uint64)
    >>> floor_lookup(np.array([[0b1]], dtype=np.uint64), np.array([0, 1, 2]), table)
    array([2])
    """
    out = np.empty(query.shape[0], dtype=np.int64)
    if ids.ndim == 1:  # one sequence for every row: its signatures gathered once, word-major
        keys_t = np.ascontiguousarray(table[ids].T)
        parallel_rows(lambda lo, hi, base, o: _floor_shared(query, keys_t, lo, hi, base, o), query.shape[0],
                      query.shape[0] * ids.size * table.shape[1], (out,))
        return out
    cached = table.nbytes <= CACHED_TABLE_BYTES or 4 <= table.shape[1] <= 8  # the faster form, as measured
    parallel_rows(lambda lo, hi, base, o: _floor(query, ids, table, cached, lo, hi, base, o), query.shape[0],
                  ids.size * table.shape[1], (out,))
    return out


#: ``numba.cuda`` once the kernel is built (a module global: the simulator swaps it while kernels run).
cuda: Any = None


@functools.lru_cache(maxsize=None)
def _cuda_kernel(threads: int) -> Any:
    from numba import int64

    from ..cuda import _backend

    global cuda
    cuda = _backend.cuda()

    @cuda.jit
    def floor_kernel(query, ids, table, out):
        partial = cuda.shared.array(threads, int64)
        b = cuda.blockIdx.x
        tid = cuda.threadIdx.x
        ib = b if ids.shape[0] > 1 else 0
        total = int64(0)
        for pos in range(tid, ids.shape[1], threads):
            item = ids[ib, pos]
            for w in range(table.shape[1]):
                total += cuda.popc(query[b, w] ^ table[item, w])
        partial[tid] = total
        cuda.syncthreads()
        half = threads // 2
        while half > 0:
            if tid < half:
                partial[tid] += partial[tid + half]
            cuda.syncthreads()
            half //= 2
        if tid == 0:
            out[b] = partial[0]

    return floor_kernel


def floor_lookup_cuda(query: Any, ids: Any, table: Any) -> Any:
    """:func:`floor_lookup` on the GPU, for numba device arrays.

    Parameters
    ----------
    query, ids, table : numba.cuda device arrays
        As in :func:`floor_lookup` (``ids`` ``(B, L)`` or shared ``(L,)``).

    Returns
    -------
    numba.cuda device array
        ``(B,)`` int64 sums, computed on the default stream.
    """
    from ..cuda import _backend

    ids2 = ids.reshape(1, ids.shape[0]) if ids.ndim == 1 else ids
    out = _backend.cuda().device_array(query.shape[0], dtype=np.int64)
    if query.shape[0]:
        kernel = _cuda_kernel(CUDA_THREADS)
        _backend.configure(kernel, query.shape[0], CUDA_THREADS, 0)(query, ids2, table, out)
    return out
