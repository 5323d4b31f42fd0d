"""Sign-bit packing of a projection block into uint64 signature words."""

from __future__ import annotations

import numba
import numpy as np

from .._jit import jit

__all__ = ["pack_projection"]


@jit(parallel=True)
def pack_projection(proj, out, nonfinite):  # type: ignore[no-untyped-def]
    """Pack ``proj > 0`` (rows x bits) into ``out`` (rows x W), LSB first.

    ``nonfinite[r]`` is set when row ``r`` of the projection holds a NaN or an
    infinity (the caller then decides whether the input row was bad).
    """
    rows, bits = proj.shape
    words = out.shape[1]
    one = np.uint64(1)
    for r in numba.prange(rows):
        bad = False
        for w in range(words):
            word = np.uint64(0)
            lo = w * 64
            hi = min(lo + 64, bits)
            for j in range(lo, hi):
                v = proj[r, j]
                if v > 0:
                    word |= one << np.uint64(j - lo)
                if v - v != 0:  # true for +-inf and NaN only
                    bad = True
            out[r, w] = word
        nonfinite[r] = bad
