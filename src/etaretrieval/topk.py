"""Top-K retrieval by Hamming distance: on given keys, or fused with an id lookup."""

from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt

from ._device import placement
from ._validate import TopkCall, lookup_call, topk_call
from .cpu import topk as cpu_topk
from .ragged import check_offsets_alone, topk_hamming_lookup_ragged, topk_hamming_ragged

__all__ = ["topk_hamming", "topk_hamming_lookup"]

def topk_hamming(
    query: Any,
    keys: Any,
    k: int,
    *,
    lengths: Any = None,
    mask: Any = None,
    padding_side: str = "right",
    offsets: Any = None,
) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int32]]:
    """The ``k`` keys nearest to each query in Hamming distance.

    Parameters
    ----------
    query : array_like
        ``(B, W)`` uint64 target signatures.
    keys : array_like
        ``(B, L, W)`` uint64 behaviour signatures, or ``(L, W)`` shared by every
        row of the batch (many candidates against one sequence; not copied).
    k : int
        Number of positions to return per row, ``>= 0`` (may exceed ``L``;
        a ``k`` whose ``(B, k)`` results cannot be allocated is a
        :class:`ValueError`).
    lengths : array_like, optional
        ``(B,)`` integers in ``0..L``: only the prefix ``[0, lengths[b])`` of
        row ``b`` is valid (the last ``lengths[b]`` positions with
        ``padding_side="left"``).
    mask : array_like, optional
        ``(B, L)`` or ``(L,)`` bool: valid positions. Not together with ``lengths``.
    padding_side : {"right", "left"}, default "right"
        Where the padding of the rows given by ``lengths`` lies: after the
        valid positions (``"right"``) or before them (``"left"``: front-padded
        sequences, newest behaviour at ``L - 1``). Positions stay indices
        into the given axis either way.
    offsets : array_like, optional
        Ragged rows: ``(B + 1,)`` int32/int64 non-decreasing offsets into flat
        ``(T, W)`` keys, row ``b`` being ``keys[offsets[b]:offsets[b + 1]]``
        (Arrow semantics: ``offsets[0]`` may be above 0). Positions then count
        from each row's start; ``mask`` may be flat ``(T,)``; not together with
        ``lengths`` or ``padding_side``. See :func:`~etaretrieval.ragged.topk_hamming_ragged`.

    Returns
    -------
    idx : numpy.ndarray
        ``(B, k)`` int64 positions along the sequence axis.
    dist : numpy.ndarray
        ``(B, k)`` int32 Hamming distances.

    Notes
    -----
    Order: ascending distance; among equal distances the larger position (the
    more recent behaviour) first. The order is total, so the result is unique.
    Rows with fewer than ``k`` valid positions end in ``idx = -1``,
    ``dist = -1``.

    Device arrays (``__cuda_array_interface__``: CuPy, torch CUDA tensors,
    numba device arrays) run on the GPU and give results of the same library
    on the same device, identical to the CPU's; mixing host and device
    arguments is a :class:`ValueError`.

    Examples
    --------
    >>> import numpy as np, etaretrieval as er
    >>> query = np.array([[0b0000]], dtype=np.uint64)
    >>> keys = np.array([[0b0001], [0b0111], [0b0010], [0b0000]], dtype=np.uint64)
    >>> idx, dist = er.topk_hamming(query, keys, k=3)
    >>> idx, dist
    (array([[3, 2, 0]]), array([[0, 1, 1]], dtype=int32))

    Front-padded rows: the valid positions are the last ``lengths[b]``.

    >>> er.topk_hamming(query, keys, k=3, lengths=[2], padding_side="left")
    (array([[ 3,  2, -1]]), array([[ 0,  1, -1]], dtype=int32))
    """
    if offsets is not None:
        check_offsets_alone(lengths, padding_side)
        return topk_hamming_ragged(query, keys, k, offsets, mask=mask)
    device = placement(query=query, keys=keys, lengths=lengths, mask=mask)
    return _run(topk_call(query, keys, k, lengths, mask, padding_side), device)


