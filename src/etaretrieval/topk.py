"""Top-K retrieval by Hamming distance: on given keys, or fused with an id lookup."""

from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt

from ._device import placement
from ._jit import kernel_input
from ._threads import parallel_rows
from ._validate import _shape, as_ids, as_padding, as_signatures, check_k, ids_error, results, validity
from .cpu.topk import topk_keys, topk_lookup

__all__ = ["topk_hamming", "topk_hamming_lookup"]

_NO_MASK = kernel_input(np.zeros((0, 0), dtype=np.bool_))



def _run_keys(q: np.ndarray, keys: np.ndarray, k: int, n: np.ndarray, m: np.ndarray | None,
              idx: np.ndarray, dist: np.ndarray) -> None:
    """:func:`topk_keys` over every row, on the calling thread or spread over the pool."""
    mask = _NO_MASK if m is None else kernel_input(m)
    batch, length, words = keys.shape
    q, keys = kernel_input(q, contiguous=True), kernel_input(keys)
    parallel_rows(lambda lo, hi: topk_keys(q, keys, k, n, mask, m is not None, lo, hi, idx, dist),
                  batch, batch * length * words)


def _gather_shared(
    ids: np.ndarray, table: np.ndarray, lengths: np.ndarray, mask: np.ndarray | None, pad: int | None
) -> tuple[np.ndarray, np.ndarray | None] | None:
    """The ``(L, W)`` signatures of a shared ``(L,)`` id sequence, gathered once for every row.

    Returns ``(keys, valid)`` with ``valid`` the ``(L,)`` mask of positions that
    are not masked out nor padding (``None``: all are), or ``None`` when a
    position valid in some row holds an id outside the table (the fused kernel
    then finds the first ``(row, position)`` to report). Positions valid in no
    row are never read: their keys are row 0's, and ``valid`` or ``lengths``
    exclude them.
    """
    readable = np.arange(ids.shape[0]) < lengths.max()
    valid = mask
    if pad is not None:
        not_pad = ids.astype(np.int64) != pad  # pad is the id's int64 bit pattern
        valid = not_pad if valid is None else valid & not_pad
    if valid is not None:
        readable &= valid
    inside = (ids >= 0) & (ids < table.shape[0])
    if table.shape[0] == 0 or not (inside | ~readable).all():
        return None
    return table[np.where(readable, ids, 0)], valid


def topk_hamming(
    query: Any, keys: Any, k: int, *, lengths: Any = None, mask: Any = None, padding_side: str = "right"
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
    device = placement(query=query, keys=keys, lengths=lengths, mask=mask)
    q = as_signatures("query", query, (2,), "(B, W)")
    kk = as_signatures("keys", keys, (2, 3), "(B, L, W) or (L, W)")
    k = check_k(k)
    batch, words = q.shape
    if kk.shape[-1] != words:
        raise ValueError(f"keys must have W = {words} words like query, got shape {_shape(kk.shape)}")
    if kk.ndim == 3 and kk.shape[0] != batch:
        raise ValueError(f"keys must have shape ({batch}, L, {words}) or (L, {words}), got shape {_shape(kk.shape)}")
    length = kk.shape[-2]
    if device:
        from .cuda.topk import topk_hamming as device_topk

        n, m = validity(lengths, mask, batch, length, device=True, padding_side=padding_side)
        return device_topk(q, kk, k, n, m)  # type: ignore[no-any-return]
    kk = np.broadcast_to(kk, (batch, length, words))
    n, m = validity(lengths, mask, batch, length, padding_side=padding_side)
    idx, dist = results(batch, k)
    if batch:
        _run_keys(q, kk, k, n, m, idx, dist)
    return idx, dist


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

    Examples
    --------
    >>> import numpy as np, etaretrieval as er
    >>> table = np.array([[0b00], [0b01], [0b11]], dtype=np.uint64)
    >>> query = np.array([[0b11]], dtype=np.uint64)
    >>> ids = np.array([[2, 0, 1, 0, 2]])
    >>> er.topk_hamming_lookup(query, ids, table, k=2, padding_id=0)
    (array([[4, 0]]), array([[0, 0]], dtype=int32))
    """
    device = placement(query=query, ids=ids, table=table, lengths=lengths, mask=mask)
    q = as_signatures("query", query, (2,), "(B, W)")
    t = as_signatures("table", table, (2,), "(N, W)")
    k = check_k(k)
    batch, words = q.shape
    if t.shape[1] != words:
        raise ValueError(f"table must have W = {words} words like query, got shape {_shape(t.shape)}")
    i, shared = as_ids(ids, batch)
    pad = as_padding(padding_id, i.dtype)
    if device:
        from .cuda.topk import topk_hamming_lookup as device_lookup

        n, m = validity(lengths, mask, batch, i.shape[-1], device=True, padding_side=padding_side)
        return device_lookup(q, i, t, k, n, m, pad)  # type: ignore[no-any-return]
    n, m = validity(lengths, mask, batch, i.shape[1], padding_side=padding_side)
    idx, dist = results(batch, k)
    if not batch:
        return idx, dist
    if shared and (m is None or m.strides[0] == 0):
        gathered = _gather_shared(i[0], t, n, None if m is None else m[0], pad)
        if gathered is not None:  # many targets, one sequence: its signatures are gathered once
            keys, valid = gathered
            m = None if valid is None else np.broadcast_to(valid, i.shape)
            _run_keys(q, np.broadcast_to(keys, (batch, *keys.shape)), k, n, m, idx, dist)
            return idx, dist
    bad = np.empty(batch, dtype=np.int64)  # written only for rows with a bad id
    mask = _NO_MASK if m is None else kernel_input(m)
    padding = 0 if pad is None else pad
    q, i, t = kernel_input(q, contiguous=True), kernel_input(i), kernel_input(t)
    first_bad: list[int] = []  # per task: its first row with a bad id, or -1

    def run(lo: int, hi: int) -> None:
        first_bad.append(topk_lookup(q, i, t, k, n, mask, m is not None, padding, pad is not None,
                                     lo, hi, idx, dist, bad))

    parallel_rows(run, batch, batch * i.shape[1] * words)
    rows = [r for r in first_bad if r >= 0]
    if rows:
        row = min(rows)
        pos = int(bad[row])
        raise ids_error(row, pos, i[row, pos], t.shape[0], shared=shared)
    return idx, dist
