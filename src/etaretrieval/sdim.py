"""SDIM: sampling-based user interest from the same SimHash signatures as ETA.

SDIM (Cao et al., CIKM 2022, "Sampling is all you need on modeling long-term
user behaviors") splits each ``m``-bit signature into ``G = m / tau`` groups of
``tau`` consecutive bits. For each group, the behaviours whose ``tau``-bit code
equals the target's are summed and the sum is L2-normalised; the ``G``
normalised vectors are averaged into one ``(d,)`` user-interest vector per
target. Because a group's code takes only ``2**tau`` values, the sums of every
code can be computed once per user (:func:`sdim_buckets`), and each candidate
target then costs ``O(d G)`` whatever the sequence length
(:func:`sdim_from_buckets`).

Arithmetic (identical on the CPU and the GPU, bit for bit): group sums are
accumulated in float64 in increasing position order and rounded to the dtype
of ``values`` (``S``); each ``S`` row is normalised in float64,
``S / sqrt(sum_i S_i**2)`` (squares summed in increasing ``i``), and a group
whose squared norm is exactly 0 (no matching behaviour, or a zero sum)
contributes zero (no eps); the ``G`` contributions are summed in group order,
divided by ``G`` and rounded to the dtype of ``values``.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt

from ._device import DeviceArray, placement
from ._validate import (
    MAX_BUCKET_ELEMENTS,
    MAX_TAU,
    DTypeError,
    _shape,
    as_array,
    as_signatures,
    check_bucket_size,
    check_groups,
    check_keys_shape,
    check_tau,
    validity,
)
from .cpu import sdim as host
from .ragged import check_offsets_alone, sdim_buckets_ragged, sdim_group_sums_ragged, sdim_pool_ragged

__all__ = ["sdim_codes", "sdim_group_sums", "sdim_pool", "sdim_buckets", "sdim_from_buckets", "MAX_TAU",
           "MAX_BUCKET_ELEMENTS"]


_FLOATS = (np.dtype(np.float32), np.dtype(np.float64))


def check_values(values: Any, batch: int, length: int) -> Any:
    """``values``: float32/float64, ``(B, L, d)`` or ``(L, d)`` matching the keys."""
    v = as_array(values)
    if v.dtype not in _FLOATS:
        raise DTypeError(f"values must have dtype float32 or float64, got dtype {v.dtype}")
    if v.ndim not in (2, 3) or v.shape[-2] != length or (v.ndim == 3 and v.shape[0] != batch):
        raise ValueError(
            f"values must have shape ({batch}, {length}, d) or ({length}, d) to match the keys, "
            f"got shape {_shape(v.shape)}"
        )
    return v


def _pool_inputs(
    query: Any, keys: Any, values: Any, tau: Any, bits: Any
) -> tuple[Any, Any, Any, int, int]:
    q = as_signatures("query", query, (2,), "(B, W)")
    kk = as_signatures("keys", keys, (2, 3), "(B, L, W) or (L, W)")
    batch, words = q.shape
    check_keys_shape(kk.shape, batch, words)
    v = check_values(values, batch, kk.shape[-2])
    tau = check_tau(tau)
    return q, kk, v, tau, check_groups(words, tau, bits)


def sdim_codes(signatures: Any, tau: int, *, bits: int | None = None) -> npt.NDArray[np.int32]:
    """The ``tau``-bit group codes of packed signatures.

    Parameters
    ----------
    signatures : array_like
        ``(..., W)`` uint64 signatures (see :func:`pack_signatures`).
    tau : int
        Bits per group, ``1..16``; must divide ``bits``.
    bits : int, optional
        Signature length ``m`` in ``64 (W - 1) + 1 .. 64 W``; default ``64 W``.

    Returns
    -------
    numpy.ndarray
        ``(..., G)`` int32 codes in ``0 .. 2**tau - 1``, ``G = bits / tau``:
        code ``g`` holds bits ``[g tau, (g + 1) tau)`` of the signature (bit
        ``j`` in word ``j // 64`` at position ``j % 64``), bit ``g tau`` as its
        least significant bit; a group may straddle two words. For device
        arrays, a device array of the same library.

    Examples
    --------
    >>> import numpy as np, etaretrieval as er
    >>> sig = np.array([[0b110_001]], dtype=np.uint64)
    >>> er.sdim_codes(sig, 3, bits=6)
    array([[1, 6]], dtype=int32)
    """
    device = placement(signatures=signatures)
    s = as_signatures("signatures", signatures, tuple(range(1, 33)), "(..., W)")
    tau = check_tau(tau)
    groups = check_groups(s.shape[-1], tau, bits)
    if device:
        from .cuda.sdim import sdim_codes as device_codes

        return device_codes(s, tau, groups)
    return host.sdim_codes(s, tau, groups)


def sdim_group_sums(
    query: Any,
    keys: Any,
    values: Any,
    tau: int,
    *,
    bits: int | None = None,
    lengths: Any = None,
    mask: Any = None,
    offsets: Any = None,
) -> npt.NDArray[np.floating]:
    """The per-group sums ``S`` of SDIM, before normalisation.

    ``S[b, g, :]`` is the sum of ``values[b, l, :]`` over the valid positions
    ``l`` whose group-``g`` code equals that of ``query[b]`` (float64, in
    increasing ``l``, rounded to the dtype of ``values``). :func:`sdim_pool` is
    ``S`` normalised and averaged; the PyTorch plugin differentiates through
    this form.

    Parameters
    ----------
    query, keys, values, tau, bits, lengths, mask, offsets
        As in :func:`sdim_pool`.

    Returns
    -------
    numpy.ndarray
        ``(B, G, d)`` of the dtype of ``values``.

    Examples
    --------
    >>> import numpy as np, etaretrieval as er
    >>> keys = np.array([[0b01], [0b11], [0b00]], dtype=np.uint64)
    >>> values = np.array([[1.0], [2.0], [4.0]])
    >>> er.sdim_group_sums(np.array([[0b01]], dtype=np.uint64), keys, values, 1, bits=2)[0, :, 0]
    array([3., 5.])
    """
    if offsets is not None:
        check_offsets_alone(lengths)
        return sdim_group_sums_ragged(query, keys, values, tau, offsets, bits=bits, mask=mask)
    device = placement(query=query, keys=keys, values=values, lengths=lengths, mask=mask)
    q, kk, v, tau, groups = _pool_inputs(query, keys, values, tau, bits)
    batch, length = q.shape[0], kk.shape[-2]
    if device:
        from .cuda.sdim import sdim_group_sums as device_sums

        n, m = validity(lengths, mask, batch, length, device=True)
        return device_sums(q, kk, v, tau, groups, n, m)
    n, m = validity(lengths, mask, batch, length)
    return host.sdim_group_sums(q, kk, v, tau, groups, n, m)


def sdim_pool(
    query: Any,
    keys: Any,
    values: Any,
    tau: int,
    *,
    bits: int | None = None,
    lengths: Any = None,
    mask: Any = None,
    offsets: Any = None,
) -> npt.NDArray[np.floating]:
    """SDIM user-interest vectors: per group, matching behaviours summed and L2-normalised, groups averaged.

    Parameters
    ----------
    query : array_like
        ``(B, W)`` uint64 target signatures.
    keys : array_like
        ``(B, L, W)`` uint64 behaviour signatures, or ``(L, W)`` shared by
        every row (many candidates against one user; see also
        :func:`sdim_buckets`).
    values : array_like
        ``(B, L, d)`` or shared ``(L, d)`` float32/float64 vectors summed at
        the matching positions (the behaviour embeddings, possibly plus a time
        embedding).
    tau : int
        Bits per group, ``1..16``; must divide ``bits``.
    bits : int, optional
        Signature length ``m`` (default ``64 W``); ``G = bits / tau`` groups.
    lengths : array_like, optional
        ``(B,)`` integers in ``0..L``: only the prefix ``[0, lengths[b])`` is valid.
    mask : array_like, optional
        ``(B, L)`` or ``(L,)`` bool valid positions. Not together with ``lengths``.
    offsets : array_like, optional
        Ragged rows: ``(B + 1,)`` offsets into flat ``(T, W)`` keys and
        ``(T, d)`` values, as in :func:`topk_hamming` (see
        :func:`~etaretrieval.ragged.sdim_pool_ragged`); ``mask`` may then be flat ``(T,)``.

    Returns
    -------
    numpy.ndarray
        ``(B, d)`` of the dtype of ``values``. For device arrays, a device
        array of the same library, equal bit for bit to the CPU's.

    Notes
    -----
    Positions that are not valid never contribute. A group with no matching
    valid behaviour (or whose sum is exactly zero) contributes a zero vector
    to the average; a row with no valid position gives zeros. See the module
    documentation for the exact arithmetic (float64 accumulation in position
    order, no eps).

    Examples
    --------
    >>> import numpy as np, etaretrieval as er
    >>> query = np.array([[0b01]], dtype=np.uint64)           # 2 bits, tau = 1: codes (1, 0)
    >>> keys = np.array([[0b01], [0b11], [0b10]], dtype=np.uint64)
    >>> values = np.array([[3.0, 4.0], [0.0, 2.0], [1.0, 0.0]])
    >>> er.sdim_pool(query, keys, values, 1, bits=2)          # group 0: rows 0, 1; group 1: row 0
    array([[0.5236068, 0.8472136]])
    """
    if offsets is not None:
        check_offsets_alone(lengths)
        return sdim_pool_ragged(query, keys, values, tau, offsets, bits=bits, mask=mask)
    device = placement(query=query, keys=keys, values=values, lengths=lengths, mask=mask)
    q, kk, v, tau, groups = _pool_inputs(query, keys, values, tau, bits)
    batch, length = q.shape[0], kk.shape[-2]
    if device:
        from .cuda.sdim import sdim_pool as device_pool

        n, m = validity(lengths, mask, batch, length, device=True)
        return device_pool(q, kk, v, tau, groups, n, m)
    n, m = validity(lengths, mask, batch, length)
    return host.sdim_pool(q, kk, v, tau, groups, n, m)


def sdim_buckets(
    keys: Any,
    values: Any,
    tau: int,
    *,
    bits: int | None = None,
    lengths: Any = None,
    mask: Any = None,
    offsets: Any = None,
) -> npt.NDArray[np.floating]:
    """The target-independent SDIM summary of sequences: per group, the sum of every code's behaviours.

    Computed once per user; :func:`sdim_from_buckets` then serves any number
    of candidate targets at ``O(d G)`` each, whatever ``L``.

    Parameters
    ----------
    keys : array_like
        ``(L, W)`` uint64 signatures of one user's behaviours, or
        ``(B, L, W)`` for ``B`` users.
    values : array_like
        ``(L, d)`` or ``(B, L, d)`` float32/float64 (either may be shared when
        the other is batched).
    tau : int
        Bits per group, ``1..16``; must divide ``bits``. The summary holds
        ``G * 2**tau * d`` values per user, at most :data:`etaretrieval.sdim.MAX_BUCKET_ELEMENTS`.
    bits : int, optional
        Signature length (default ``64 W``).
    lengths : array_like, optional
        ``(B,)`` (``(1,)`` or a scalar for one user) integers in ``0..L``.
    mask : array_like, optional
        ``(B, L)`` or ``(L,)`` bool valid positions. Not together with ``lengths``.
    offsets : array_like, optional
        Ragged rows: ``(B + 1,)`` int32/int64 offsets into flat ``(T, W)``
        keys and ``(T, d)`` values, as in :func:`topk_hamming` (see
        :func:`~etaretrieval.ragged.sdim_buckets_ragged`); ``mask`` may then be
        flat ``(T,)``. Not together with ``lengths``.

    Returns
    -------
    numpy.ndarray
        ``(G, 2**tau, d)`` for one user, ``(B, G, 2**tau, d)`` for ``B`` (always
        with ``offsets``), of the dtype of ``values``: ``buckets[..., g, c, :]``
        is the sum (float64 in position order, rounded) of the valid values
        whose group-``g`` code is ``c``. With ``offsets``, row ``b``'s summary
        equals, bit for bit, this function's on that row alone.

    Examples
    --------
    >>> import numpy as np, etaretrieval as er
    >>> keys = np.array([[0b01], [0b11], [0b10]], dtype=np.uint64)
    >>> values = np.array([[3.0, 4.0], [0.0, 2.0], [1.0, 0.0]])
    >>> buckets = er.sdim_buckets(keys, values, 1, bits=2)
    >>> buckets.shape
    (2, 2, 2)
    >>> buckets[0]                                            # group 0: code 0 <- row 2; code 1 <- rows 0, 1
    array([[1., 0.],
           [3., 6.]])
    >>> ragged = er.sdim_buckets(keys, values, 1, bits=2, offsets=[0, 2, 3])  # rows: keys 0-1, key 2
    >>> np.array_equal(ragged[1], er.sdim_buckets(keys[2:], values[2:], 1, bits=2))
    True
    """
    if offsets is not None:
        check_offsets_alone(lengths)
        return sdim_buckets_ragged(keys, values, tau, offsets, bits=bits, mask=mask)
    device = placement(keys=keys, values=values, lengths=lengths, mask=mask)
    kk = as_signatures("keys", keys, (2, 3), "(B, L, W) or (L, W)")
    v = as_array(values)
    batched = kk.ndim == 3 or v.ndim == 3
    batch = kk.shape[0] if kk.ndim == 3 else (v.shape[0] if v.ndim == 3 else 1)
    length, words = kk.shape[-2:]
    v = check_values(v, batch, length)
    tau = check_tau(tau)
    groups = check_groups(words, tau, bits)
    d = v.shape[-1]
    check_bucket_size(groups, tau, d)
    if not batched and lengths is not None and not isinstance(lengths, DeviceArray):
        ln = as_array(lengths)
        if isinstance(ln, np.ndarray) and ln.ndim == 0:
            lengths = ln.reshape(1)
    if device:
        from .cuda.sdim import sdim_buckets as device_buckets

        n, m = validity(lengths, mask, batch, length, device=True)
        out = device_buckets(kk, v, tau, groups, batch, n, m)
        return out if batched else out[0]
    n, m = validity(lengths, mask, batch, length)
    out = host.sdim_buckets(kk, v, tau, groups, batch, n, m)
    return out if batched else out[0]


def sdim_from_buckets(query: Any, buckets: Any) -> npt.NDArray[np.floating]:
    """SDIM user-interest vectors of candidate targets from a bucket summary (:func:`sdim_buckets`).

    Each target reads its own code's sum in each group: ``O(d G)`` per
    target, whatever the length of the summarised sequence. Equal, bit for
    bit, to :func:`sdim_pool` on the summarised sequence.

    Parameters
    ----------
    query : array_like
        ``(B, W)`` uint64 target signatures, ``W = ceil(G tau / 64)``.
    buckets : array_like
        ``(G, 2**tau, d)`` summary shared by every target (one user), or
        ``(B, G, 2**tau, d)`` (one user per target); float32/float64.
        ``tau`` is read from the second-to-last axis.

    Returns
    -------
    numpy.ndarray
        ``(B, d)`` of the dtype of ``buckets``.

    Examples
    --------
    >>> import numpy as np, etaretrieval as er
    >>> keys = np.array([[0b01], [0b11], [0b10]], dtype=np.uint64)
    >>> values = np.array([[3.0, 4.0], [0.0, 2.0], [1.0, 0.0]])
    >>> buckets = er.sdim_buckets(keys, values, 1, bits=2)
    >>> query = np.array([[0b01], [0b10]], dtype=np.uint64)
    >>> np.array_equal(er.sdim_from_buckets(query, buckets), er.sdim_pool(query, keys, values, 1, bits=2))
    True
    """
    device = placement(query=query, buckets=buckets)
    q = as_signatures("query", query, (2,), "(B, W)")
    bk = as_array(buckets)
    if bk.dtype not in _FLOATS:
        raise DTypeError(f"buckets must have dtype float32 or float64, got dtype {bk.dtype}")
    batch, words = q.shape
    ncodes = bk.shape[-2] if bk.ndim >= 2 else 0
    tau = ncodes.bit_length() - 1
    if (bk.ndim not in (3, 4) or (bk.ndim == 4 and bk.shape[0] != batch) or ncodes != 1 << tau
            or not 1 <= tau <= MAX_TAU):
        raise ValueError(
            f"buckets must have shape (G, 2**tau, d) or ({batch}, G, 2**tau, d) with tau in 1..{MAX_TAU}, "
            f"got shape {_shape(bk.shape)}"
        )
    groups = bk.shape[-3]
    if not 64 * (words - 1) < groups * tau <= 64 * words:
        raise ValueError(
            f"buckets of G = {groups} groups of tau = {tau} bits summarise {groups * tau}-bit signatures, "
            f"but query has W = {words} words ({64 * (words - 1) + 1}..{64 * words} bits)"
        )
    if device:
        from .cuda.sdim import sdim_from_buckets as device_from_buckets

        return device_from_buckets(q, bk, tau)
    return host.sdim_from_buckets(q, bk, tau)


def group_sums_backward(query: Any, keys: Any, grad: Any, tau: int, lengths: Any = None,
                        mask: Any = None) -> npt.NDArray[np.floating]:
    """Gradient of :func:`sdim_group_sums` with respect to ``values``, on the host (inputs validated).

    ``grad`` ``(B, G, d)``; returns ``(B, L, d)`` of ``grad``'s dtype:
    ``out[b, l] = sum of grad[b, g]`` over the groups where valid position
    ``l`` matches the target (float64, groups in order), zero elsewhere.
    """
    q, kk, gr = np.asarray(query), np.asarray(keys), np.asarray(grad)
    batch, length = q.shape[0], kk.shape[-2]
    n, m = validity(lengths, mask, batch, length)
    return host.sdim_group_sums_backward(q, kk, gr, tau, n, m)
