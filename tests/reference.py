"""Plain, slow, obviously-right references for every public function of etaretrieval.

Nothing here is clever: bits are set one at a time with Python ints, distances
are Python ``int.bit_count`` of XORs, and top-K is "compute every distance, keep
the valid positions, sort by (distance ascending, position descending)" with
:func:`numpy.lexsort`. The tests compare the library against these functions
exactly.

The second half holds small helpers shared by the test modules (array layout
variants, random signatures, the top-K result check); they are not references.
"""

from __future__ import annotations

import math
from fractions import Fraction
from typing import Any

import numpy as np

__all__ = [
    "words_for",
    "projection",
    "pack_from_projection",
    "pack",
    "popcount",
    "hamming",
    "valid_positions",
    "topk_from_distances",
    "topk_hamming",
    "topk_hamming_lookup",
    "topk_hamming_ragged",
    "topk_hamming_lookup_ragged",
    "RefSignatureTable",
    "clear_unused_bits",
    "complement",
    "LAYOUTS",
    "relayout",
    "readonly",
    "random_signatures",
    "sdim_codes",
    "sdim_group_sums",
    "sdim_normalise_mean",
    "sdim_pool",
    "sdim_buckets",
]

MASK64 = (1 << 64) - 1


# --------------------------------------------------------------------------- SimHash


