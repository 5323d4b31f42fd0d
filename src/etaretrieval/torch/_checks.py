"""Argument checks shared by the ETA modules (retriever, attention, baselines)."""

from __future__ import annotations

from typing import Optional

import numpy as np
import torch

from .._validate import DTypeError, _shape
from . import _ops

__all__ = ["_floats", "_ints", "_bool_mask", "_planes"]


def _floats(name: str, t: object, ndim: int, what: str, device: Optional[torch.device] = None) -> torch.Tensor:
    """Check a float tensor argument of a module: type, dtype, rank, device."""
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if not t.dtype.is_floating_point:
        raise DTypeError(f"{name} must have a floating-point dtype, got {t.dtype}")
    if t.dim() != ndim:
        raise ValueError(f"{name} must have shape {what}, got shape {_shape(tuple(t.shape))}")
    if device is not None and t.device != device:
        raise ValueError(f"{name} must be on the device of target ({device}), got {t.device}")
    return t


def _ints(name: str, t: object, shape: tuple[int, ...], device: torch.device, *, required: bool = True) -> torch.Tensor:
    """Check an integer tensor argument: type, dtype, exact shape, device (``None`` only if not ``required``)."""
    if t is None and required:
        raise ValueError(f"{name} is required here (shape {_shape(shape)})")
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if not _ops.is_integer(t.dtype):
        raise DTypeError(f"{name} must have an integer dtype, got {t.dtype}")
    if tuple(t.shape) != shape:
        raise ValueError(f"{name} must have shape {_shape(shape)}, got shape {_shape(tuple(t.shape))}")
    if t.device != device:
        raise ValueError(f"{name} must be on the device of the other inputs ({device}), got {t.device}")
    return t


def _bool_mask(mask: object, shape: tuple[int, ...], device: torch.device) -> torch.Tensor:
    """Check a mask argument (bool, or numeric with non-zero = valid); return it as bool."""
    if not isinstance(mask, torch.Tensor):
        raise TypeError(f"mask must be a torch.Tensor, got {type(mask).__name__}")
    if mask.dtype.is_complex:
        raise DTypeError(
            f"mask must have dtype torch.bool or a real numeric dtype (non-zero = valid), got {mask.dtype}"
        )
    if tuple(mask.shape) != shape:
        raise ValueError(f"mask must have shape {_shape(shape)}, got shape {_shape(tuple(mask.shape))}")
    if mask.device != device:
        raise ValueError(f"mask must be on the device of target ({device}), got {mask.device}")
    return _ops.bool_mask(mask)  # type: ignore[return-value]


def _planes(planes: object) -> torch.Tensor:
    """Check existing hyperplanes (a tensor or an array); return them as a tensor of the module's own."""
    if not isinstance(planes, torch.Tensor):
        try:  # a copy: NumPy planes may be read-only (SimHasher.planes), which torch cannot view
            planes = torch.from_numpy(np.array(planes))
        except (TypeError, ValueError, RuntimeError):
            raise TypeError(f"planes must be a torch.Tensor or an array, got {type(planes).__name__}") from None
    if planes.dtype not in (torch.float32, torch.float64):
        raise DTypeError(f"planes must have dtype torch.float32 or torch.float64, got {planes.dtype}")
    if planes.dim() != 2 or planes.shape[0] < 1 or not 1 <= planes.shape[1] <= 64 * 16:
        raise ValueError(
            "planes must have shape (dim, bits) with dim >= 1 and bits in 1..1024, "
            f"got shape {_shape(tuple(planes.shape))}"
        )
    if not bool(torch.isfinite(planes).all()):
        raise ValueError("planes must be finite, got a NaN or an infinity")
    return planes.detach().clone()
