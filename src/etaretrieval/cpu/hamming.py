"""Broadcasting Hamming distance between packed signatures."""

from __future__ import annotations

import numba

from .._bits import popcount
from .._jit import CACHE

__all__ = ["hamming_gufunc"]


@numba.guvectorize(
    ["void(uint64[:], uint64[:], int32[:])"],
    "(w),(w)->()",
    target="cpu",  # a parallel gufunc would start Numba's threading layer at import
    cache=CACHE,
    nopython=True,
)
def hamming_gufunc(a, b, out):  # type: ignore[no-untyped-def]
    """Number of differing bits of ``a`` and ``b`` (numpy broadcasting)."""
    total = 0
    for w in range(a.shape[0]):
        total += popcount(a[w] ^ b[w])
    out[0] = total
