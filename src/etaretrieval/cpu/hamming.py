"""Broadcasting Hamming distance between packed signatures."""

from __future__ import annotations

import functools
from typing import Any

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


@functools.cache
def hamming_gufunc() -> Any:
    """The ``(w),(w)->()`` gufunc of :func:`_hamming_row`, built (or loaded from Numba's cache) at its first use.

    Not at import: loading it costs about 0.15 s, which every ``import
    etaretrieval`` (an offline job's start, a CLI) would pay whether or not it
    computes a plain Hamming distance.
    """
    if PURE_PYTHON:  # pure Python: guvectorize would still compile its signature

        def _hamming_python(a: np.ndarray, b: np.ndarray) -> np.int32:
            out = np.zeros(1, dtype=np.int32)
            _hamming_row(a, b, out)
            return out[0]

        return np.vectorize(_hamming_python, signature="(w),(w)->()", otypes=[np.int32])
    return numba.guvectorize(
        ["void(uint64[:], uint64[:], int32[:])"],
        "(w),(w)->()",
        target="cpu",  # a parallel gufunc would start Numba's threading layer
        cache=CACHE,
        nopython=True,
    )(_hamming_row)
