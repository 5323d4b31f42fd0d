"""Where an argument lives: host (NumPy) or a CUDA device.

An argument is a *device array* when it exposes ``__cuda_array_interface__``
(CuPy arrays, torch CUDA tensors, numba device arrays) or is a numba device
array (``__cuda_ndarray__``, which also covers the CUDA simulator's arrays).
Shape and dtype of a device array are read from that interface: nothing is
copied to the host and ``numba.cuda`` is not imported here.

Every public function calls :func:`placement` first: all of its array
arguments on the host, or all on a device. A mix is a :class:`ValueError`
that names one argument of each kind.
"""

from __future__ import annotations

import sys
from typing import Any

import numpy as np

__all__ = ["DeviceArray", "describe", "is_device", "placement"]


class DeviceArray:
    """Shape, dtype and library of a device array, read without copying it.

    Attributes
    ----------
    obj : object
        The caller's array, untouched.
    shape : tuple of int
    dtype : numpy.dtype
    family : str
        ``"torch"``, ``"cupy"``, ``"numba"`` (numba device arrays, also the
        simulator's) or ``"other"`` (any other ``__cuda_array_interface__``).
    """

    __slots__ = ("obj", "shape", "dtype", "family")

    def __init__(self, obj: Any, shape: tuple[int, ...], dtype: np.dtype, family: str) -> None:
        self.obj = obj
        self.shape = shape
        self.dtype = dtype
        self.family = family

    @property
    def ndim(self) -> int:
        return len(self.shape)

    @property
    def size(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64))

    def __repr__(self) -> str:
        return f"DeviceArray({self.family}, shape={self.shape}, dtype={self.dtype})"


def _family(obj: Any) -> str:
    for name, cls in (("torch", "Tensor"), ("cupy", "ndarray")):  # subclasses defined elsewhere too
        lib = sys.modules.get(name)
        if lib is not None and isinstance(obj, getattr(lib, cls, ())):
            return name
    module = type(obj).__module__ or ""
    for name in ("torch", "cupy", "numba"):
        if module == name or module.startswith(name + "."):
            return name
    return "other"


def describe(obj: Any) -> DeviceArray | None:
    """A :class:`DeviceArray` for a device array (already described ones pass through), else ``None``."""
    if type(obj) is np.ndarray:  # the common case first: it costs every call
        return None
    if isinstance(obj, DeviceArray):
        return obj
    if obj is None or isinstance(obj, (np.ndarray, np.generic, list, tuple, int, float, bool)):
        return None
    if getattr(type(obj), "__cuda_ndarray__", False) is True:  # numba device array / simulator array
        return DeviceArray(obj, tuple(int(s) for s in obj.shape), np.dtype(obj.dtype), "numba")
    family = _family(obj)
    if family == "torch" and getattr(obj, "requires_grad", False) and getattr(obj, "is_cuda", False):
        obj_cai = obj.detach()  # torch refuses the interface of tensors that require grad
    else:
        obj_cai = obj
    try:
        cai = obj_cai.__cuda_array_interface__  # torch raises AttributeError for CPU tensors
    except AttributeError:
        return None
    return DeviceArray(obj, tuple(int(s) for s in cai["shape"]), np.dtype(cai["typestr"]), family)


def is_device(obj: Any) -> bool:
    """Whether ``obj`` is a device array."""
    return describe(obj) is not None


def placement(**arrays: Any) -> bool:
    """``True`` when every given (non-``None``) array is on a device, ``False`` when all are on the host.

    Raises
    ------
    ValueError
        Some arrays are device arrays and others are host data; the message
        names one of each.
    """
    if all(value is None or type(value) is np.ndarray for value in arrays.values()):
        return False  # the common case, decided without describing each argument
    device = host = None
    for name, value in arrays.items():
        if value is None:
            continue
        if is_device(value):
            device = device or name
        else:
            host = host or name
    if device is not None and host is not None:
        raise ValueError(
            f"{device} is a device (CUDA) array but {host} is host data; pass all arrays on the same device "
            "(move them with e.g. numba.cuda.to_device, cupy.asarray or torch.Tensor.cuda)"
        )
    return device is not None
