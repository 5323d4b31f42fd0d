"""Front-padded sequences on the GPU: ``lengths`` counted from the end become a mask.

The top-K kernels take the valid prefix ``[0, lengths[b])`` of each row and,
independently, a mask. A front-padded row (``padding_side="left"``) has its
``lengths[b]`` valid positions at the end, so :func:`left_padding` turns the
lengths into the mask of the last ``lengths[b]`` positions and into kernel
lengths of ``L`` (the whole row, then masked). An out-of-range entry is kept
as it is in the kernel lengths, so the top-K kernel reports it exactly as for
right padding, without an extra host synchronisation.
"""

from __future__ import annotations

import functools
from typing import Any

import numpy as np

from .._device import DeviceArray
from . import _backend, config

__all__ = ["left_padding"]

#: ``numba.cuda`` once a kernel is built (a module global: the simulator swaps it while kernels run).
cuda: Any = None


@functools.lru_cache(maxsize=None)
def _kernel() -> Any:
    global cuda
    cuda = _backend.cuda()
    from numba import int64

    @cuda.jit
    def left_kernel(lengths, length, out_lengths, mask):
        """One thread per ``(row, position)`` (one per row when ``length`` is 0)."""
        per_row = max(length, 1)
        i = cuda.grid(1)
        if i < lengths.shape[0] * per_row:
            b = i // per_row
            p = i % per_row
            n = int64(lengths[b])
            ok = n >= 0 and n <= length
            if p < length:
                mask[b, p] = ok and p >= length - n
            if p == 0:
                out_lengths[b] = length if ok else n

    return left_kernel


def left_padding(lengths: DeviceArray, length: int, stream: Any = None) -> tuple[Any, Any]:
    """``(kernel lengths, mask)`` for front-padded rows of ``length`` positions.

    ``lengths`` is the ``(B,)`` integer device array of valid positions per row
    (counted from the end). Returns numba device arrays (allocated with the
    library of ``lengths``, on ``stream``, by default its library's current
    stream): ``(B,)`` int64 holding
    ``length`` where ``lengths`` is in range and the entry itself where not,
    and the ``(B, length)`` bool mask of the last ``lengths[b]`` positions.
    """
    batch = lengths.shape[0]
    with _backend.device_scope(lengths):
        stream = _backend.launch_stream(lengths, stream)
        _, out = _backend.empty(lengths, (batch,), np.int64, stream)
        _, mask = _backend.empty(lengths, (batch, length), np.bool_, stream)
        count = batch * max(length, 1)
        if count:
            threads = config.HAMMING_THREADS
            _backend.configure(_kernel(), (count + threads - 1) // threads, threads, stream)(
                _backend.as_numba(lengths), np.int64(length), out, mask
            )
    return out, mask
