"""SDIM on the GPU: group codes, group sums, pooling, bucket summaries, serving, and the gradient of the sums.

Bit for bit the CPU's arithmetic (:mod:`etaretrieval.cpu.sdim`): every sum
that the contract orders is done by one thread in that order, whatever the
split of the work.

- *Group sums* (``sums_kernel``): one block per (row, group). The block
  classifies :data:`THREADS` positions at a time (one per thread) into a shared
  flag tile; then thread ``t`` adds, for component ``i = t`` (and ``t + T``,
  ...), the flagged positions of the tile in increasing order to its float64
  accumulator. Each ``S[b, g, i]`` is thus the float64 sum in position order.
- *Bucket sums* (``buckets_kernel``): the same tiles hold each position's
  code; thread ``t`` adds ``values[l, i]`` to the float64 slot ``[c, i]`` of a
  global accumulator (the output itself in float64, a scratch otherwise), in
  position order.
- *Normalise and average* (``finish_kernel``): one block per target; thread
  ``t`` computes the squared norm of groups ``t, t + T, ...`` (components in
  order; products through ``libdevice.dmul_rn``, which the compiler never
  fuses into a multiply-add, as LLVM on the CPU does not), then thread ``t``
  sums component ``i`` over the groups in order and divides by ``G``. Square
  root and division are IEEE (no ``fastmath``).
- *Gradient* (``backward_kernel``): one block per (row, position); the
  groups' match flags in shared memory, then per component the sum of the
  matching ``grad[b, g, i]`` in group order.

Bad ``lengths`` entries are reported through the error cells of
:mod:`etaretrieval.cuda.topk` and raise the CPU's :class:`ValueError`.
"""

from __future__ import annotations

import functools
import math
from typing import Any

import numpy as np

from .._device import DeviceArray, describe
from . import _backend, _layout
from .topk import raise_errors

__all__ = [
    "THREADS",
    "sdim_codes",
    "sdim_group_sums",
    "sdim_pool",
    "sdim_buckets",
    "sdim_from_buckets",
    "group_sums_into",
    "group_sums_backward_into",
    "buckets_into",
    "from_buckets_into",
]

#: ``numba.cuda`` once a kernel is built (a module global: the simulator swaps it while kernels run).
cuda: Any = None

#: Threads per block of the SDIM kernels (any value in 1..1024; results never depend on it).
THREADS: int = 128

#: Most groups a signature has (1024 bits of 1-bit groups): the shared per-group arrays.
MAX_GROUPS = 1024


