"""SimHash packing on the GPU: projection, sign bits and uint64 words in one kernel.

A block is ``64 x PACK_ROWS_PER_BLOCK`` threads: thread ``(j, r)`` computes
the dot product of row ``r`` with hyperplane ``word * 64 + j`` (accumulating in
the result type of ``x`` and ``planes``, like the CPU), adds the plane's
offset last when there is one (as the CPU's request-sized path does) and ORs
its sign bit into the row's word in shared memory.

The signatures equal the CPU's bit for bit wherever no projection lies within
rounding of 0: the GPU adds the ``dim`` products in order (possibly with fused
multiply-adds), the CPU through BLAS in its own order. Integer-valued inputs
(exact projections) always agree, and exactly-zero projections always give 0.
"""

from __future__ import annotations

import functools
from typing import Any

import numpy as np

from .._device import DeviceArray, describe
from .._validate import nonfinite_error, weight_nonfinite_error
from . import _backend, _layout, config

__all__ = ["pack_signatures", "pack_signatures_into", "planes_for", "refresh_rows", "refresh_all"]

#: ``numba.cuda`` once a kernel is built (a module global: the simulator swaps it while kernels run).
cuda: Any = None


@functools.lru_cache(maxsize=None)
def _kernels(rows_per_block: int) -> tuple[Any, Any, Any]:
    global cuda
    cuda = _backend.cuda()
    from numba import uint64

    rb = rows_per_block

    @cuda.jit(device=True)
    def unravel(r, shape):
        s0, s1, s2, s3 = shape
        i3 = r % s3
        r = r // s3
        i2 = r % s2
        r = r // s2
        return r // s1, r % s1, i2, i3

    @cuda.jit(device=True)
    def row_of(r, rows, gather):
        """Flat row number of work item ``r``: ``rows[r]`` when gathering, else ``r`` itself."""
        if gather:
            return rows[r]
        return r

    @cuda.jit
    def pack_kernel(x, planes, offset, shift, rows, gather, out, zero):
        """``out[.., w]``: bits ``64 w ..`` of ``x[..] @ planes (+ offset) > 0``, one block per (row tile, word ``w``).

        Arguments:

        - ``x``: ``(s0, s1, s2, s3, dim)`` floats, any strides (unused leading axes of length 1);
        - ``planes``: ``(dim, bits)`` hyperplanes;
        - ``offset``: ``(bits,)`` offsets in the accumulator's type, read only when ``shift``;
        - ``shift``: add ``offset[j]`` to projection ``j`` after the sum over ``dim``;
        - ``rows``: ``(n,)`` int64 flat row numbers of ``x`` (in range), read only when ``gather``;
        - ``gather``: pack rows ``rows[0..n)``, else every flat row of ``x``;
        - ``out``: ``(s0, s1, s2, s3, W)`` uint64, row for row with ``x``;
        - ``zero``: 0 in the result type of ``x`` and ``planes`` (the accumulator's type).
        """
        words = cuda.shared.array(rb, uint64)
        tx = cuda.threadIdx.x
        ty = cuda.threadIdx.y
        word = cuda.blockIdx.y
        if tx == 0:
            words[ty] = uint64(0)
        cuda.syncthreads()
        s0, s1, s2, s3 = x.shape[0], x.shape[1], x.shape[2], x.shape[3]
        r = cuda.blockIdx.x * rb + ty
        active = r < (rows.shape[0] if gather else s0 * s1 * s2 * s3)
        i0, i1, i2, i3 = unravel(row_of(r, rows, gather) if active else 0, (s0, s1, s2, s3))
        j = word * 64 + tx
        if active and j < planes.shape[1]:
            acc = zero
            for i in range(planes.shape[0]):
                acc += x[i0, i1, i2, i3, i] * planes[i, j]
            if shift:
                acc += offset[j]
            if acc > 0:
                cuda.atomic.or_(words, ty, uint64(1) << uint64(tx))
        cuda.syncthreads()
        if active and tx == 0:
            out[i0, i1, i2, i3, word] = words[ty]

    @cuda.jit
    def nonfinite_kernel(x, rows, gather, row0, err):
        """``err[0] = min(err[0], row0 + r)`` for each work item ``r`` whose row of ``x`` holds a NaN or inf.

        ``x``, ``rows`` and ``gather`` as in ``pack_kernel``; ``row0`` (int64)
        numbers the work items of this launch (a tile's first flat row);
        ``err`` is a ``(1,)`` or longer int64 error cell array.
        """
        s0, s1, s2, s3 = x.shape[0], x.shape[1], x.shape[2], x.shape[3]
        r = cuda.grid(1)
        if r < (rows.shape[0] if gather else s0 * s1 * s2 * s3):
            i0, i1, i2, i3 = unravel(row_of(r, rows, gather), (s0, s1, s2, s3))
            for i in range(x.shape[4]):
                v = x[i0, i1, i2, i3, i]
                if v - v != 0:  # NaN or +-inf
                    cuda.atomic.min(err, 0, row0 + r)
                    break

    @cuda.jit
    def cast_kernel(src, dst):
        """``dst[i] = src[i]`` rounded to ``dst``'s dtype (an offset in the accumulator's type)."""
        i = cuda.grid(1)
        if i < dst.shape[0]:
            dst[i] = src[i]

    return pack_kernel, nonfinite_kernel, cast_kernel


