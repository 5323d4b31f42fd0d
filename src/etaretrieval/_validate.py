"""The one validation layer in front of every kernel.

Each check names the argument and states what was expected; it never copies
nor modifies the caller's data (apart from tiny per-row vectors such as
``lengths``).
"""

from __future__ import annotations

import operator
from typing import Any

import numpy as np

from .config import MAX_BITS

__all__ = [
    "DTypeError",
    "as_signatures",
    "check_k",
    "check_bits",
    "check_dim",
    "validity",
    "as_ids",
    "as_padding",
]

MAX_WORDS = MAX_BITS // 64


class DTypeError(TypeError, ValueError):
    """An argument has the wrong dtype.

    Subclasses both :class:`TypeError` (the conventional exception for a wrong
    type) and :class:`ValueError` (what the API contract promises for bad
    signatures), so either ``except`` clause catches it.
    """


def _shape(shape: tuple[int, ...]) -> str:
    return "(" + ", ".join(str(s) for s in shape) + ("," if len(shape) == 1 else "") + ")"


def as_signatures(name: str, a: Any, ndims: tuple[int, ...], what: str) -> np.ndarray:
    """Check a packed-signature array: uint64, ``ndim`` in ``ndims``, 1..16 words."""
    arr = np.asarray(a)
    if arr.dtype != np.uint64:
        raise DTypeError(f"{name} must hold packed signatures of dtype uint64, got dtype {arr.dtype}")
    if arr.ndim not in ndims:
        raise ValueError(f"{name} must have shape {what}, got shape {_shape(arr.shape)}")
    w = arr.shape[-1]
    if not 1 <= w <= MAX_WORDS:
        raise ValueError(
            f"{name} must have 1..{MAX_WORDS} signature words in its last axis "
            f"(1..{MAX_BITS} bits), got shape {_shape(arr.shape)}"
        )
    return arr


def _as_int(name: str, value: Any) -> int:
    if isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{name} must be an integer, got bool {value!r}")
    try:
        return operator.index(value)
    except TypeError:
        raise TypeError(f"{name} must be an integer, got {type(value).__name__} {value!r}") from None


def check_k(k: Any) -> int:
    """``k`` as a Python int, ``>= 0``."""
    k = _as_int("k", k)
    if k < 0:
        raise ValueError(f"k must be >= 0, got {k}")
    return k


def check_bits(bits: Any) -> int:
    """``bits`` as a Python int in ``1..MAX_BITS``."""
    bits = _as_int("bits", bits)
    if not 1 <= bits <= MAX_BITS:
        raise ValueError(f"bits must be in 1..{MAX_BITS}, got {bits}")
    return bits


def check_dim(dim: Any) -> int:
    """``dim`` as a Python int, ``>= 1``."""
    dim = _as_int("dim", dim)
    if dim < 1:
        raise ValueError(f"dim must be >= 1, got {dim}")
    return dim


def validity(lengths: Any, mask: Any, batch: int, length: int) -> tuple[np.ndarray, np.ndarray | None]:
    """Normalise ``lengths`` / ``mask`` for a ``(batch, length)`` sequence.

    Returns ``(lengths, mask)``: ``lengths`` a fresh ``(batch,)`` int64 array
    (all ``length`` when not given) and ``mask`` a ``(batch, length)`` bool view
    (broadcast without copying when given as ``(length,)``) or ``None``.
    """
    if lengths is not None and mask is not None:
        raise ValueError("pass either lengths or mask, not both")
    if mask is not None:
        m = np.asarray(mask)
        if m.dtype != np.bool_:
            raise DTypeError(f"mask must have dtype bool, got dtype {m.dtype}")
        if m.shape not in ((batch, length), (length,)):
            raise ValueError(
                f"mask must have shape {_shape((batch, length))} or {_shape((length,))}, "
                f"got shape {_shape(m.shape)}"
            )
        return np.full(batch, length, dtype=np.int64), np.broadcast_to(m, (batch, length))
    if lengths is None:
        return np.full(batch, length, dtype=np.int64), None
    n = np.asarray(lengths)
    if not np.issubdtype(n.dtype, np.integer):
        raise DTypeError(f"lengths must have an integer dtype, got dtype {n.dtype}")
    if n.shape != (batch,):
        raise ValueError(f"lengths must have shape {_shape((batch,))}, got shape {_shape(n.shape)}")
    if n.size:
        lo, hi = n.min(), n.max()
        if lo < 0 or hi > length:
            bad = int(np.flatnonzero((n < 0) | (n > length))[0])
            raise ValueError(f"lengths must lie in 0..{length}, got lengths[{bad}] = {int(n[bad])}")
    return n.astype(np.int64), None


def as_ids(ids: Any, batch: int) -> tuple[np.ndarray, bool]:
    """Check item ids: any integer dtype, ``(batch, L)`` or shared ``(L,)``.

    Returns the ``(batch, L)`` array (a zero-copy broadcast view for shared
    ids) and whether the ids were shared.
    """
    arr = np.asarray(ids)
    if not np.issubdtype(arr.dtype, np.integer):
        raise DTypeError(f"ids must have an integer dtype, got dtype {arr.dtype}")
    if arr.ndim == 1:
        return np.broadcast_to(arr, (batch, arr.shape[0])), True
    if arr.ndim != 2 or arr.shape[0] != batch:
        raise ValueError(
            f"ids must have shape (B, L) with B = {batch} (the rows of query) or (L,), "
            f"got shape {_shape(arr.shape)}"
        )
    return arr, False


def as_padding(padding_id: Any, dtype: np.dtype) -> int | None:
    """``padding_id`` as an int64 bit pattern comparable to ids cast to int64."""
    if padding_id is None:
        return None
    value = _as_int("padding_id", padding_id)
    info = np.iinfo(dtype)
    if not info.min <= value <= info.max:
        raise ValueError(
            f"padding_id must be representable in the ids dtype {np.dtype(dtype)} "
            f"({info.min}..{info.max}), got {value}"
        )
    return int(np.array(value, dtype=dtype).astype(np.int64))
