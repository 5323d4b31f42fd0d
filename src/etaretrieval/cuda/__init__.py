"""CUDA kernels (numba-cuda) for every algorithm, and their raw launchers.

The public functions (:func:`etaretrieval.topk_hamming` and friends) dispatch
here when their arguments are device arrays (``__cuda_array_interface__``:
CuPy, torch CUDA tensors, numba device arrays). Nothing in this package
imports ``numba.cuda`` at import time: :mod:`._backend` does on first device
use, and the kernels are compiled then (per set of :mod:`.config` values), so
``import etaretrieval`` works on machines without a GPU, a driver or
numba-cuda.

Raw launchers, for callers that validated their inputs themselves (the
PyTorch plugin): they take any device arrays (torch CUDA tensors as they are;
int64 signatures are read as the uint64 bits they hold), write into
caller-allocated outputs, and launch on a given stream (a numba stream or a
raw ``cudaStream_t`` int such as ``torch.cuda.current_stream().cuda_stream``;
by default the current stream of the outputs' library):

- :func:`pack_signatures_into` ``(x, planes, out, *, check_finite, stream, offset)``
- :func:`hamming_into` ``(a, b, out, *, stream)``
- :func:`topk_hamming_into` ``(query, keys, k, idx, dist, *, lengths, mask, padding_side, stream, check)``
- :func:`topk_hamming_lookup_into` ``(query, ids, table, k, idx, dist, *, lengths, mask, padding_id,
  padding_side, stream, check)``

The top-K launchers read two int64 error cells back (one stream
synchronisation) and raise the CPU's errors when ``check=True``; with
``check=False`` they return the cells instead (see :func:`raise_errors`).
"""

from __future__ import annotations

from . import config
from .hamming import hamming_into
from .pack import pack_signatures_into
from .topk import raise_errors, topk_hamming_into, topk_hamming_lookup_into

__all__ = [
    "config",
    "hamming_into",
    "pack_signatures_into",
    "raise_errors",
    "topk_hamming_into",
    "topk_hamming_lookup_into",
]