def _as5(arr: Any) -> Any:
    """A 2-D numba view ``(n, c)`` as ``(1, 1, 1, n, c)`` (the kernels' four leading axes)."""
    return _backend.view(arr, (1, 1, 1) + tuple(arr.shape), (0, 0, 0) + tuple(arr.strides))


def _pack(x5: Any, planes: Any, offset: Any, rows: Any, gather: bool, count: int, out5: Any, stream: Any,
          like: DeviceArray | None) -> None:
    """Launch ``pack_kernel`` over ``count`` work items (see its arguments; ``offset`` None: none)."""
    rb = config.PACK_ROWS_PER_BLOCK
    pack_kernel = _kernels(rb)[0]
    grid = ((count + rb - 1) // rb, _words(planes))
    zero = _zero(x5, planes)
    shift = offset is not None
    if not shift:
        offset = _backend.placeholder(like, (1,), zero.dtype, stream)
    _backend.configure(pack_kernel, grid, (64, rb), stream)(x5, planes, offset, shift, rows, gather, out5, zero)


def _offset(offset: Any, x: Any, planes: Any, stream: Any, like: DeviceArray | None) -> Any:
    """A numba view of device ``offset`` in the accumulator's dtype (converted on the device when it differs)."""
    o = _backend.as_numba(offset)
    dtype = _zero(x, planes).dtype
    if o.dtype == dtype:
        return o
    _, converted = _backend.empty(like, tuple(o.shape), dtype, stream)
    threads = config.HAMMING_THREADS
    cast_kernel = _kernels(config.PACK_ROWS_PER_BLOCK)[2]
    _backend.configure(cast_kernel, (o.shape[0] + threads - 1) // threads, threads, stream)(o, converted)
    return converted


def _nonfinite(x5: Any, rows: Any, gather: bool, count: int, row0: int, err: Any, stream: Any) -> None:
    """Launch ``nonfinite_kernel`` over ``count`` work items (see its arguments)."""
    threads = config.HAMMING_THREADS
    nonfinite_kernel = _kernels(config.PACK_ROWS_PER_BLOCK)[1]
    _backend.configure(nonfinite_kernel, (count + threads - 1) // threads, threads, stream)(
        x5, rows, gather, np.int64(row0), err
    )


def _zero(x: Any, planes: Any) -> Any:
    return np.result_type(x.dtype, planes.dtype).type(0)


def _words(planes: Any) -> int:
    return (planes.shape[1] + 63) // 64


def _launch(x: Any, planes: Any, out: Any, check_finite: bool, stream: Any, like: DeviceArray | None,
            offset: Any = None) -> int:
    """Pack ``x`` (``(..., dim)``) into ``out`` (``(..., W)``); returns the first non-finite flat row or -1."""
    lead = tuple(x.shape[:-1])
    rows = int(np.prod(lead, dtype=np.int64))
    if rows == 0:
        return -1
    if offset is not None:
        offset = _offset(offset, x, planes, stream, like)
    rows_none = _backend.placeholder(like, (1,), np.int64, stream)
    arrays = [
        (x, tuple(x.strides[:-1]), (tuple(x.shape)[-1],), (x.strides[-1],)),
        (out, tuple(out.strides[:-1]), (tuple(out.shape)[-1],), (out.strides[-1],)),
    ]
    err = _backend.error_cells(like, rows, rows, stream) if check_finite else None
    for row0, (xv, ov) in _layout.tiles(lead, arrays):
        count = int(np.prod(xv.shape[:-1], dtype=np.int64))
        _pack(xv, planes, offset, rows_none, False, count, ov, stream, like)
        if check_finite:
            _nonfinite(xv, rows_none, False, count, row0, err, stream)
    if not check_finite:
        return -1
    first = int(_backend.read_back(err, stream)[0])
    return first if first < rows else -1


def pack_signatures_into(
    x: Any, planes: Any, out: Any, *, check_finite: bool = True, stream: Any = None, offset: Any = None
) -> None:
    """Raw launcher: SimHash signatures of device ``x`` (``(..., dim)``) into ``out`` (``(..., W)``).

    ``planes`` is a ``(dim, bits)`` float device array, ``offset`` an optional
    ``(bits,)`` float device array added to the projections, ``out`` uint64
    (or int64, the same bits). No validation besides the non-finite check,
    which reads the error back to the host (a stream synchronisation) and
    raises :class:`ValueError` like the CPU; ``out`` is written either way.
    """
    like = describe(out)
    with _backend.device_scope(like):
        stream = _backend.launch_stream(like, stream)
        xs = _backend.as_numba(x)
        first = _launch(xs, _backend.as_numba(planes), _backend.as_numba(out, np.uint64), check_finite, stream, like,
                        offset)
    if first >= 0:
        lead = tuple(xs.shape[:-1])
        raise nonfinite_error(np.unravel_index(first, lead) if lead else ())


def pack_signatures(x: DeviceArray, planes: DeviceArray, check_finite: bool, offset: DeviceArray | None = None) -> Any:
    """Device path of :func:`etaretrieval.pack_signatures` (inputs validated)."""
    lead = tuple(x.shape[:-1])
    with _backend.device_scope(x):
        stream = _backend.launch_stream(x)
        user, out = _backend.empty(x, lead + (_words(planes),), np.uint64, stream)
        first = _launch(_backend.as_numba(x), _backend.as_numba(planes), out, check_finite, stream, x, offset)
    if first >= 0:
        raise nonfinite_error(np.unravel_index(first, lead) if lead else ())
    return user


def planes_for(cache: dict[Any, Any], planes: np.ndarray, x: DeviceArray) -> Any:
    """``planes`` uploaded to the device of ``x`` once and kept in ``cache`` (a :class:`SimHasher`'s)."""
    if _backend.simulator():
        key: Any = 0
    elif x.family == "torch":
        key = x.obj.device.index
    elif x.family == "cupy":
        key = x.obj.device.id
    else:
        key = _backend.cuda().get_current_device().id
    dev = cache.get(key)
    if dev is None:
        with _backend.device_scope(x):
            dev = _backend.cuda().to_device(np.ascontiguousarray(planes))
            _backend.cuda().synchronize()  # the copy precedes work on any stream of the caller's library
        cache[key] = dev
    return dev


def refresh_all(weight: DeviceArray, planes: Any, signatures: Any, check_finite: bool = True) -> None:
    """Rehash every row of a device table in place; raises before writing if a row is non-finite (when checked)."""
    with _backend.device_scope(weight):
        stream = _backend.launch_stream(weight)
        x = _backend.as_numba(weight)
        p = _backend.as_numba(planes)
        rows = x.shape[0]
        if rows == 0:
            return
        if check_finite:
            err = _backend.error_cells(weight, rows, rows, stream)
            _nonfinite(_as5(x), _backend.placeholder(weight, (1,), np.int64, stream), False, rows, 0, err, stream)
            first = int(_backend.read_back(err, stream)[0])
            if first < rows:
                raise weight_nonfinite_error(first)
        _launch(x, p, _backend.as_numba(signatures, np.uint64), False, stream, weight)


def refresh_rows(
    weight: DeviceArray, planes: Any, rows: np.ndarray, signatures: Any, check_finite: bool = True
) -> None:
    """Rehash the (unique, in-range, host) ``rows`` of a device table in place.

    With ``check_finite``, raises :class:`ValueError` naming the first
    non-finite row of ``weight`` among ``rows`` (as the CPU's
    :meth:`SignatureTable.refresh` does) before writing anything.
    """
    n = int(rows.shape[0])
    if n == 0:
        return
    with _backend.device_scope(weight):
        stream = _backend.launch_stream(weight)
        x = _backend.as_numba(weight)
        p = _backend.as_numba(planes)
        out = _backend.as_numba(signatures, np.uint64)
        _, r = _backend.empty(weight, (n,), np.int64, stream)
        r.copy_to_device(np.ascontiguousarray(rows, dtype=np.int64), stream=stream)
        x5 = _as5(x)
        if check_finite:
            err = _backend.error_cells(weight, n, n, stream)
            _nonfinite(x5, r, True, n, 0, err, stream)
            first = int(_backend.read_back(err, stream)[0])
            if first < n:
                raise weight_nonfinite_error(int(rows[first]))
        _pack(x5, p, None, r, True, n, _as5(out), stream, weight)
