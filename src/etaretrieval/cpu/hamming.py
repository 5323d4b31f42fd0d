"""Broadcasting Hamming distance between packed signatures."""

from __future__ import annotations

import numba
import numpy as np

from .._bits import popcount
from .._jit import CACHE, PURE_PYTHON

__all__ = ["hamming_gufunc"]


def _hamming_row(a, b, out):
    """Number of differing bits of ``a`` and ``b`` (numpy broadcasting)."""
    total = 0
    for w in range(a.shape[0]):
        total += popcount(a[w] ^ b[w])
    out[0] = total


if PURE_PYTHON:  # pure Python: guvectorize would still compile its signature at import

    def _hamming_python(a: np.ndarray, b: np.ndarray) -> np.int32:
        out = np.zeros(1, dtype=np.int32)
        _hamming_row(a, b, out)
        return out[0]

    hamming_gufunc = np.vectorize(_hamming_python, signature="(w),(w)->()", otypes=[np.int32])
else:
    hamming_gufunc = numba.guvectorize(
        ["void(uint64[:], uint64[:], int32[:])"],
        "(w),(w)->()",
        target="cpu",  # a parallel gufunc would start Numba's threading layer at import
        cache=CACHE,
        nopython=True,
    )(_hamming_row)
