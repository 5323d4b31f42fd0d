"""The one module that imports ``numba.cuda`` (lazily, on first device use).

Everything the CUDA kernels need from the array libraries goes through here:
turning any ``__cuda_array_interface__`` object into a numba device array
without copying, strided views (broadcast axes, reinterpreted dtypes),
allocating outputs with the caller's library (torch's caching allocator,
CuPy's memory pool, or numba), the stream to launch on, and the small device
"error cells" the kernels report bad input through. A backend swap (another
CUDA binding) touches this file only.

Works the same under the CUDA simulator (``NUMBA_ENABLE_CUDASIM=1``), where
device arrays are numba's simulated ``FakeCUDAArray`` wrappers of NumPy arrays.
"""

from __future__ import annotations

import contextlib
import functools
import sys
import warnings
from typing import Any, Iterator

import numpy as np

from .._device import DeviceArray

__all__ = [
    "cuda",
    "simulator",
    "configure",
    "as_numba",
    "view",
    "empty",
    "placeholder",
    "launch_stream",
    "device_scope",
    "error_cells",
    "read_back",
    "element",
]

_CUDA: Any = None


def cuda() -> Any:
    """The ``numba.cuda`` module, imported on first use."""
    global _CUDA
    if _CUDA is None:
        try:
            from numba import cuda as module
        except ImportError as exc:  # pragma: no cover - numba-cuda is an optional extra
            raise ImportError(
                "device (CUDA) arrays need the numba-cuda package: pip install 'etaretrieval[cuda]'"
            ) from exc
        _CUDA = module
    return _CUDA


def simulator() -> bool:
    """Whether numba runs CUDA kernels in its simulator (``NUMBA_ENABLE_CUDASIM=1``)."""
    cuda()
    from numba.cuda.core import config

    return bool(config.ENABLE_CUDASIM)


def as_numba(x: Any, dtype: Any = None) -> Any:
    """A numba device array viewing ``x`` (no copy, no host synchronisation).

    ``x`` is a numba device array, a :class:`~etaretrieval._device.DeviceArray`
    or any ``__cuda_array_interface__`` object. ``dtype`` reinterprets the
    bytes (same item size), e.g. int64 signatures of torch as uint64.
    """
    if isinstance(x, DeviceArray):
        x = x.obj
    if getattr(type(x), "__cuda_ndarray__", False) is not True:
        if simulator():
            raise TypeError(
                f"the CUDA simulator runs on numba device arrays only, got {type(x).__name__}"
            )
        if getattr(x, "requires_grad", False):  # a torch tensor: the kernels only read it
            x = x.detach()
        # Kernels are launched on the producer's stream (see launch_stream), so no host sync is needed.
        x = cuda().as_cuda_array(x, sync=False)
    if dtype is not None and np.dtype(dtype) != x.dtype:
        x = view(x, x.shape, x.strides, dtype=dtype)
    return x


class _Interface:
    """Holder of a NumPy ``__array_interface__`` (simulator views)."""

    def __init__(self, base: np.ndarray, interface: dict[str, Any]) -> None:
        self.base = base
        self.__array_interface__ = interface


def view(arr: Any, shape: tuple[int, ...], strides: tuple[int, ...], *, offset: int = 0, dtype: Any = None) -> Any:
    """A view of numba device array ``arr`` with any shape and byte strides.

    ``offset`` (bytes) moves element 0; strides may be 0 (broadcast) or
    negative. The caller guarantees every addressed element lies inside
    ``arr``'s memory.
    """
    dt = np.dtype(arr.dtype if dtype is None else dtype)
    shape = tuple(int(s) for s in shape)
    strides = tuple(int(s) for s in strides)
    if simulator():
        from numba.cuda.simulator.cudadrv.devicearray import FakeCUDAArray

        base = arr._ary
        ptr = base.__array_interface__["data"][0] + offset
        interface = {"data": (ptr, False), "shape": shape, "strides": strides, "typestr": dt.str, "version": 3}
        return FakeCUDAArray(np.asarray(_Interface(base, interface)))
    ptr = arr.__cuda_array_interface__["data"][0] + offset
    desc = {"data": (ptr, False), "shape": shape, "strides": strides, "typestr": dt.str, "version": 3}
    return cuda().from_cuda_array_interface(desc, owner=arr, sync=False)


@functools.lru_cache(maxsize=None)
def _torch_dtype(dtype: np.dtype) -> Any:
    torch = sys.modules["torch"]
    return {
        np.dtype(np.uint64): torch.uint64,
        np.dtype(np.int64): torch.int64,
        np.dtype(np.int32): torch.int32,
        np.dtype(np.uint16): torch.uint16,
        np.dtype(np.bool_): torch.bool,
        np.dtype(np.float32): torch.float32,
        np.dtype(np.float64): torch.float64,
    }[np.dtype(dtype)]


