"""The one validation layer in front of every kernel.

Each check names the argument and states what was expected; it never copies
nor modifies the caller's data (apart from tiny per-row vectors such as
``lengths``). Device arrays (see :mod:`etaretrieval._device`) are checked from
their ``__cuda_array_interface__`` (shape and dtype) without copying them to
the host; their value checks (``lengths`` range, id range) run inside the CUDA
kernels and raise the same errors, built by the ``*_error`` functions here.

A top-K call is normalised once, by :func:`topk_call` / :func:`lookup_call`
(the NumPy API) or by the torch ops' own checks, into a :class:`TopkCall`
that the CPU driver (:func:`etaretrieval.cpu.topk.run`) or the CUDA driver
(:func:`etaretrieval.cuda.topk.run`) executes. Normalising is device-agnostic:
it allocates nothing on a device and launches nothing; what is specific to a
backend (left padding, layouts, the value checks) belongs to its driver.
This module imports no backend.
"""

from __future__ import annotations

import operator
import sys
from typing import Any

import numpy as np

from ._device import describe
from .config import MAX_BITS

__all__ = [
    "DTypeError",
    "NonFiniteError",
    "MAX_K",
    "MAX_PLANE_ENTRIES",
    "PADDING_SIDES",
    "as_array",
    "is_integer_dtype",
    "as_signatures",
    "check_signature_ndim",
    "check_keys_shape",
    "check_table_shape",
    "check_ids_shape",
    "check_x_shape",
    "check_either",
    "check_lengths_shape",
    "check_mask_shape",
    "check_k",
    "check_bits",
    "check_dim",
    "check_plane_size",
    "check_planes_finite",
    "check_padding_side",
    "TopkCall",
    "topk_call",
    "lookup_call",
    "valid_positions",
    "host_lengths",
    "results",
    "results_error",
    "validity",
    "check_ids",
    "as_padding",
    "ids_error",
    "lengths_error",
    "nonfinite_error",
    "valid_nonfinite_error",
    "weight_nonfinite_error",
]

MAX_WORDS = MAX_BITS // 64

#: Largest ``k``: the ``(B, k)`` int64 results are NumPy arrays, whose size in bytes must fit in an intp
#: (``2**60 - 1`` on 64-bit platforms), even when ``B`` is 0.
MAX_K = int(np.iinfo(np.intp).max) // 8

#: Largest ``dim * bits`` of :func:`etaretrieval.hyperplanes` (``2**28`` float32 entries, 1 GiB).
MAX_PLANE_ENTRIES = 1 << 28

#: The values of ``padding_side``: where the padding of a sequence given by ``lengths`` lies.
PADDING_SIDES = ("right", "left")


class DTypeError(TypeError, ValueError):
    """An argument has the wrong dtype.

    Subclasses both :class:`TypeError` (the conventional exception for a wrong
    type) and :class:`ValueError` (what the API contract promises for bad
    signatures), so either ``except`` clause catches it.

    Examples
    --------
    >>> import numpy as np, etaretrieval as er
    >>> try:
    ...     er.hamming(np.zeros(1, dtype=np.int64), np.zeros(1, dtype=np.uint64))
    ... except ValueError as err:  # or TypeError
    ...     print(type(err).__name__, err)
    DTypeError a must hold packed signatures of dtype uint64, got dtype int64
    """


def _shape(shape: tuple[int, ...]) -> str:
    return "(" + ", ".join(str(s) for s in shape) + ("," if len(shape) == 1 else "") + ")"


def _torch_tensor(a: Any) -> bool:
    torch = sys.modules.get("torch")
    return torch is not None and isinstance(a, torch.Tensor)


def as_array(a: Any, name: str = "the argument") -> Any:
    """Argument ``a`` (called ``name`` in messages) as a NumPy array, or its :class:`DeviceArray` description.

    Device arrays are described without copying. Host data goes through
    :func:`numpy.asarray`; a non-native byte order (e.g. big-endian data read
    from a file) is converted to the native one, the only copy made here. A
    CPU ``torch.Tensor`` is a :class:`TypeError` that points to the torch ops
    (the NumPy API returns NumPy arrays, the ops tensors).
    """
    d = describe(a)
    if d is not None:
        return d
    if _torch_tensor(a):
        raise TypeError(
            f"{name} is a torch.Tensor on {a.device}: the NumPy API takes NumPy arrays (and CUDA device arrays); "
            "for tensors use the torch ops (import etaretrieval.torch, then torch.ops.etaretrieval.<op>), "
            f"or pass {name}.detach().numpy()"
        )
    arr = np.asarray(a)
    if not arr.dtype.isnative:
        arr = arr.astype(arr.dtype.newbyteorder("="))
    return arr