@functools.lru_cache(maxsize=None)
def _kernels(threads: int) -> Any:
    if not 1 <= threads <= 1024:
        raise ValueError(f"THREADS must be in 1..1024, got {threads}")
    global cuda
    cuda = _backend.cuda()
    from numba import float64, int32, int64, uint64

    T = threads
    MG = MAX_GROUPS

    if _backend.simulator():  # NumPy arithmetic: no contraction to worry about

        @cuda.jit(device=True)
        def mul(a, b):
            return a * b

    else:
        from numba.cuda import libdevice

        @cuda.jit(device=True)
        def mul(a, b):
            return libdevice.dmul_rn(a, b)  # a rounded product, never fused with the sum that follows

    @cuda.jit(device=True)
    def code_at(sig, r, p, start, tau):
        """The code at bits ``[start, start + tau)`` of ``sig[r, p]`` (``(R, P, W)`` uint64)."""
        word = start >> 6
        off = start & 63
        c = sig[r, p, word] >> uint64(off)
        if off + tau > 64:
            c |= sig[r, p, word + 1] << uint64(64 - off)
        return int64(c & uint64((1 << tau) - 1))

    @cuda.jit(device=True)
    def row_end(b, lengths, use_len, length, err):
        """Valid prefix of row ``b``, or -1 (reported in ``err[0]``) for a bad ``lengths`` entry."""
        end = int64(length)
        if use_len:
            end = int64(lengths[b])
            if end < 0 or end > length:
                if cuda.threadIdx.x == 0:
                    cuda.atomic.min(err, 0, int64(b))
                return -1
        return end

    @cuda.jit
    def codes_kernel(sig, tau, out):
        """``out[..., g]`` = code ``g`` of ``sig[...]`` over 4 leading axes, one thread per code."""
        s0, s1, s2, s3, groups = out.shape
        i = cuda.grid(1)
        if i < s0 * s1 * s2 * s3 * groups:
            g = i % groups
            r = i // groups
            i3 = r % s3
            r = r // s3
            i2 = r % s2
            r = r // s2
            i1 = r % s1
            i0 = r // s1
            start = g * tau
            word = start >> 6
            off = start & 63
            c = sig[i0, i1, i2, i3, word] >> uint64(off)
            if off + tau > 64:
                c |= sig[i0, i1, i2, i3, word + 1] << uint64(64 - off)
            out[i0, i1, i2, i3, g] = int32(c & uint64((1 << tau) - 1))

    @cuda.jit
    def sums_kernel(query, keys, values, tau, lengths, use_len, mask, use_mask, out, err):
        """``out[b, g, :]`` = group sums; block ``b * G + g``. ``query`` is ``(B, 1, W)``."""
        flags = cuda.shared.array(T, int32)
        groups = out.shape[1]
        d = out.shape[2]
        b = cuda.blockIdx.x // groups
        g = cuda.blockIdx.x % groups
        tid = cuda.threadIdx.x
        end = row_end(b, lengths, use_len, keys.shape[1], err)
        if end < 0:
            return
        kb = b if keys.shape[0] > 1 else 0
        vb = b if values.shape[0] > 1 else 0
        mb = b if mask.shape[0] > 1 else 0
        start = g * tau
        target = code_at(query, b, 0, start, tau)
        for i0 in range(0, d, T):
            i = i0 + tid
            acc = float64(0.0)
            for p0 in range(0, end, T):
                p = p0 + tid
                f = 0
                if p < end and (not use_mask or mask[mb, p]) and code_at(keys, kb, p, start, tau) == target:
                    f = 1
                flags[tid] = f
                cuda.syncthreads()
                if i < d:
                    for j in range(min(T, end - p0)):
                        if flags[j] != 0:
                            acc += float64(values[vb, p0 + j, i])
                cuda.syncthreads()
            if i < d:
                out[b, g, i] = acc

    @cuda.jit
    def finish_kernel(query, tau, sums, summary, use_summary, out):
        """``out[b, :]``: normalise the group rows (``sums[b, g]`` or ``summary[b or 0, g, code]``) and average."""
        norms = cuda.shared.array(MG, float64)
        codes = cuda.shared.array(MG, int32)
        b = cuda.blockIdx.x
        tid = cuda.threadIdx.x
        d = out.shape[1]
        groups = summary.shape[1] if use_summary else sums.shape[1]
        sb = b if summary.shape[0] > 1 else 0
        for g in range(tid, groups, T):
            c = 0
            if use_summary:
                c = code_at(query, b, 0, g * tau, tau)
            codes[g] = c
            n2 = float64(0.0)
            for i in range(d):
                x = float64(summary[sb, g, c, i]) if use_summary else float64(sums[b, g, i])
                n2 += mul(x, x)
            norms[g] = math.sqrt(n2)  # 0 exactly when n2 is 0
        cuda.syncthreads()
        for i in range(tid, d, T):
            total = float64(0.0)
            for g in range(groups):
                r = norms[g]
                if r != 0.0:
                    x = float64(summary[sb, g, codes[g], i]) if use_summary else float64(sums[b, g, i])
                    total += x / r
            out[b, i] = total / groups

    @cuda.jit
    def buckets_kernel(keys, values, tau, lengths, use_len, starts, use_starts, mask, use_mask, acc, out, use_scratch,
                       err):
        """``out[b, g, c, :]`` = bucket sums, accumulated in float64 ``acc``; block ``b * G + g``.

        With ``use_starts``, row ``b`` begins at position ``starts[b]`` of the
        (shared, flat) keys, values and mask: ragged rows.
        """
        codes = cuda.shared.array(T, int32)
        groups = out.shape[1]
        ncodes = out.shape[2]
        d = out.shape[3]
        b = cuda.blockIdx.x // groups
        g = cuda.blockIdx.x % groups
        tid = cuda.threadIdx.x
        end = row_end(b, lengths, use_len, keys.shape[1], err)
        if end < 0:
            return
        kb = b if keys.shape[0] > 1 else 0
        vb = b if values.shape[0] > 1 else 0
        mb = b if mask.shape[0] > 1 else 0
        s = starts[b] if use_starts else 0
        start = g * tau
        for i0 in range(0, d, T):
            i = i0 + tid
            if i < d:
                for c in range(ncodes):
                    acc[b, g, c, i] = 0.0
            for p0 in range(0, end, T):
                p = p0 + tid
                cc = -1
                if p < end and (not use_mask or mask[mb, s + p]):
                    cc = code_at(keys, kb, s + p, start, tau)
                codes[tid] = cc
                cuda.syncthreads()
                if i < d:
                    for j in range(min(T, end - p0)):
                        c = codes[j]
                        if c >= 0:
                            acc[b, g, c, i] += float64(values[vb, s + p0 + j, i])
                cuda.syncthreads()
            if i < d and use_scratch:
                for c in range(ncodes):
                    out[b, g, c, i] = acc[b, g, c, i]

    @cuda.jit
    def backward_kernel(query, keys, grad, tau, lengths, use_len, mask, use_mask, out, err):
        """``out[b, l, :]`` = sum of ``grad[b, g, :]`` over the matching groups; block ``b * L + l``."""
        flags = cuda.shared.array(MG, int32)
        length = out.shape[1]
        d = out.shape[2]
        groups = grad.shape[1]
        b = cuda.blockIdx.x // length
        p = cuda.blockIdx.x % length
        tid = cuda.threadIdx.x
        end = row_end(b, lengths, use_len, length, err)
        if end < 0:
            return
        kb = b if keys.shape[0] > 1 else 0
        mb = b if mask.shape[0] > 1 else 0
        valid = p < end and (not use_mask or mask[mb, p])
        for g in range(tid, groups, T):
            f = 0
            if valid and code_at(keys, kb, p, g * tau, tau) == code_at(query, b, 0, g * tau, tau):
                f = 1
            flags[g] = f
        cuda.syncthreads()
        for i in range(tid, d, T):
            acc = float64(0.0)
            for g in range(groups):
                if flags[g] != 0:
                    acc += float64(grad[b, g, i])
            out[b, p, i] = acc

    return codes_kernel, sums_kernel, finish_kernel, buckets_kernel, backward_kernel


