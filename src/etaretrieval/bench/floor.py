"""The floor: the memory traffic that any fused lookup + Hamming top-K must pay.

:func:`floor_lookup` reads every id, gathers every signature and popcounts its
XOR with the query, then only sums the distances (so the work cannot be
optimised away). It selects nothing, so no top-K kernel over the same inputs
can be faster; it is parallel over rows like the library's kernels and, like
them, compiled with the word loop unrolled for 1, 2 and 4 words.
"""

from __future__ import annotations

import numba
import numpy as np
import numpy.typing as npt

from .._bits import popcount
from .._jit import jit

__all__ = ["floor_lookup"]


@jit()
def _row_sum(query, ids, table, b, words):  # type: ignore[no-untyped-def]
    total = 0
    for pos in range(ids.shape[1]):
        item = ids[b, pos]
        for w in range(words):
            total += popcount(query[b, w] ^ table[item, w])
    return total


@jit(parallel=True)
def _floor(query, ids, table, out):  # type: ignore[no-untyped-def]
    words = table.shape[1]
    for b in numba.prange(ids.shape[0]):
        if words == 1:
            out[b] = _row_sum(query, ids, table, b, 1)
        elif words == 2:
            out[b] = _row_sum(query, ids, table, b, 2)
        elif words == 4:
            out[b] = _row_sum(query, ids, table, b, 4)
        else:
            out[b] = _row_sum(query, ids, table, b, words)


def floor_lookup(query: np.ndarray, ids: np.ndarray, table: np.ndarray) -> npt.NDArray[np.int64]:
    """Sum of the Hamming distances of each row's looked-up signatures to its query.

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
    ids2 = np.broadcast_to(ids, (query.shape[0], ids.shape[-1])) if ids.ndim == 1 else ids
    out = np.empty(query.shape[0], dtype=np.int64)
    _floor(query, ids2, table, out)
    return out
