"""Top-K retrieval over ragged histories: flat values plus ``(B + 1,)`` offsets.

Row ``b`` of a ragged batch is ``values[offsets[b] : offsets[b + 1]]``, the
layout of Arrow's ``ListArray``, TorchRec's ``JaggedTensor`` and
``torch.nested`` jagged tensors: the kernels read the flat values in place,
without a ``(B, L_max)`` block. The results are those of the padded functions
(:func:`etaretrieval.topk_hamming`, :func:`etaretrieval.topk_hamming_lookup`)
given the rows padded to a common length with ``lengths``, bit for bit.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt

from ._device import DeviceArray, placement
from ._validate import (
    DTypeError,
    _shape,
    as_array,
    as_padding,
    as_signatures,
    check_bucket_size,
    check_groups,
    check_k,
    check_keys_shape,
    check_table_shape,
    check_tau,
    is_integer_dtype,
)
from .cpu import ragged_sdim as host_sdim
from .cpu.ragged import split_offsets
from .cpu.ragged import topk_hamming as host_topk
from .cpu.ragged import topk_hamming_lookup as host_lookup

__all__ = ["topk_hamming_ragged", "topk_hamming_lookup_ragged", "sdim_group_sums_ragged", "sdim_pool_ragged",
           "sdim_buckets_ragged", "as_offsets", "offsets_error", "check_offsets_alone"]


def check_offsets_alone(lengths: Any = None, padding_side: Any = "right") -> None:
    """Refuse ``lengths`` or a ``padding_side`` other than ``"right"`` given together with ``offsets``.

    ``offsets`` gives each row's extent in the flat values; ``lengths`` and
    ``padding_side`` describe the valid part of padded rows, which ragged rows
    do not have.
    """
    if lengths is not None:
        raise ValueError(
            "pass either offsets (ragged rows: flat values and their (B + 1,) offsets) or lengths (padded rows), "
            "not both"
        )
    if not (isinstance(padding_side, str) and padding_side == "right"):
        raise ValueError(
            f"padding_side applies to padded rows; with offsets (ragged rows, no padding) it must be left out, "
            f"got padding_side={padding_side!r}"
        )


def as_offsets(offsets: Any, batch: int | None, total: int, values: str) -> tuple[np.ndarray, np.ndarray]:
    """Check ``offsets`` for ``batch`` rows of the ``total`` flat ``values``: ``(starts, lens)``, int64 ``(batch,)``.

    ``offsets`` is ``(batch + 1,)`` of an integer dtype (int32 or int64 as
    Arrow writes them), non-decreasing, from ``>= 0`` to ``<= total`` (Arrow
    semantics: ``offsets[0]`` may be above 0, values past ``offsets[-1]``
    belong to no row); ``batch=None`` takes the rows from ``offsets`` (any
    ``(B + 1,)``). A device array is copied to the host (``batch + 1``
    integers). Every error names ``offsets`` and its first bad entry.
    """
    o = as_array(offsets, "offsets")
    if isinstance(o, DeviceArray):
        from .cuda import _backend

        o = np.asarray(_backend.as_numba(o).copy_to_host())
    if o.size and not is_integer_dtype(o.dtype):  # (an empty list is float64 to NumPy: its shape is wrong)
        raise DTypeError(f"offsets must have an integer dtype (int32 or int64), got dtype {o.dtype}")
    if batch is None and (o.ndim != 1 or o.size == 0):
        raise ValueError(f"offsets must have shape (B + 1,) for B rows, got shape {_shape(o.shape)}")
    if batch is not None and o.shape != (batch + 1,):
        raise ValueError(
            f"offsets must have shape {_shape((batch + 1,))} (one more than the {batch} rows of query), "
            f"got shape {_shape(o.shape)}"
        )
    ok, starts, lens = split_offsets(o, total)
    if not ok:
        raise offsets_error(o, total, values)
    return starts, lens


def offsets_error(offsets: np.ndarray, total: int, values: str) -> ValueError:
    """The error for integer ``(B + 1,)`` ``offsets`` that are negative, decreasing or past ``total``, in that order."""
    o = offsets
    if o[0] < 0:
        return ValueError(f"offsets must be >= 0, got offsets[0] = {o[0]}")
    down = np.flatnonzero(o[1:] < o[:-1])
    if down.size:
        i = int(down[0]) + 1
        return ValueError(f"offsets must be non-decreasing, got offsets[{i}] = {o[i]} < offsets[{i - 1}] = {o[i - 1]}")
    i = int(np.flatnonzero(o > total)[0])
    return ValueError(f"offsets must lie within the {total} entries of {values}, got offsets[{i}] = {o[i]}")


def _flat_mask(mask: Any, total: int) -> Any:
    """``mask`` checked to be ``(total,)`` bool (a :class:`DeviceArray` passes through), or ``None``."""
    if mask is None:
        return None
    m = as_array(mask, "mask")
    if m.dtype != np.bool_:
        raise DTypeError(f"mask must have dtype bool, got dtype {m.dtype}")
    if m.shape != (total,):
        raise ValueError(
            f"mask must have shape {_shape((total,))} (one entry per flat value, like the values offsets index), "
            f"got shape {_shape(m.shape)}"
        )
    return m


def topk_hamming_ragged(
    query: Any, keys: Any, k: int, offsets: Any, *, mask: Any = None
) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int32]]:
    """The ``k`` keys nearest to each query in Hamming distance, over ragged rows of keys.

    Parameters
    ----------
    query : array_like
        ``(B, W)`` uint64 target signatures.
    keys : array_like
        ``(T, W)`` uint64 behaviour signatures of every row, back to back.
    k : int
        Number of positions to return per row, ``>= 0``.
    offsets : array_like
        ``(B + 1,)`` integers (int32 or int64), non-decreasing, at most ``T``:
        row ``b`` is ``keys[offsets[b]:offsets[b + 1]]``. ``offsets[0]`` may be
        above 0 and keys past ``offsets[-1]`` belong to no row (Arrow's
        ``ListArray`` offsets, TorchRec's ``JaggedTensor.offsets()``).
    mask : array_like, optional
        ``(T,)`` bool: valid keys (aligned with ``keys``).

    Returns
    -------
    idx : numpy.ndarray
        ``(B, k)`` int64 positions, counted from the start of each row.
    dist : numpy.ndarray
        ``(B, k)`` int32 Hamming distances.

    Notes
    -----
    Order, ``-1`` fill and devices as in :func:`etaretrieval.topk_hamming`:
    distance ascending, among equal distances the larger position (newer)
    first. The result equals ``topk_hamming`` on the rows padded to a common
    length with ``lengths = numpy.diff(offsets)``. Long rows are shared by
    the library's threads, so one long history does not hold up a batch.

    Examples
    --------
    >>> import numpy as np, etaretrieval as er
    >>> from etaretrieval.ragged import topk_hamming_ragged
    >>> query = np.array([[0b00], [0b11]], dtype=np.uint64)
    >>> keys = np.array([[0b01], [0b00], [0b11], [0b10], [0b11]], dtype=np.uint64)
    >>> topk_hamming_ragged(query, keys, 2, offsets=[0, 2, 5])
    (array([[1, 0],
           [2, 0]]), array([[0, 1],
           [0, 0]], dtype=int32))
    """
    device = placement(query=query, keys=keys, offsets=offsets, mask=mask)
    q = as_signatures("query", query, (2,), "(B, W)")
    kk = as_signatures("keys", keys, (2,), "(T, W): the flat keys of every row")
    k = check_k(k)
    batch, words = q.shape
    check_keys_shape(kk.shape, batch, words)
    starts, lens = as_offsets(offsets, batch, kk.shape[0], "keys")
    m = _flat_mask(mask, kk.shape[0])
    if device:
        from .cuda.ragged import topk_hamming as device_topk

        return device_topk(q, kk, k, starts, lens, m)
    return host_topk(q, kk, k, starts, lens, m)


def _flat_ids(ids: Any) -> Any:
    """``ids`` checked to be a flat ``(T,)`` array of an integer dtype."""
    i = as_array(ids, "ids")
    if not is_integer_dtype(i.dtype):
        raise DTypeError(f"ids must have an integer dtype, got dtype {i.dtype}")
    if i.ndim != 1:
        raise ValueError(f"ids must have shape (T,): the flat ids of every row, got shape {_shape(i.shape)}")
    return i


def topk_hamming_lookup_ragged(
    query: Any, ids: Any, table: Any, k: int, offsets: Any, *, mask: Any = None, padding_id: int | None = None
) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int32]]:
    """Fused ids -> signature-table rows -> Hamming -> top-K over ragged rows of ids.

    Parameters
    ----------
    query : array_like
        ``(B, W)`` uint64 target signatures.
    ids : array_like
        ``(T,)`` item ids of every row, back to back; any integer dtype.
    table : array_like
        ``(N, W)`` uint64 signature table.
    k : int
        Number of positions to return per row, ``>= 0``.
    offsets : array_like
        ``(B + 1,)`` row offsets into ``ids``, as in :func:`topk_hamming_ragged`.
    mask : array_like, optional
        ``(T,)`` bool: valid positions (aligned with ``ids``).
    padding_id : int, optional
        Positions holding this id are not valid (and never looked up).

    Returns
    -------
    idx : numpy.ndarray
        ``(B, k)`` int64 positions, counted from the start of each row.
    dist : numpy.ndarray
        ``(B, k)`` int32 Hamming distances.

    Raises
    ------
    IndexError
        A valid position holds an id outside ``[0, N)``; the message names
        the first one as ``ids[row, position]``, the position counted from
        the row's start (as for padded rows).

    Examples
    --------
    >>> import numpy as np
    >>> from etaretrieval.ragged import topk_hamming_lookup_ragged
    >>> table = np.array([[0b00], [0b01], [0b11]], dtype=np.uint64)
    >>> query = np.array([[0b11], [0b00]], dtype=np.uint64)
    >>> ids = np.array([2, 0, 1, 0, 2, 1])
    >>> topk_hamming_lookup_ragged(query, ids, table, 2, offsets=[0, 3, 6], padding_id=0)
    (array([[0, 2],
           [2, 1]]), array([[0, 1],
           [1, 2]], dtype=int32))
    """
    device = placement(query=query, ids=ids, table=table, offsets=offsets, mask=mask)
    q = as_signatures("query", query, (2,), "(B, W)")
    t = as_signatures("table", table, (2,), "(N, W)")
    k = check_k(k)
    batch, words = q.shape
    check_table_shape(t.shape, words)
    i = _flat_ids(ids)
    pad = as_padding(padding_id, i.dtype)
    starts, lens = as_offsets(offsets, batch, i.shape[0], "ids")
    m = _flat_mask(mask, i.shape[0])
    if device:
        from .cuda.ragged import topk_hamming_lookup as device_lookup

        return device_lookup(q, i, t, k, starts, lens, m, pad)
    return host_lookup(q, i, t, k, starts, lens, m, pad)


_FLOATS = (np.dtype(np.float32), np.dtype(np.float64))


def _flat_rows(keys: Any, values: Any, tau: Any, bits: Any) -> tuple[Any, Any, int, int]:
    """Checked flat ``(keys, values, tau, groups)`` of a ragged SDIM call: ``(T, W)`` keys, ``(T, d)`` values."""
    kk = as_signatures("keys", keys, (2,), "(T, W): the flat keys of every row")
    v = as_array(values, "values")
    if v.dtype not in _FLOATS:
        raise DTypeError(f"values must have dtype float32 or float64, got dtype {v.dtype}")
    if v.ndim != 2 or v.shape[0] != kk.shape[0]:
        raise ValueError(f"values must have shape ({kk.shape[0]}, d), one row per key, got shape {_shape(v.shape)}")
    tau = check_tau(tau)
    return kk, v, tau, check_groups(kk.shape[1], tau, bits)


def _sdim_inputs(query: Any, keys: Any, values: Any, tau: Any, bits: Any, offsets: Any, mask: Any
                 ) -> tuple[Any, Any, Any, int, int, np.ndarray, np.ndarray, Any]:
    """Checked ``(query, keys, values, tau, groups, starts, lens, mask)`` of a ragged SDIM call."""
    q = as_signatures("query", query, (2,), "(B, W)")
    kk = as_signatures("keys", keys, (2,), "(T, W): the flat keys of every row")
    batch, words = q.shape
    check_keys_shape(kk.shape, batch, words)
    kk, v, tau, groups = _flat_rows(kk, values, tau, bits)
    starts, lens = as_offsets(offsets, batch, kk.shape[0], "keys")
    return q, kk, v, tau, groups, starts, lens, _flat_mask(mask, kk.shape[0])


def sdim_group_sums_ragged(
    query: Any, keys: Any, values: Any, tau: int, offsets: Any, *, bits: int | None = None, mask: Any = None
) -> npt.NDArray[np.floating]:
    """The SDIM group sums over ragged rows: :func:`etaretrieval.sdim_group_sums` of rows given by offsets.

    Parameters
    ----------
    query : array_like
        ``(B, W)`` uint64 target signatures.
    keys : array_like
        ``(T, W)`` uint64 behaviour signatures of every row, back to back.
    values : array_like
        ``(T, d)`` float32/float64, one row per key.
    tau : int
        Bits per group, ``1..16``; must divide ``bits``.
    offsets : array_like
        ``(B + 1,)`` row offsets into ``keys`` and ``values``, as in
        :func:`topk_hamming_ragged`.
    bits : int, optional
        Signature length (default ``64 W``); ``G = bits / tau`` groups.
    mask : array_like, optional
        ``(T,)`` bool: valid positions.

    Returns
    -------
    numpy.ndarray
        ``(B, G, d)`` of the dtype of ``values``, equal bit for bit to the
        padded function's on the rows padded with ``lengths``. For device
        arrays, a device array of the same library, equal to the CPU's.

    Examples
    --------
    >>> import numpy as np
    >>> from etaretrieval.ragged import sdim_group_sums_ragged
    >>> keys = np.array([[0b01], [0b11], [0b00]], dtype=np.uint64)
    >>> values = np.array([[1.0], [2.0], [4.0]])
    >>> query = np.array([[0b01], [0b00]], dtype=np.uint64)
    >>> sdim_group_sums_ragged(query, keys, values, 1, [0, 2, 3], bits=2)[:, :, 0]
    array([[3., 1.],
           [4., 4.]])
    """
    device = placement(query=query, keys=keys, values=values, offsets=offsets, mask=mask)
    q, kk, v, tau, groups, starts, lens, m = _sdim_inputs(query, keys, values, tau, bits, offsets, mask)
    if device:
        from .cuda.ragged import sdim_group_sums as device_sums

        return device_sums(q, kk, v, tau, groups, starts, lens, m)
    return host_sdim.sdim_group_sums(q, kk, v, tau, groups, starts, lens, m)


def sdim_pool_ragged(
    query: Any, keys: Any, values: Any, tau: int, offsets: Any, *, bits: int | None = None, mask: Any = None
) -> npt.NDArray[np.floating]:
    """SDIM user-interest vectors over ragged rows: :func:`etaretrieval.sdim_pool` of rows given by offsets.

    Parameters
    ----------
    query, keys, values, tau, offsets, bits, mask
        As in :func:`sdim_group_sums_ragged`.

    Returns
    -------
    numpy.ndarray
        ``(B, d)`` of the dtype of ``values``, equal bit for bit to the padded
        function's on the rows padded with ``lengths``. For device arrays, a
        device array of the same library, equal to the CPU's.

    Examples
    --------
    >>> import numpy as np
    >>> from etaretrieval.ragged import sdim_pool_ragged
    >>> keys = np.array([[0b01], [0b11], [0b10]], dtype=np.uint64)
    >>> values = np.array([[3.0, 4.0], [0.0, 2.0], [1.0, 0.0]])
    >>> sdim_pool_ragged(np.array([[0b01]], dtype=np.uint64), keys, values, 1, [0, 3], bits=2)
    array([[0.5236068, 0.8472136]])
    """
    device = placement(query=query, keys=keys, values=values, offsets=offsets, mask=mask)
    q, kk, v, tau, groups, starts, lens, m = _sdim_inputs(query, keys, values, tau, bits, offsets, mask)
    if device:
        from .cuda.ragged import sdim_pool as device_pool

        return device_pool(q, kk, v, tau, groups, starts, lens, m)
    return host_sdim.sdim_pool(q, kk, v, tau, groups, starts, lens, m)


def sdim_buckets_ragged(
    keys: Any, values: Any, tau: int, offsets: Any, *, bits: int | None = None, mask: Any = None
) -> npt.NDArray[np.floating]:
    """SDIM bucket summaries of ragged rows: :func:`etaretrieval.sdim_buckets` of rows given by offsets.

    Parameters
    ----------
    keys, values, tau, bits, mask
        As in :func:`sdim_group_sums_ragged`. The summary holds
        ``G * 2**tau * d`` values per row, at most
        :data:`etaretrieval.sdim.MAX_BUCKET_ELEMENTS`.
    offsets : array_like
        ``(B + 1,)`` int32/int64 row offsets into ``keys`` and ``values``, as
        in :func:`topk_hamming_ragged`; ``B`` is read from them.

    Returns
    -------
    numpy.ndarray
        ``(B, G, 2**tau, d)`` of the dtype of ``values``: ``out[b, g, c, :]``
        is the sum (float64 in position order, rounded) of row ``b``'s valid
        values whose group-``g`` code is ``c``, equal bit for bit to
        :func:`etaretrieval.sdim_buckets` on that row alone (or on the rows
        padded with ``lengths``). For device arrays, a device array of the
        same library, equal to the CPU's.

    Examples
    --------
    >>> import numpy as np
    >>> from etaretrieval.ragged import sdim_buckets_ragged
    >>> keys = np.array([[0b01], [0b11], [0b10]], dtype=np.uint64)
    >>> values = np.array([[3.0, 4.0], [0.0, 2.0], [1.0, 0.0]])
    >>> buckets = sdim_buckets_ragged(keys, values, 1, [0, 2, 3], bits=2)
    >>> buckets.shape
    (2, 2, 2, 2)
    >>> buckets[0, 0]                                         # row 0, group 0: code 1 <- keys 0, 1
    array([[0., 0.],
           [3., 6.]])
    """

    device = placement(keys=keys, values=values, offsets=offsets, mask=mask)
    kk, v, tau, groups = _flat_rows(keys, values, tau, bits)
    check_bucket_size(groups, tau, v.shape[1])
    starts, lens = as_offsets(offsets, None, kk.shape[0], "keys")
    m = _flat_mask(mask, kk.shape[0])
    if device:
        from .cuda.ragged import sdim_buckets as device_buckets

        return device_buckets(kk, v, tau, groups, starts, lens, m)
    return host_sdim.sdim_buckets(kk, v, tau, groups, starts, lens, m)
