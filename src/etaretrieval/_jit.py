"""One place for the library's Numba policy.

Every CPU kernel is compiled with the same options: ``nopython``, ``nogil`` (so
callers may run kernels from their own threads), ``cache=True`` (compiled
machine code is kept on disk, so only the very first call of a signature pays
the compile time) and *no* ``fastmath`` (results must be bit-exact and NaN-safe).

Environment variables:

``ETARETRIEVAL_NO_CACHE=1``
    Compile without the on-disk cache (useful on read-only installs).
``ETARETRIEVAL_SERIAL=1``
    Run every call in the calling thread (see :func:`etaretrieval.threads`);
    results are identical.

The kernels themselves are serial (no ``parallel=True``): the library spreads
row ranges over its own threads (:mod:`etaretrieval._threads`), so Numba's
threading layer (GNU OpenMP by default, which kills children made by ``fork`` and
shares its thread setting with torch) is never started, and one compiled
variant serves serial and threaded calls alike.
"""

from __future__ import annotations

import functools
import os
from typing import Any, Callable

import numba
import numpy as np
import numpy.typing as npt

__all__ = ["jit", "compiled", "array_type", "kernel_input", "PARALLEL", "CACHE", "PURE_PYTHON"]

CACHE: bool = os.environ.get("ETARETRIEVAL_NO_CACHE", "0") in ("", "0")
PARALLEL: bool = os.environ.get("ETARETRIEVAL_SERIAL", "0") in ("", "0")
_NUMBA_CONFIG: Any = numba.core.config  # its settings are set at import: no attributes for a type checker
#: ``NUMBA_DISABLE_JIT=1``: the kernels run as plain Python (their fallbacks are tested that way).
PURE_PYTHON: bool = bool(_NUMBA_CONFIG.DISABLE_JIT)


def jit(inline: str = "never") -> Callable[[Callable[..., Any]], Any]:
    """Return the library's ``numba.njit`` decorator (``nogil``, ``cache``, no ``fastmath``).

    ``inline="always"`` (helpers called from one place in each caller):
    Numba inlines the function's IR into the caller before typing, which
    saves a compile of its own and one of the levels at which Numba
    optimises and emits again the machine code of every function below
    (each jitted level links and re-optimises its callees); it stays
    callable from Python.
    """
    options: dict[str, Any] = {"nogil": True, "cache": CACHE, "fastmath": False, "inline": inline}
    return numba.njit(**options)


def compiled(kernel: Any, signature: tuple[Any, ...]) -> Callable[..., Any]:
    """``kernel`` compiled (or loaded from the on-disk cache) for ``signature`` alone, called without type resolution.

    The drivers bring every argument to one fixed type and pick the variant a
    call needs, its flags given as Numba literal types
    (``numba.types.literal(True)``): the compiled code holds them as constants
    (the tests they control, and the code behind the tests that fail, are not
    compiled), so a first call compiles the one variant it runs rather than
    every variant a general kernel could reach. The returned callable skips
    the dispatcher's type resolution: arrays of another dtype, dimension count
    or layout than ``signature`` says must never reach it (Numba checks only
    the item size); the values passed for literal arguments are not read. In
    pure Python (``NUMBA_DISABLE_JIT=1``) it is ``kernel`` itself.
    """
    if PURE_PYTHON:
        return kernel
    return _compiled(kernel, signature)


def array_type(dtype: npt.DTypeLike, ndim: int, readonly: bool = True) -> Any:
    """The Numba type of a C-contiguous ``dtype`` array (read-only by default, as :func:`kernel_input` passes them)."""
    return numba.types.Array(numba.from_dtype(np.dtype(dtype)), ndim, "C", readonly=readonly)


@functools.lru_cache(maxsize=None)
def _compiled(kernel: Any, signature: tuple[Any, ...]) -> Callable[..., Any]:
    kernel.compile(signature)
    return kernel.overloads[signature].entry_point


def kernel_input(a: np.ndarray, *, contiguous: bool = False) -> np.ndarray:
    """``a`` as a kernel argument: a read-only view (of a C-contiguous copy, if ``contiguous`` and needed).

    Numba compiles one variant per combination of dtype, layout and
    read-only flag of the arguments. Passing every input read-only (a view
    costs well under a microsecond) halves the variants a program meets;
    small arrays (``contiguous=True``: queries, hyperplanes) also get one layout.
    """
    view = (np.ascontiguousarray(a) if contiguous else a).view()
    view.flags.writeable = False
    return view