def _expand0(arr: Any) -> Any:
    """``arr`` with a leading axis of length 1 (shared keys / values / mask)."""
    return _backend.view(arr, (1,) + tuple(arr.shape), (0,) + tuple(arr.strides))


def _rows(arr: Any, ndim: int) -> Any:
    """A numba view of ``arr`` with ``ndim`` axes (a leading unit axis added to shared arrays)."""
    return _expand0(arr) if arr.ndim == ndim - 1 else arr


def _query3(query: Any) -> Any:
    """``(B, W)`` -> ``(B, 1, W)`` view, for the kernels' one code reader."""
    return _backend.view(query, (query.shape[0], 1, query.shape[1]), (query.strides[0], 0, query.strides[1]))


def _validity(like: DeviceArray | None, lengths: Any, mask: Any, stream: Any) -> tuple[Any, bool, Any, bool]:
    if lengths is not None:
        n, use_len = _backend.as_numba(lengths), True
    else:
        n, use_len = _backend.placeholder(like, (1,), np.int64, stream), False
    if mask is not None:
        m, use_mask = _rows(_backend.as_numba(mask), 2), True
    else:
        m, use_mask = _backend.placeholder(like, (1, 1), np.bool_, stream), False
    return n, use_len, m, use_mask


def _finish(stream: Any, like: DeviceArray | None, cells: Any, check: bool, batch: int, length: int,
            lengths: Any) -> Any:
    if not check:
        return cells
    raise_errors(_backend.read_back(cells, stream), batch, length, 0, lengths=lengths)
    return None


def _launch(kernel: Any, blocks: int, stream: Any, *args: Any) -> None:
    if blocks:
        _backend.configure(kernel, blocks, THREADS, stream)(*args)


