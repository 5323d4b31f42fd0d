"""Broadcasting Hamming distance on the GPU: one thread per output element."""

from __future__ import annotations

import functools
from typing import Any

import numpy as np

from .._device import DeviceArray, describe
from . import _backend, _layout, config

__all__ = ["hamming", "hamming_into"]

#: ``numba.cuda`` once a kernel is built (a module global: the simulator swaps it while kernels run).
cuda: Any = None


@functools.lru_cache(maxsize=None)
def _kernel() -> Any:
    global cuda
    cuda = _backend.cuda()
    from numba import int32

    @cuda.jit
    def hamming_kernel(a, b, out):
        """``out[i] = popcount(a[i] ^ b[i])`` over 4 leading axes (broadcast by strides)."""
        s0, s1, s2, s3 = out.shape
        i = cuda.grid(1)
        if i < s0 * s1 * s2 * s3:
            i3 = i % s3
            r = i // s3
            i2 = r % s2
            r = r // s2
            i1 = r % s1
            i0 = r // s1
            total = int32(0)
            for w in range(a.shape[4]):
                total += int32(cuda.popc(a[i0, i1, i2, i3, w] ^ b[i0, i1, i2, i3, w]))
            out[i0, i1, i2, i3] = total

    return hamming_kernel


def hamming_into(a: Any, b: Any, out: Any, *, stream: Any = None) -> None:
    """Raw launcher: ``out[...] = hamming(a, b)`` on device arrays, no validation.

    ``a`` / ``b`` are ``(..., W)`` signatures (uint64, or int64 holding the same
    bits) whose leading axes broadcast to ``out``'s shape; ``out`` is int32.
    Runs on ``stream`` (a numba stream or a raw handle), by default the
    current stream of ``out``'s library (torch, CuPy) or numba's default one.
    """
    like = describe(out)
    with _backend.device_scope(like):
        stream = _backend.launch_stream(like, stream)
        _launch(_backend.as_numba(a, np.uint64), _backend.as_numba(b, np.uint64), _backend.as_numba(out), stream)


def _launch(x: Any, y: Any, out: Any, stream: Any) -> None:
    shape = tuple(out.shape)
    n = int(np.prod(shape, dtype=np.int64))
    if n == 0:
        return
    words = tuple(x.shape)[-1]
    arrays = [
        (x, _layout.broadcast_strides(tuple(x.shape)[:-1], x.strides[:-1], shape), (words,), (x.strides[-1],)),
        (y, _layout.broadcast_strides(tuple(y.shape)[:-1], y.strides[:-1], shape), (words,), (y.strides[-1],)),
        (out, tuple(out.strides), (), ()),
    ]
    kernel = _kernel()
    threads = config.HAMMING_THREADS
    for _, (xv, yv, ov) in _layout.tiles(shape, arrays):
        count = int(np.prod(ov.shape, dtype=np.int64))
        _backend.configure(kernel, (count + threads - 1) // threads, threads, stream)(xv, yv, ov)


def hamming(a: DeviceArray, b: DeviceArray, shape: tuple[int, ...]) -> Any:
    """Device path of :func:`etaretrieval.hamming` (inputs validated, ``shape`` the broadcast leading shape)."""
    with _backend.device_scope(a):
        stream = _backend.launch_stream(a)
        user, out = _backend.empty(a, shape, np.int32, stream)
        _launch(_backend.as_numba(a), _backend.as_numba(b), out, stream)
    return user