def is_integer_dtype(dtype: np.dtype) -> bool:
    """Whether ``dtype`` is a signed or unsigned integer dtype (not bool, timedelta64 nor datetime64)."""
    return np.dtype(dtype).kind in "iu"


def as_signatures(name: str, a: Any, ndims: tuple[int, ...], what: str) -> Any:
    """Check a packed-signature array: uint64, ``ndim`` in ``ndims``, 1..16 words.

    Returns the NumPy array, or the :class:`DeviceArray` of a device array.
    """
    arr = as_array(a, name)
    if arr.dtype != np.uint64:
        hint = ""
        if isinstance(a, (list, tuple)):
            hint = f" (a Python list has no uint64 dtype: pass numpy.asarray({name}, dtype=numpy.uint64))"
        raise DTypeError(f"{name} must hold packed signatures of dtype uint64, got dtype {arr.dtype}{hint}")
    check_signature_ndim(name, arr.shape, ndims, what)
    w = arr.shape[-1]
    if not 1 <= w <= MAX_WORDS:
        raise ValueError(
            f"{name} must have 1..{MAX_WORDS} signature words in its last axis "
            f"(1..{MAX_BITS} bits), got shape {_shape(arr.shape)}"
        )
    return arr


def check_signature_ndim(name: str, shape: tuple[int, ...], ndims: tuple[int, ...], what: str) -> None:
    """Refuse a signature array ``name`` whose number of axes is not in ``ndims`` (``what`` spells the shape)."""
    if len(shape) not in ndims:
        raise ValueError(f"{name} must have shape {what}, got shape {_shape(shape)}")


def check_keys_shape(shape: tuple[int, ...], batch: int, words: int) -> None:
    """Refuse ``keys`` of a shape other than ``(batch, L, words)`` or shared ``(L, words)``."""
    if shape[-1] != words:
        raise ValueError(f"keys must have W = {words} words like query, got shape {_shape(shape)}")
    if len(shape) == 3 and shape[0] != batch:
        raise ValueError(f"keys must have shape ({batch}, L, {words}) or (L, {words}), got shape {_shape(shape)}")


def check_table_shape(shape: tuple[int, ...], words: int) -> None:
    """Refuse a signature ``table`` whose rows do not have ``words`` words like ``query``."""
    if shape[1] != words:
        raise ValueError(f"table must have W = {words} words like query, got shape {_shape(shape)}")


def check_ids_shape(shape: tuple[int, ...], batch: int) -> None:
    """Refuse ``ids`` of a shape other than ``(batch, L)`` or shared ``(L,)``."""
    if len(shape) not in (1, 2) or (len(shape) == 2 and shape[0] != batch):
        raise ValueError(
            f"ids must have shape (B, L) with B = {batch} (the rows of query) or (L,), got shape {_shape(shape)}"
        )


def check_x_shape(shape: tuple[int, ...], planes: tuple[int, ...]) -> None:
    """Refuse embeddings ``x`` whose last axis is not the ``dim`` of ``(dim, bits)`` ``planes``."""
    if len(shape) < 1 or shape[-1] != planes[0]:
        raise ValueError(
            f"x must have shape (..., {planes[0]}) to match planes {_shape(planes)}, got shape {_shape(shape)}"
        )


def check_either(lengths: Any, mask: Any) -> None:
    """Refuse ``lengths`` and ``mask`` given together."""
    if lengths is not None and mask is not None:
        raise ValueError("pass either lengths or mask, not both")


def check_lengths_shape(shape: tuple[int, ...], batch: int) -> None:
    """Refuse ``lengths`` of a shape other than ``(batch,)``."""
    if shape != (batch,):
        raise ValueError(f"lengths must have shape {_shape((batch,))}, got shape {_shape(shape)}")


def check_mask_shape(shape: tuple[int, ...], batch: int, length: int) -> None:
    """Refuse a ``mask`` of a shape other than ``(batch, length)`` or shared ``(length,)``."""
    if shape not in ((batch, length), (length,)):
        raise ValueError(
            f"mask must have shape {_shape((batch, length))} or {_shape((length,))}, got shape {_shape(shape)}"
        )


def _as_int(name: str, value: Any) -> int:
    if isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{name} must be an integer, got bool {value!r}")
    try:
        return operator.index(value)
    except TypeError:
        raise TypeError(f"{name} must be an integer, got {type(value).__name__} {value!r}") from None