def empty(like: DeviceArray | None, shape: tuple[int, ...], dtype: Any, stream: Any = 0) -> tuple[Any, Any]:
    """Allocate a C-contiguous device array with the library of ``like``.

    Returns ``(user, dev)``: the array handed back to the caller (a torch
    tensor, a CuPy array or a numba device array) and a numba view of it.
    """
    dtype = np.dtype(dtype)
    family = like.family if like is not None else "numba"
    if family == "torch" and not simulator():
        torch = sys.modules["torch"]
        user = torch.empty(shape, dtype=_torch_dtype(dtype), device=like.obj.device)
        return user, as_numba(user)
    if family == "cupy" and not simulator():
        cupy = sys.modules["cupy"]
        with like.obj.device:
            user = cupy.empty(shape, dtype=dtype)
        return user, as_numba(user)
    dev = cuda().device_array(shape, dtype=dtype, stream=stream)
    return dev, dev


_PLACEHOLDERS: dict[tuple[Any, ...], Any] = {}


def placeholder(like: DeviceArray | None, shape: tuple[int, ...], dtype: Any, stream: Any = 0) -> Any:
    """A tiny numba device array standing in for an absent argument (never read by the kernels).

    Kept per device for numba's own arrays (each ``cudaMalloc`` costs
    microseconds); torch and CuPy allocate from their pools.
    """
    if like is not None and like.family in ("torch", "cupy") and not simulator():
        return empty(like, shape, dtype, stream)[1]
    key = (tuple(shape), np.dtype(dtype).str, 0 if simulator() else cuda().get_current_device().id)
    arr = _PLACEHOLDERS.get(key)
    if arr is None:
        arr = _PLACEHOLDERS[key] = cuda().device_array(shape, dtype=dtype)
    return arr


def launch_stream(like: DeviceArray | None, stream: Any = None) -> Any:
    """The stream to launch on: ``stream`` if given, else the current stream of ``like``'s library.

    ``stream`` may be a numba stream or a raw ``cudaStream_t`` handle (int),
    e.g. ``torch.cuda.current_stream().cuda_stream``. Kernels run in stream
    order after the work that produced the inputs, so no host sync is needed.
    """
    if simulator():
        return 0
    c = cuda()
    if stream is not None and not isinstance(stream, int):
        return stream
    handle = stream
    if handle is None and like is not None:
        if like.family == "torch":
            torch = sys.modules["torch"]
            handle = torch.cuda.current_stream(like.obj.device).cuda_stream
        elif like.family == "cupy":
            handle = sys.modules["cupy"].cuda.get_current_stream().ptr
    if handle is None:
        return c.default_stream()
    if handle == 0:
        return c.legacy_default_stream()
    return c.external_stream(int(handle))


@contextlib.contextmanager
def device_scope(like: DeviceArray | None) -> Iterator[None]:
    """Make the device holding ``like`` numba's current device (torch and CuPy arrays)."""
    index = None
    if like is not None and not simulator():
        if like.family == "torch":
            index = like.obj.device.index
        elif like.family == "cupy":
            index = like.obj.device.id
    if index is None:
        yield
        return
    with cuda().gpus[index]:
        yield


_INIT_KERNEL: Any = None


def _init_kernel() -> Any:
    global _INIT_KERNEL
    if _INIT_KERNEL is None:
        c = cuda()

        @c.jit
        def init(cells, a, b):  # no cuda.* inside: safe under the simulator's module swap  # type: ignore[no-untyped-def]
            cells[0] = a
            cells[1] = b

        _INIT_KERNEL = init
    return _INIT_KERNEL


def configure(kernel: Any, grid: Any, block: Any, stream: Any, shared_bytes: int = 0) -> Any:
    """``kernel[grid, block, stream, shared_bytes]``, without numba's low-occupancy warning.

    One block per row makes small batches small grids by design; numba-cuda
    warns about every grid under 128 blocks, which would fail callers that turn
    warnings into errors.
    """
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Grid size", category=Warning)
        return kernel[grid, block, stream, shared_bytes]


def error_cells(like: DeviceArray | None, first: int, second: int, stream: Any) -> Any:
    """A ``(2,)`` int64 device array set (in stream order) to ``[first, second]``.

    Kernels lower the cells with ``atomic.min`` to report the first bad input
    (e.g. ``row * L + position``); the initial values mean "none". Allocated
    with ``like``'s library (no ``cudaMalloc`` per call under torch or CuPy).
    """
    _, cells = empty(like, (2,), np.int64, stream)
    configure(_init_kernel(), 1, 1, stream)(cells, np.int64(first), np.int64(second))
    return cells


def read_back(arr: Any, stream: Any) -> np.ndarray:
    """Copy a small device array (error cells, row ids) to the host, in stream order; waits for it."""
    host = arr.copy_to_host(stream=stream)
    if not isinstance(stream, int):
        stream.synchronize()
    return host


def element(arr: Any, index: tuple[int, ...]) -> Any:
    """One element of a numba device array, copied to the host (for error messages)."""
    return arr[index]