def _run(call: TopkCall, device: bool) -> tuple[Any, Any]:
    """Hand a normalised call to the CUDA or the CPU driver."""
    if device:
        from .cuda import topk as cuda_topk

        return cuda_topk.run(call)
    return cpu_topk.run(call)


def topk_hamming_lookup(
    query: Any,
    ids: Any,
    table: Any,
    k: int,
    *,
    lengths: Any = None,
    mask: Any = None,
    padding_id: int | None = None,
    padding_side: str = "right",
    offsets: Any = None,
) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int32]]:
    """Fused serving path: item ids -> signature-table rows -> Hamming -> top-K.

    One pass over each sequence; the ``B x L x W`` signatures are never
    materialised and ids of any integer dtype are read without conversion.
    Shared ``(L,)`` ids (many targets against one sequence) are looked up
    once, into ``(L, W)`` signatures that every row then scans.

    Parameters
    ----------
    query : array_like
        ``(B, W)`` uint64 target signatures.
    ids : array_like
        ``(B, L)`` item ids, or ``(L,)`` shared by every row; any integer dtype.
    table : array_like
        ``(N, W)`` uint64 signature table (e.g. :attr:`SignatureTable.signatures`).
    k : int
        Number of positions to return per row, ``>= 0``.
    lengths, mask : array_like, optional
        Valid positions, as in :func:`topk_hamming`.
    padding_id : int, optional
        Positions holding this id are not valid (and never looked up).
    padding_side : {"right", "left"}, default "right"
        Side of the padding of rows given by ``lengths``, as in :func:`topk_hamming`.
    offsets : array_like, optional
        Ragged rows: ``(B + 1,)`` offsets into flat ``(T,)`` ids, as in
        :func:`topk_hamming` (see :func:`~etaretrieval.ragged.topk_hamming_lookup_ragged`); an
        invalid id is named by its row and its position in the row.

    Returns
    -------
    idx : numpy.ndarray
        ``(B, k)`` int64 positions along the sequence axis.
    dist : numpy.ndarray
        ``(B, k)`` int32 Hamming distances.

    Raises
    ------
    IndexError
        A valid position holds an id outside ``[0, N)``; the message names the
        first such ``(row, position)``. Invalid positions are never read.

    Notes
    -----
    The order of the results, the ``-1`` fill of short rows and the device
    dispatch are those of :func:`topk_hamming`: the result equals
    ``topk_hamming(query, table[ids], k, ...)`` with padding masked out.

    The common call (C-contiguous NumPy arrays, uint64 signatures, int64 or
    int32 ids, no ``lengths`` / ``mask`` / ``padding_id``, small enough for
    one thread) takes a fast path: one compiled entry that checks and
    computes, falling back to the general path (and its errors) on anything
    else. Other dtypes and layouts are brought to these before the kernels
    run (ids of other integer dtypes and non-contiguous arrays are copied),
    so an unusual argument never compiles a new kernel variant.

    Examples
    --------
    >>> import numpy as np, etaretrieval as er
    >>> table = np.array([[0b00], [0b01], [0b11]], dtype=np.uint64)
    >>> query = np.array([[0b11]], dtype=np.uint64)
    >>> ids = np.array([[2, 0, 1, 0, 2]])
    >>> er.topk_hamming_lookup(query, ids, table, k=2, padding_id=0)
    (array([[4, 0]]), array([[0, 0]], dtype=int32))
    """
    if offsets is not None:
        check_offsets_alone(lengths, padding_side)
        return topk_hamming_lookup_ragged(query, ids, table, k, offsets, mask=mask, padding_id=padding_id)
    if lengths is None and mask is None and padding_id is None and padding_side == "right":
        fast = cpu_topk.lookup_fast(query, ids, table, k)
        if fast is not None:
            return fast
    device = placement(query=query, ids=ids, table=table, lengths=lengths, mask=mask)
    return _run(lookup_call(query, ids, table, k, lengths, mask, padding_id, padding_side), device)