def group_sums_into(
    query: Any, keys: Any, values: Any, tau: int, out: Any, *, lengths: Any = None, mask: Any = None,
    stream: Any = None, check: bool = True,
) -> Any:
    """Raw launcher of :func:`etaretrieval.sdim_group_sums` into ``out`` ``(B, G, d)`` (no validation).

    ``query`` ``(B, W)`` and ``keys`` ``(B, L, W)`` / ``(L, W)`` uint64 or int64
    (same bits), ``values`` ``(B, L, d)`` / ``(L, d)``, ``out`` of the dtype of
    ``values``; ``lengths`` / ``mask`` as in
    :func:`etaretrieval.cuda.topk_hamming_into`, and so are ``stream`` and
    ``check`` (with ``check=False`` the error cells are returned).
    """
    like = describe(out)
    with _backend.device_scope(like):
        stream = _backend.launch_stream(like, stream)
        q = _query3(_backend.as_numba(query, np.uint64))
        kk = _rows(_backend.as_numba(keys, np.uint64), 3)
        v = _rows(_backend.as_numba(values), 3)
        o = _backend.as_numba(out)
        batch, length = q.shape[0], kk.shape[1]
        cells = _backend.error_cells(like, batch, batch * length, stream)
        n, use_len, m, use_mask = _validity(like, lengths, mask, stream)
        _launch(_kernels(THREADS)[1], batch * o.shape[1], stream, q, kk, v, np.int64(tau), n, use_len, m, use_mask,
                o, cells)
        return _finish(stream, like, cells, check, batch, length, lengths)


def _from_rows(stream: Any, like: DeviceArray | None, query: Any, tau: int, sums: Any, summary: Any, out: Any) -> None:
    q = _query3(_backend.as_numba(query, np.uint64))
    o = _backend.as_numba(out)
    if sums is None:
        sums, use_summary = _backend.placeholder(like, (1, 1, 1), np.float64, stream), True
    else:
        summary, use_summary = _backend.placeholder(like, (1, 1, 1, 1), np.float64, stream), False
    _launch(_kernels(THREADS)[2], q.shape[0], stream, q, np.int64(tau), sums, summary, use_summary, o)


def from_buckets_into(query: Any, buckets: Any, tau: int, out: Any, *, stream: Any = None) -> None:
    """Raw launcher of :func:`etaretrieval.sdim_from_buckets` into ``out`` ``(B, d)`` (no validation).

    ``buckets`` ``(G, 2**tau, d)`` or ``(B, G, 2**tau, d)``, of ``out``'s dtype.
    """
    like = describe(out)
    with _backend.device_scope(like):
        stream = _backend.launch_stream(like, stream)
        _from_rows(stream, like, query, tau, None, _rows(_backend.as_numba(buckets), 4), out)


def buckets_into(
    keys: Any, values: Any, tau: int, out: Any, *, lengths: Any = None, mask: Any = None, stream: Any = None,
    check: bool = True, starts: Any = None,
) -> Any:
    """Raw launcher of :func:`etaretrieval.sdim_buckets` into ``out`` ``(B, G, 2**tau, d)`` (no validation).

    A float32 ``out`` takes a float64 scratch of its shape for the duration
    of the call (allocated with ``out``'s library on ``stream``). Ragged
    rows: flat ``(T, W)`` keys, ``(T, d)`` values and ``(T,)`` mask, with the
    rows' ``(B,)`` int64 device ``starts`` and their lengths as ``lengths``.
    """
    like = describe(out)
    with _backend.device_scope(like):
        stream = _backend.launch_stream(like, stream)
        kk = _rows(_backend.as_numba(keys, np.uint64), 3)
        v = _rows(_backend.as_numba(values), 3)
        o = _backend.as_numba(out)
        batch, length = o.shape[0], kk.shape[1]
        scratch = o.dtype != np.float64
        acc = _backend.empty(like, tuple(o.shape), np.float64, stream)[1] if scratch else o
        cells = _backend.error_cells(like, batch, batch * length, stream)
        n, use_len, m, use_mask = _validity(like, lengths, mask, stream)
        st = _backend.placeholder(like, (1,), np.int64, stream) if starts is None else _backend.as_numba(starts)
        _launch(_kernels(THREADS)[3], batch * o.shape[1], stream, kk, v, np.int64(tau), n, use_len, st,
                starts is not None, m, use_mask, acc, o, scratch, cells)
        return _finish(stream, like, cells, check, batch, length, lengths)