def check_k(k: Any) -> int:
    """``k`` as a Python int in ``0..MAX_K``."""
    k = _as_int("k", k)
    if k < 0:
        raise ValueError(f"k must be >= 0, got {k}")
    if k > MAX_K:
        raise ValueError(f"k must be at most {MAX_K} (the longest int64 array axis), got {k}")
    return k


def results_error(batch: int, k: int) -> ValueError:
    """The error for ``(batch, k)`` top-K results that cannot be allocated."""
    size = batch * k * (8 + 4)
    return ValueError(
        f"k = {k} is too large: the ({batch}, k) results (int64 positions and int32 distances, {size:.3g} bytes) "
        "cannot be allocated; slots beyond the valid positions of a row only hold -1, so k need not exceed L"
    )


def results(batch: int, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Uninitialised ``(batch, k)`` int64 positions and int32 distances; a :func:`results_error` if too large."""
    try:
        return np.empty((batch, k), dtype=np.int64), np.empty((batch, k), dtype=np.int32)
    except (ValueError, MemoryError):
        raise results_error(batch, k) from None


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


def check_plane_size(dim: int, bits: int) -> None:
    """Refuse ``(dim, bits)`` hyperplanes of more than :data:`MAX_PLANE_ENTRIES` entries, naming ``dim``."""
    if dim * bits > MAX_PLANE_ENTRIES:
        raise ValueError(
            f"dim must be at most {MAX_PLANE_ENTRIES // bits} for bits = {bits} (dim * bits at most 2**28 "
            f"hyperplane entries, 1 GiB of float32), got dim = {dim}"
        )


def check_planes_finite(planes: np.ndarray) -> None:
    """Refuse host hyperplanes holding a NaN or an infinity."""
    if not np.isfinite(planes).all():
        raise ValueError("planes must be finite, got a NaN or an infinity")


def check_padding_side(padding_side: Any) -> str:
    """``padding_side``, checked to be ``"right"`` or ``"left"``."""
    if not isinstance(padding_side, str) or padding_side not in PADDING_SIDES:
        raise ValueError(f"padding_side must be 'right' or 'left', got {padding_side!r}")
    return padding_side


def lengths_error(length: int, row: int, value: int) -> ValueError:
    """The error for ``lengths[row] = value`` outside ``0..length``."""
    return ValueError(f"lengths must lie in 0..{length}, got lengths[{row}] = {value}")


def ids_error(row: int, pos: int, value: Any, nrows: int, *, shared: bool = False) -> IndexError:
    """The error for a valid position ``(row, pos)`` holding an id ``value`` outside ``[0, nrows)``.

    For shared ``(L,)`` ids the message names ``ids[pos]`` (first met in batch row ``row``).
    """
    where = f"ids[{pos}] (shared, met in batch row {row})" if shared else f"ids[{row}, {pos}]"
    return IndexError(f"{where} = {value} is outside the table's rows [0, {nrows})")


class NonFiniteError(ValueError):
    """A row of an input to hash holds a NaN or an infinity; ``where`` is its index tuple over the leading axes."""

    def __init__(self, message: str, where: tuple[int, ...]) -> None:
        super().__init__(message)
        self.where = where


def nonfinite_error(where: tuple[Any, ...]) -> NonFiniteError:
    """The error for a row (index tuple ``where`` over the leading axes of ``x``) holding a NaN or inf."""
    index = tuple(int(i) for i in where)
    row = f" in row {index}" if where else ""
    return NonFiniteError(
        f"x holds a non-finite value (NaN or inf){row}; pass check_finite=False to hash it anyway", index
    )


def valid_nonfinite_error(where: tuple[Any, ...]) -> NonFiniteError:
    """The error for a *valid* position ``where`` of ``x`` (hashed with a validity mask) holding a NaN or inf."""
    index = tuple(int(i) for i in where)
    if len(index) == 2:
        at = f"in row {index[0]} at position {index[1]}"
    else:
        at = f"in row {index[0]}" if len(index) == 1 else f"at {index}"
    return NonFiniteError(
        f"x holds a non-finite value (NaN or inf) {at}, a valid one (rows that are masked or padding are "
        "not checked); pass check_finite=False to hash it anyway",
        index,
    )


def weight_nonfinite_error(row: int) -> NonFiniteError:
    """The error of :class:`SignatureTable` for row ``row`` of ``weight`` holding a NaN or inf."""
    return NonFiniteError(
        f"weight holds a non-finite value (NaN or inf) in row {row}; "
        "pass check_finite=False to SignatureTable to hash such rows anyway",
        (row,),
    )


def valid_positions(lengths: Any, mask: Any, batch: int, length: int) -> tuple[Any, Any]:
    """``(lengths, mask)`` of a ``(batch, length)`` sequence, their dtypes and shapes checked; values untouched.

    ``lengths`` comes back as a ``(batch,)`` integer array (or the
    :class:`DeviceArray` of a device array), ``mask`` as a ``(batch, length)``
    or ``(length,)`` bool array, either ``None`` when not given. The range of
    ``lengths`` is checked where the values are: :func:`host_lengths` on the
    host, the kernels on a device.
    """
    if lengths is None and mask is None:
        return None, None
    check_either(lengths, mask)
    if mask is not None:
        m = as_array(mask, "mask")
        if m.dtype != np.bool_:
            raise DTypeError(f"mask must have dtype bool, got dtype {m.dtype}")
        check_mask_shape(m.shape, batch, length)
        return None, m
    n = as_array(lengths, "lengths")
    if isinstance(n, np.ndarray) and n.size == 0:  # lengths=[] for an empty batch (float64 to NumPy)
        n = n.astype(np.int64)
    if not is_integer_dtype(n.dtype):
        raise DTypeError(f"lengths must have an integer dtype, got dtype {n.dtype}")
    check_lengths_shape(n.shape, batch)
    return n, None


def host_lengths(lengths: np.ndarray | None, batch: int, length: int) -> np.ndarray:
    """Host ``lengths`` (checked by :func:`valid_positions`) as a fresh ``(batch,)`` int64 array in ``0..length``.

    ``None`` gives ``length`` for every row; an entry outside ``0..length``
    is the :func:`lengths_error` of the first such row.
    """
    if lengths is None:
        return np.full(batch, length, dtype=np.int64)
    if lengths.size:
        lo, hi = lengths.min(), lengths.max()
        if lo < 0 or hi > length:
            bad = int(np.flatnonzero((lengths < 0) | (lengths > length))[0])
            raise lengths_error(length, bad, int(lengths[bad]))
    return lengths.astype(np.int64)


def validity(lengths: Any, mask: Any, batch: int, length: int, *, device: bool = False) -> tuple[Any, Any]:
    """Normalise ``lengths`` / ``mask`` of a right-padded ``(batch, length)`` sequence (the SDIM functions).

    Returns ``(lengths, mask)``: ``lengths`` a fresh ``(batch,)`` int64 array
    (all ``length`` when not given) and ``mask`` a ``(batch, length)`` bool view
    (broadcast without copying when given as ``(length,)``) or ``None``. With
    ``device=True`` (device arrays) only dtypes and shapes are checked and the
    :class:`DeviceArray` descriptions (or ``None``) come back as given; the
    kernels check the range of ``lengths``.
    """
    n, m = valid_positions(lengths, mask, batch, length)
    if device:
        return n, m
    return host_lengths(n, batch, length), (None if m is None else np.broadcast_to(m, (batch, length)))


def check_ids(ids: Any, batch: int) -> Any:
    """Item ids checked: any integer dtype, ``(batch, L)`` or shared ``(L,)``; returned as an array as given.

    A device array's :class:`DeviceArray` description is returned as given.
    """
    arr = as_array(ids, "ids")
    if not is_integer_dtype(arr.dtype):
        raise DTypeError(f"ids must have an integer dtype, got dtype {arr.dtype}")
    if arr.ndim != 1:
        check_ids_shape(arr.shape, batch)
    return arr


class TopkCall:
    """One normalised top-K call, for a backend's driver.

    Built by :func:`topk_call` / :func:`lookup_call` (NumPy arrays, or the
    :class:`DeviceArray` descriptions of device arrays) or by the torch ops
    (NumPy views of CPU tensors, or CUDA tensors as they are); every shape
    and dtype is checked, no value is (the drivers check ``lengths`` and ids
    where the values are).

    Attributes
    ----------
    query : array
        ``(B, W)`` uint64 signatures (int64 bit patterns for CUDA tensors).
    keys : array or None
        ``(B, L, W)`` or shared ``(L, W)`` signatures; ``None`` for a lookup.
    ids, table : array or None
        ``(B, L)`` or shared ``(L,)`` integer ids into the ``(N, W)`` table;
        ``None`` unless a lookup.
    k : int
        Results per row, in ``0..MAX_K``.
    lengths : array or None
        ``(B,)`` integer valid lengths, not yet range-checked.
    mask : array or None
        ``(B, L)`` or shared ``(L,)`` bool valid positions.
    pad : int or None
        The padding id as the int64 bit pattern of its value in the ids' dtype.
    left : bool
        ``lengths`` count the valid positions at the end of each row (front padding).
    """

    __slots__ = ("query", "keys", "ids", "table", "k", "lengths", "mask", "pad", "left")

    def __init__(self, query: Any, keys: Any, ids: Any, table: Any, k: int, lengths: Any = None, mask: Any = None,
                 pad: int | None = None, left: bool = False) -> None:
        self.query = query
        self.keys = keys
        self.ids = ids
        self.table = table
        self.k = k
        self.lengths = lengths
        self.mask = mask
        self.pad = pad
        self.left = left

    @property
    def batch(self) -> int:
        """``B``, the rows of ``query``."""
        return int(self.query.shape[0])

    @property
    def length(self) -> int:
        """``L``, the positions of each sequence."""
        return int(self.ids.shape[-1] if self.keys is None else self.keys.shape[-2])

    @property
    def words(self) -> int:
        """``W``, the words of each signature."""
        return int(self.query.shape[1])

    def __repr__(self) -> str:
        shapes = ", ".join(f"{name}={tuple(getattr(self, name).shape)}" for name in ("query", "keys", "ids", "table",
                                                                                     "lengths", "mask")
                           if getattr(self, name) is not None)
        return f"TopkCall({shapes}, k={self.k}, pad={self.pad}, left={self.left})"


def topk_call(query: Any, keys: Any, k: Any, lengths: Any, mask: Any, padding_side: Any) -> TopkCall:
    """The :class:`TopkCall` of :func:`etaretrieval.topk_hamming` (host or device arrays, not mixed)."""
    q = as_signatures("query", query, (2,), "(B, W)")
    kk = as_signatures("keys", keys, (2, 3), "(B, L, W) or (L, W)")
    k = check_k(k)
    batch, words = q.shape
    check_keys_shape(kk.shape, batch, words)
    left = check_padding_side(padding_side) == "left"
    n, m = valid_positions(lengths, mask, batch, kk.shape[-2])
    return TopkCall(q, kk, None, None, k, n, m, None, left)


def lookup_call(query: Any, ids: Any, table: Any, k: Any, lengths: Any, mask: Any, padding_id: Any,
                padding_side: Any) -> TopkCall:
    """The :class:`TopkCall` of :func:`etaretrieval.topk_hamming_lookup` (host or device arrays, not mixed)."""
    q = as_signatures("query", query, (2,), "(B, W)")
    t = as_signatures("table", table, (2,), "(N, W)")
    k = check_k(k)
    batch, words = q.shape
    check_table_shape(t.shape, words)
    i = check_ids(ids, batch)
    pad = as_padding(padding_id, i.dtype)
    left = check_padding_side(padding_side) == "left"
    n, m = valid_positions(lengths, mask, batch, i.shape[-1])
    return TopkCall(q, None, i, t, k, n, m, pad, left)


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
    return value - (1 << 64) if value >= 1 << 63 else value  # uint64 ids past 2**63 wrap when cast to int64


#: Largest SDIM group width (bits per code): a group's bucket table has ``2**tau`` rows.
MAX_TAU = 16


#: Largest bucket summary per user, ``G * 2**tau * d`` values (256 MiB in float32).
MAX_BUCKET_ELEMENTS = 1 << 26


def check_bucket_size(groups: int, tau: int, d: int) -> None:
    """Refuse bucket summaries above :data:`etaretrieval.sdim.MAX_BUCKET_ELEMENTS` values per user."""
    size = groups * (1 << tau) * d
    if size > MAX_BUCKET_ELEMENTS:
        raise ValueError(
            f"tau = {tau} makes a bucket summary of G x 2**tau x d = {groups} x {1 << tau} x {d} = {size} values "
            f"per user, above the limit of {MAX_BUCKET_ELEMENTS}; use a smaller tau"
        )


def check_tau(tau: Any) -> int:
    """``tau`` as a Python int in ``1..MAX_TAU``."""
    tau = _as_int("tau", tau)
    if not 1 <= tau <= MAX_TAU:
        raise ValueError(f"tau must be in 1..{MAX_TAU}, got {tau}")
    return tau


def check_groups(words: int, tau: int, bits: Any) -> int:
    """The number of groups ``G = bits / tau`` of ``words``-word signatures; ``bits`` defaults to ``64 words``."""
    bits = 64 * words if bits is None else _as_int("bits", bits)
    if not 64 * (words - 1) < bits <= 64 * words:
        raise ValueError(
            f"bits must be in {64 * (words - 1) + 1}..{64 * words} for signatures of W = {words} words, got {bits}"
        )
    if bits % tau:
        raise ValueError(f"tau must divide bits: tau = {tau} does not divide bits = {bits}")
    return bits // tau
