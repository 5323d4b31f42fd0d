"""Hamming distance between packed signatures."""

from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt

from ._device import placement
from ._validate import as_signatures
from .cpu.hamming import hamming_gufunc

__all__ = ["hamming"]


def hamming(a: Any, b: Any) -> npt.NDArray[np.int32]:
    """Hamming distance (XOR + popcount) between packed signatures.

    Parameters
    ----------
    a, b : array_like
        ``(..., W)`` uint64 signatures; the leading axes broadcast
        against each other as in NumPy, and both must have the same ``W``.

    Returns
    -------
    numpy.ndarray
        int32 distances in ``0..64 W``, of the broadcast leading shape. For
        device arrays (``__cuda_array_interface__``), a device array of the
        same library, computed on the GPU.

    Examples
    --------
    >>> import numpy as np, etaretrieval as er
    >>> a = np.array([[0b1011]], dtype=np.uint64)
    >>> b = np.array([[0b0001], [0b1111]], dtype=np.uint64)
    >>> er.hamming(a, b)
    array([2, 1], dtype=int32)
    """
    device = placement(a=a, b=b)
    x = as_signatures("a", a, tuple(range(1, 33)), "(..., W)")
    y = as_signatures("b", b, tuple(range(1, 33)), "(..., W)")
    if x.shape[-1] != y.shape[-1]:
        raise ValueError(f"a and b must have the same number of words W, got {x.shape[-1]} and {y.shape[-1]}")
    try:
        shape = np.broadcast_shapes(x.shape[:-1], y.shape[:-1])
    except ValueError:
        raise ValueError(
            f"the leading axes of a {x.shape[:-1]} and b {y.shape[:-1]} do not broadcast together"
        ) from None
    if device:
        from .cuda.hamming import hamming as device_hamming

        return device_hamming(x, y, shape)
    return np.asarray(hamming_gufunc(x, y))