def words_for(bits: int) -> int:
    """``W = ceil(bits / 64)``."""
    return -(-bits // 64)


def projection(x: Any, planes: Any, *, exact: bool = False) -> np.ndarray:
    """``x @ planes`` for ``x (..., dim)``, one dot product at a time.

    With ``exact=True`` every dot product is computed in rational arithmetic
    (so its sign is the mathematically true one); otherwise with
    :func:`math.fsum` of float64 products. Returns float64 ``(..., bits)``
    (for ``exact=True`` the rounded exact value, whose sign is exact).
    """
    x = np.asarray(x, dtype=np.float64)
    planes = np.asarray(planes, dtype=np.float64)
    dim, bits = planes.shape
    if exact and _small_integers(x) and _small_integers(planes):
        # integer-valued inputs: the dot products are exact in integer arithmetic
        return (x.astype(np.int64) @ planes.astype(np.int64)).astype(np.float64)
    rows = x.reshape(-1, dim)
    out = np.empty((rows.shape[0], bits), dtype=np.float64)
    for r in range(rows.shape[0]):
        for j in range(bits):
            if exact:
                s = sum((Fraction(float(a)) * Fraction(float(p)) for a, p in zip(rows[r], planes[:, j])), Fraction(0))
                out[r, j] = float(s) if s != 0 else 0.0
                if s != 0 and out[r, j] == 0.0:  # underflow: keep the sign
                    out[r, j] = math.copysign(5e-324, s)
            else:
                out[r, j] = math.fsum(float(a) * float(p) for a, p in zip(rows[r], planes[:, j]))
    return out.reshape(x.shape[:-1] + (bits,))


def _small_integers(a: np.ndarray) -> bool:
    return bool(np.all(np.isfinite(a)) and np.all(a == np.round(a)) and (a.size == 0 or np.abs(a).max() < 2**20))


def pack_from_projection(proj: Any) -> np.ndarray:
    """Pack ``proj > 0`` (``(..., bits)``) into ``(..., W)`` uint64: bit ``j`` -> word ``j // 64``, bit ``j % 64``."""
    proj = np.asarray(proj)
    bits = proj.shape[-1]
    nwords = words_for(bits)
    rows = proj.reshape(-1, bits)
    out = np.zeros((rows.shape[0], nwords), dtype=np.uint64)
    for r in range(rows.shape[0]):
        words = [0] * nwords
        for j in range(bits):
            if rows[r, j] > 0:  # exactly 0 (and NaN) give 0
                words[j // 64] |= 1 << (j % 64)
        out[r] = np.array(words, dtype=np.uint64)
    return out.reshape(proj.shape[:-1] + (nwords,))


def pack(x: Any, planes: Any, *, exact: bool = True) -> np.ndarray:
    """Reference :func:`etaretrieval.pack_signatures` (exact signs by default)."""
    return pack_from_projection(projection(x, planes, exact=exact))


# --------------------------------------------------------------------------- Hamming


def popcount(word: Any) -> int:
    """Set bits of one 64-bit word (a Python int or numpy integer)."""
    return bin(int(word) & MASK64).count("1")


def hamming(a: Any, b: Any) -> np.ndarray:
    """Reference :func:`etaretrieval.hamming`: broadcast leading axes, sum popcount(a ^ b) over words."""
    a = np.asarray(a)
    b = np.asarray(b)
    assert a.dtype == np.uint64 and b.dtype == np.uint64
    assert a.shape[-1] == b.shape[-1]
    lead = np.broadcast_shapes(a.shape[:-1], b.shape[:-1])
    aa = np.broadcast_to(a, lead + a.shape[-1:]).reshape(-1, a.shape[-1])
    bb = np.broadcast_to(b, lead + b.shape[-1:]).reshape(-1, b.shape[-1])
    out = np.empty(aa.shape[0], dtype=np.int32)
    for r in range(aa.shape[0]):
        out[r] = sum(popcount(int(x) ^ int(y)) for x, y in zip(aa[r], bb[r]))
    return out.reshape(lead)


# --------------------------------------------------------------------------- Top-K


def valid_positions(
    batch: int,
    length: int,
    *,
    lengths: Any = None,
    mask: Any = None,
    ids: Any = None,
    padding_id: int | None = None,
) -> np.ndarray:
    """``(B, L)`` bool: which positions are candidates."""
    valid = np.ones((batch, length), dtype=bool)
    if lengths is not None:
        n = [int(v) for v in np.asarray(lengths).reshape(batch)]
        for b in range(batch):
            valid[b, n[b]:] = False
    if mask is not None:
        valid &= np.broadcast_to(np.asarray(mask, dtype=bool), (batch, length))
    if padding_id is not None:
        ids2 = np.broadcast_to(np.asarray(ids), (batch, length))
        for b in range(batch):
            for pos in range(length):
                if int(ids2[b, pos]) == int(padding_id):
                    valid[b, pos] = False
    return valid


def topk_from_distances(dist: Any, valid: Any, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Brute force top-``k``: sort valid positions by (distance asc, position desc), pad with -1."""
    dist = np.asarray(dist)
    valid = np.asarray(valid, dtype=bool)
    batch = valid.shape[0]
    idx_out = np.full((batch, k), -1, dtype=np.int64)
    dist_out = np.full((batch, k), -1, dtype=np.int32)
    for b in range(batch):
        pos = np.flatnonzero(valid[b])
        d = dist[b, pos].astype(np.int64)
        order = np.lexsort((-pos, d))[:k]  # last key is primary: distance, then -position
        idx_out[b, : order.size] = pos[order]
        dist_out[b, : order.size] = d[order]
    return idx_out, dist_out


def topk_hamming(
    query: Any, keys: Any, k: int, *, lengths: Any = None, mask: Any = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Reference :func:`etaretrieval.topk_hamming` (valid inputs only)."""
    query = np.asarray(query)
    keys = np.asarray(keys)
    batch, nwords = query.shape
    length = keys.shape[-2]
    keys3 = np.broadcast_to(keys, (batch, length, nwords))
    dist = np.zeros((batch, length), dtype=np.int64)
    for b in range(batch):
        for pos in range(length):
            dist[b, pos] = sum(popcount(int(query[b, w]) ^ int(keys3[b, pos, w])) for w in range(nwords))
    valid = valid_positions(batch, length, lengths=lengths, mask=mask)
    return topk_from_distances(dist, valid, k)


def topk_hamming_lookup(
    query: Any,
    ids: Any,
    table: Any,
    k: int,
    *,
    lengths: Any = None,
    mask: Any = None,
    padding_id: int | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Reference :func:`etaretrieval.topk_hamming_lookup`.

    Raises :class:`IndexError` naming ``ids[row, position]`` for the first (row-major)
    valid position whose id is outside ``[0, N)``. Invalid positions are never looked up.
    """
    query = np.asarray(query)
    table = np.asarray(table)
    ids_arr = np.asarray(ids)
    batch, nwords = query.shape
    length = ids_arr.shape[-1]
    ids2 = np.broadcast_to(ids_arr, (batch, length))
    valid = valid_positions(batch, length, lengths=lengths, mask=mask, ids=ids2, padding_id=padding_id)
    nrows = table.shape[0]
    dist = np.zeros((batch, length), dtype=np.int64)
    for b in range(batch):
        for pos in range(length):
            if not valid[b, pos]:
                continue
            item = int(ids2[b, pos])
            if not 0 <= item < nrows:
                raise IndexError(f"ids[{b}, {pos}] = {item} is outside [0, {nrows})")
            dist[b, pos] = sum(popcount(int(query[b, w]) ^ int(table[item, w])) for w in range(nwords))
    return topk_from_distances(dist, valid, k)


def _ragged_rows(batch: int, offsets: Any) -> list[slice]:
    """The flat slice of each of the ``batch`` rows given by ``(batch + 1,)`` ``offsets``."""
    o = [int(v) for v in np.asarray(offsets)]
    assert len(o) == batch + 1
    return [slice(o[b], o[b + 1]) for b in range(batch)]


def _stack_rows(rows: list[tuple[np.ndarray, np.ndarray]], k: int) -> tuple[np.ndarray, np.ndarray]:
    if not rows:
        return np.full((0, k), -1, dtype=np.int64), np.full((0, k), -1, dtype=np.int32)
    return np.concatenate([r[0] for r in rows]), np.concatenate([r[1] for r in rows])


def topk_hamming_ragged(
    query: Any, keys: Any, k: int, offsets: Any, *, mask: Any = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Reference ragged :func:`etaretrieval.topk_hamming`: :func:`topk_hamming` on each row of ``keys``."""
    query = np.asarray(query)
    keys = np.asarray(keys)
    rows = _ragged_rows(query.shape[0], offsets)
    return _stack_rows(
        [topk_hamming(query[b : b + 1], keys[r], k, mask=None if mask is None else np.asarray(mask)[r])
         for b, r in enumerate(rows)], k)


def topk_hamming_lookup_ragged(
    query: Any, ids: Any, table: Any, k: int, offsets: Any, *, mask: Any = None, padding_id: int | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Reference ragged :func:`etaretrieval.topk_hamming_lookup`: :func:`topk_hamming_lookup` on each row.

    Raises :class:`IndexError` naming ``ids[row, position]`` (position from the row's start) for the first
    valid position whose id is outside ``[0, N)``.
    """
    query = np.asarray(query)
    ids = np.asarray(ids)
    out = []
    for b, r in enumerate(_ragged_rows(query.shape[0], offsets)):
        m = None if mask is None else np.asarray(mask)[r]
        try:
            out.append(topk_hamming_lookup(query[b : b + 1], ids[r], table, k, mask=m, padding_id=padding_id))
        except IndexError as err:  # the one-row call names row 0
            raise IndexError(str(err).replace("ids[0, ", f"ids[{b}, ", 1)) from None
    return _stack_rows(out, k)


# --------------------------------------------------------------------------- Signature table


class RefSignatureTable:
    """Reference :class:`etaretrieval.SignatureTable`: rehash from the current weights."""

    def __init__(self, weight: np.ndarray, planes: np.ndarray) -> None:
        self.weight = weight
        self.planes = np.asarray(planes)
        self.signatures = pack(weight, self.planes)

    def refresh(self, rows: Any = None) -> None:
        if rows is None:
            self.signatures = pack(self.weight, self.planes)
            return
        for r in np.asarray(rows).reshape(-1):
            self.signatures[int(r)] = pack(self.weight[int(r)], self.planes)


# --------------------------------------------------------------------------- helpers for the tests


def check_topk(idx: Any, dist: Any, want: tuple[np.ndarray, np.ndarray], valid: np.ndarray, k: int) -> None:
    """Assert a top-K result: dtypes, shapes, equality with ``want`` and invariants stated apart from it.

    Each row holds as many positions as ``k`` and its ``valid`` positions allow,
    only valid ones, each once, ordered by (distance ascending, position
    descending), then ``-1`` in both arrays.
    """
    batch = valid.shape[0]
    assert isinstance(idx, np.ndarray) and isinstance(dist, np.ndarray)
    assert idx.dtype == np.int64 and dist.dtype == np.int32
    assert idx.shape == (batch, k) and dist.shape == (batch, k)
    np.testing.assert_array_equal(idx, want[0])
    np.testing.assert_array_equal(dist, want[1])
    for b in range(batch):
        got = idx[b][idx[b] >= 0]
        n = len(got)
        assert (idx[b, n:] == -1).all() and (dist[b, n:] == -1).all()
        assert n == min(k, int(valid[b].sum()))
        assert valid[b, got].all()  # masked, padded and beyond-length positions are never returned
        assert len(set(got.tolist())) == n
        order = list(zip(dist[b, :n].tolist(), (-got).tolist()))
        assert order == sorted(order)  # distance ascending, then position descending


def clear_unused_bits(sig: Any, bits: int) -> np.ndarray:
    """Copy of ``sig`` (``(..., W)`` uint64) with the bits at and above ``bits`` cleared."""
    out = np.array(sig, dtype=np.uint64, copy=True)
    nwords = out.shape[-1]
    for w in range(nwords):
        used = min(max(bits - 64 * w, 0), 64)
        out[..., w] &= np.uint64((1 << used) - 1)
    return out


def complement(sig: Any, bits: int) -> np.ndarray:
    """``~sig`` restricted to the low ``bits`` bits (unused high bits 0)."""
    return clear_unused_bits(~np.asarray(sig, dtype=np.uint64), bits)


#: Memory layouts a test array can be given in (values unchanged).
LAYOUTS = ("c", "f", "strided", "reversed")


def relayout(arr: Any, layout: str) -> np.ndarray:
    """The same values as ``arr`` in another memory layout.

    ``"c"``: C-contiguous copy; ``"f"``: Fortran order (transposed memory);
    ``"strided"``: a step-2 slice of a larger buffer on every axis;
    ``"reversed"``: a view with negative strides on every axis.
    """
    arr = np.asarray(arr)
    if layout == "c":
        return np.ascontiguousarray(arr).copy()
    if layout == "f":
        return np.asfortranarray(arr).copy(order="F")
    if layout == "strided":
        big = np.zeros(tuple(2 * n + 1 for n in arr.shape), dtype=arr.dtype)
        view = big[tuple(slice(1, 1 + 2 * n, 2) for n in arr.shape)]
        view[...] = arr
        return view
    if layout == "reversed":
        rev = np.ascontiguousarray(arr[tuple(slice(None, None, -1) for _ in arr.shape)])
        return rev[tuple(slice(None, None, -1) for _ in arr.shape)]
    raise ValueError(layout)


def readonly(arr: np.ndarray) -> np.ndarray:
    """A read-only view of ``arr``."""
    view = arr.view()
    view.flags.writeable = False
    return view


def random_signatures(
    rng: np.random.Generator, shape: tuple[int, ...], *, style: str = "random", bits: int | None = None,
) -> np.ndarray:
    """Random uint64 signatures of ``shape`` (last axis = words).

    ``style``: ``"random"`` (uniform words), ``"pool"`` (rows drawn from a pool of
    up to 3 random signatures: many exact ties), ``"sparse"`` (few bits set:
    distances cluster, ties across buckets). With ``bits`` the unused high bits
    are cleared.
    """
    if style == "random":
        out = rng.integers(0, 2**64, size=shape, dtype=np.uint64, endpoint=False)
    elif style == "pool":
        nwords = shape[-1]
        pool = rng.integers(0, 2**64, size=(int(rng.integers(1, 4)), nwords), dtype=np.uint64)
        lead = shape[:-1]
        pick = rng.integers(0, pool.shape[0], size=lead)
        out = pool[pick].reshape(shape)
    elif style == "sparse":
        nwords = shape[-1]
        out = np.zeros(shape, dtype=np.uint64)
        flat = out.reshape(-1, nwords)
        for r in range(flat.shape[0]):
            for _ in range(int(rng.integers(0, 3))):
                j = int(rng.integers(0, 64 * nwords))
                flat[r, j // 64] |= np.uint64(1 << (j % 64))
    else:
        raise ValueError(style)
    if bits is not None:
        out = clear_unused_bits(out, bits)
    return np.ascontiguousarray(out)


# --------------------------------------------------------------------------- SDIM


def sdim_codes(sig: Any, tau: int, bits: int) -> np.ndarray:
    """Reference :func:`etaretrieval.sdim_codes`: each signature as one Python int, cut into ``tau``-bit slices."""
    sig = np.asarray(sig)
    rows = sig.reshape(-1, sig.shape[-1])
    groups = bits // tau
    out = np.empty((rows.shape[0], groups), dtype=np.int64)
    for r in range(rows.shape[0]):
        value = sum(int(w) << (64 * k) for k, w in enumerate(rows[r]))
        for g in range(groups):
            out[r, g] = (value >> (g * tau)) & ((1 << tau) - 1)
    return out.reshape(sig.shape[:-1] + (groups,))


def sdim_group_sums(
    query: Any, keys: Any, values: Any, tau: int, bits: int, *, lengths: Any = None, mask: Any = None
) -> np.ndarray:
    """Reference :func:`etaretrieval.sdim_group_sums`: Python float sums in position order, rounded to the dtype."""
    query, keys, values = np.asarray(query), np.asarray(keys), np.asarray(values)
    batch = query.shape[0]
    length, d = keys.shape[-2], values.shape[-1]
    qc = sdim_codes(query, tau, bits)
    kc = np.broadcast_to(sdim_codes(keys, tau, bits), (batch, length, bits // tau))
    vals = np.broadcast_to(values, (batch, length, d))
    valid = valid_positions(batch, length, lengths=lengths, mask=mask)
    out = np.empty((batch, bits // tau, d), dtype=values.dtype)
    for b in range(batch):
        for g in range(bits // tau):
            acc = [0.0] * d
            for pos in range(length):
                if valid[b, pos] and kc[b, pos, g] == qc[b, g]:
                    for i in range(d):
                        acc[i] += float(vals[b, pos, i])
            out[b, g] = np.array(acc, dtype=np.float64).astype(values.dtype)
    return out


def sdim_normalise_mean(sums: Any) -> np.ndarray:
    """``(B, G, d)`` group sums -> ``(B, d)``: each row over its norm (float64, zero when the norm is 0), averaged."""
    sums = np.asarray(sums)
    batch, groups, d = sums.shape
    out = np.empty((batch, d), dtype=sums.dtype)
    for b in range(batch):
        total = [0.0] * d
        for g in range(groups):
            x = [float(v) for v in sums[b, g]]
            n2 = 0.0
            for v in x:
                n2 += v * v
            if n2 != 0.0:
                r = math.sqrt(n2)
                for i in range(d):
                    total[i] += x[i] / r
        out[b] = np.array([t / groups for t in total], dtype=np.float64).astype(sums.dtype)
    return out


def sdim_pool(
    query: Any, keys: Any, values: Any, tau: int, bits: int, *, lengths: Any = None, mask: Any = None
) -> np.ndarray:
    """Reference :func:`etaretrieval.sdim_pool`."""
    return sdim_normalise_mean(sdim_group_sums(query, keys, values, tau, bits, lengths=lengths, mask=mask))


def sdim_buckets(keys: Any, values: Any, tau: int, bits: int, *, lengths: Any = None, mask: Any = None) -> np.ndarray:
    """Reference :func:`etaretrieval.sdim_buckets` for batched ``(B, L, W)`` keys: ``(B, G, 2**tau, d)``."""
    keys, values = np.asarray(keys), np.asarray(values)
    batch, length = keys.shape[:2]
    groups, d = bits // tau, values.shape[-1]
    kc = sdim_codes(keys, tau, bits)
    vals = np.broadcast_to(values, (batch, length, d))
    valid = valid_positions(batch, length, lengths=lengths, mask=mask)
    out = np.empty((batch, groups, 1 << tau, d), dtype=values.dtype)
    for b in range(batch):
        for g in range(groups):
            acc = [[0.0] * d for _ in range(1 << tau)]
            for pos in range(length):
                if valid[b, pos]:
                    for i in range(d):
                        acc[kc[b, pos, g]][i] += float(vals[b, pos, i])
            out[b, g] = np.array(acc, dtype=np.float64).reshape(1 << tau, d).astype(values.dtype)
    return out
