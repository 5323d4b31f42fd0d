"""One place for the library's Numba policy.

Every CPU kernel is compiled with the same options: ``nopython``, ``nogil`` (so
callers may run kernels from their own threads), ``cache=True`` (compiled
machine code is kept on disk, so only the very first call of a signature pays
the compile time) and *no* ``fastmath`` (results must be bit-exact and NaN-safe).

Environment variables:

``ETARETRIEVAL_NO_CACHE=1``
    Compile without the on-disk cache (useful on read-only installs).
``ETARETRIEVAL_SERIAL=1``
    Compile the kernels without ``parallel=True``; results are identical.
"""

from __future__ import annotations

import os
from typing import Any, Callable

import numba

__all__ = ["jit", "PARALLEL", "CACHE"]

CACHE: bool = os.environ.get("ETARETRIEVAL_NO_CACHE", "0") in ("", "0")
PARALLEL: bool = os.environ.get("ETARETRIEVAL_SERIAL", "0") in ("", "0")


def jit(*, parallel: bool = False) -> Callable[[Callable[..., Any]], Any]:
    """Return the library's ``numba.njit`` decorator.

    Parameters
    ----------
    parallel : bool, default False
        Ask for ``parallel=True`` (``prange`` loops run on Numba's thread
        pool); ignored when ``ETARETRIEVAL_SERIAL=1``.
    """
    return numba.njit(nogil=True, cache=CACHE, parallel=parallel and PARALLEL, fastmath=False)