def group_sums_backward_into(
    query: Any, keys: Any, grad: Any, tau: int, out: Any, *, lengths: Any = None, mask: Any = None,
    stream: Any = None, check: bool = True,
) -> Any:
    """Raw launcher of the gradient of the group sums w.r.t. ``values``.

    Writes ``out`` ``(B, L, d)`` from ``grad`` ``(B, G, d)``.
    """
    like = describe(out)
    with _backend.device_scope(like):
        stream = _backend.launch_stream(like, stream)
        q = _query3(_backend.as_numba(query, np.uint64))
        kk = _rows(_backend.as_numba(keys, np.uint64), 3)
        o = _backend.as_numba(out)
        batch, length = o.shape[0], o.shape[1]
        cells = _backend.error_cells(like, batch, batch * length, stream)
        n, use_len, m, use_mask = _validity(like, lengths, mask, stream)
        _launch(_kernels(THREADS)[4], batch * length, stream, q, kk, _backend.as_numba(grad), np.int64(tau), n,
                use_len, m, use_mask, o, cells)
        return _finish(stream, like, cells, check, batch, length, lengths)


# ----------------------------------------------------------------------------- device paths of the public API


def sdim_codes(sig: DeviceArray, tau: int, groups: int) -> Any:
    """Device path of :func:`etaretrieval.sdim_codes` (inputs validated)."""
    lead = tuple(sig.shape[:-1])
    with _backend.device_scope(sig):
        stream = _backend.launch_stream(sig)
        user, out = _backend.empty(sig, lead + (groups,), np.int32, stream)
        s = _backend.as_numba(sig)
        if int(np.prod(lead, dtype=np.int64)) == 0:
            return user
        words = tuple(s.shape)[-1]
        s_strides, o_strides = tuple(s.strides), tuple(out.strides)
        arrays = [
            (s, s_strides[:-1], (words,), s_strides[-1:]),
            (out, o_strides[:-1], (groups,), o_strides[-1:]),
        ]
        kernel = _kernels(THREADS)[0]
        for _, (sv, ov) in _layout.tiles(lead, arrays):
            count = int(np.prod(ov.shape, dtype=np.int64))
            _backend.configure(kernel, (count + THREADS - 1) // THREADS, THREADS, stream)(sv, np.int64(tau), ov)
    return user


def sdim_group_sums(q: DeviceArray, keys: DeviceArray, values: DeviceArray, tau: int, groups: int,
                    lengths: DeviceArray | None, mask: DeviceArray | None) -> Any:
    """Device path of :func:`etaretrieval.sdim_group_sums` (inputs validated)."""
    with _backend.device_scope(q):
        stream = _backend.launch_stream(q)
        user, _ = _backend.empty(q, (q.shape[0], groups, values.shape[-1]), values.dtype, stream)
        group_sums_into(q, keys, values, tau, user, lengths=lengths, mask=mask, stream=stream)
    return user


def sdim_pool(q: DeviceArray, keys: DeviceArray, values: DeviceArray, tau: int, groups: int,
              lengths: DeviceArray | None, mask: DeviceArray | None) -> Any:
    """Device path of :func:`etaretrieval.sdim_pool`: the group sums, then one normalising pass."""
    batch, d = q.shape[0], values.shape[-1]
    with _backend.device_scope(q):
        stream = _backend.launch_stream(q)
        _, sums = _backend.empty(q, (batch, groups, d), values.dtype, stream)
        group_sums_into(q, keys, values, tau, sums, lengths=lengths, mask=mask, stream=stream)
        user, out = _backend.empty(q, (batch, d), values.dtype, stream)
        _from_rows(stream, q, q, tau, sums, None, out)
    return user


def sdim_buckets(keys: DeviceArray, values: DeviceArray, tau: int, groups: int, batch: int,
                 lengths: DeviceArray | None, mask: DeviceArray | None) -> Any:
    """Device path of :func:`etaretrieval.sdim_buckets` (inputs validated): ``(B, G, 2**tau, d)``."""
    with _backend.device_scope(keys):
        stream = _backend.launch_stream(keys)
        user, _ = _backend.empty(keys, (batch, groups, 1 << tau, values.shape[-1]), values.dtype, stream)
        buckets_into(keys, values, tau, user, lengths=lengths, mask=mask, stream=stream)
    return user


def sdim_from_buckets(q: DeviceArray, buckets: DeviceArray, tau: int) -> Any:
    """Device path of :func:`etaretrieval.sdim_from_buckets` (inputs validated)."""
    with _backend.device_scope(q):
        stream = _backend.launch_stream(q)
        user, _ = _backend.empty(q, (q.shape[0], buckets.shape[-1]), buckets.dtype, stream)
        from_buckets_into(q, buckets, tau, user, stream=stream)
    return user
