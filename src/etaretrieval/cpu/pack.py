"""Sign-bit packing of a projection block into uint64 signature words.

A full word is one vector compare: 64 projected values ``> threshold`` (0,
or ``-offset`` for affine hyperplanes) give the 64 bits of the word directly
(and ``v - v != 0``, true for NaN and infinities only, flags non-finite rows),
a few instructions per 64 values; a last partial word is packed bit by bit.

Comparing with ``-offset`` is adding the offset for free: for finite ``o``,
``fl(v + o) > 0`` exactly when ``v > -o`` (the rounded sum of two floats is 0
only where the exact sum is, and has its sign), so the bits are those of
``v + o`` rounded in the projection's dtype, without a pass over the
projection.

The kernel is deliberately serial: it runs between two BLAS calls on a block
that is still in cache, so it costs a few percent of the matrix product that
made the block. A parallel kernel here (one Numba parallel region per block)
makes Numba's worker threads and the BLAS library's spinning threads fight
over the cores (the performance guide has the measurement).
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext

import numpy as np
from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic, overload

from .. import config
from .._jit import PURE_PYTHON, jit, kernel_input
from .._threads import parallel_rows
from .._validate import nonfinite_error

__all__ = ["thresholds", "pack_projection", "project_pack", "pack_signatures", "pack_small", "raise_nonfinite"]


def thresholds(offset: np.ndarray | None, bits: int, ctype: np.dtype) -> np.ndarray:
    """The ``(bits,)`` thresholds of :func:`pack_projection` in the projection's dtype: 0, or ``-offset`` in it."""
    t = np.zeros(bits, ctype) if offset is None else -offset.astype(ctype)
    return kernel_input(t, contiguous=True)


@jit()
def _sign_bits(proj, r, lo, n, threshold):
    """``(word, nonfinite)``: bit ``j < n`` is ``proj[r, lo + j] > threshold[lo + j]``; whether one is NaN or inf."""
    word = np.uint64(0)
    bad = False
    for j in range(n):
        v = proj[r, lo + j]
        word |= np.uint64(v > threshold[lo + j]) << np.uint64(j)
        bad |= v - v != 0  # true for +-inf and NaN only
    return word, bad


def _sign_word(proj: np.ndarray, r: int, lo: int, threshold: np.ndarray) -> tuple[np.uint64, bool]:
    """:func:`_sign_bits` of the 64 values from ``proj[r, lo]``; one vector compare in compiled code."""
    return _sign_bits(proj, r, lo, 64, threshold)


@intrinsic
def _sign_word_vector(typingctx, proj, r, lo, threshold):
    def codegen(context, builder, signature, args):
        dtype = signature.args[0].dtype
        vector = ir.VectorType(context.get_value_type(dtype), 64)

        def load(arr: ir.Value, start: ir.Value) -> ir.Value:  # 64 values from data[start]
            return builder.load(builder.bitcast(builder.gep(arr.data, [start]), vector.as_pointer()),
                                align=dtype.bitwidth // 8)

        array = context.make_array(signature.args[0])(context, builder, value=args[0])
        limit = context.make_array(signature.args[3])(context, builder, value=args[3])
        cols = cgutils.unpack_tuple(builder, array.shape, 2)[1]
        values = load(array, builder.add(builder.mul(args[1], cols), args[2]))
        word = builder.bitcast(builder.fcmp_ordered(">", values, load(limit, args[2])), ir.IntType(64))
        zero = ir.Constant(vector, None)
        bad = builder.bitcast(builder.fcmp_unordered("!=", builder.fsub(values, values), zero), ir.IntType(64))
        return context.make_tuple(builder, signature.return_type, [word, builder.icmp_unsigned("!=", bad, bad.type(0))])

    return types.Tuple((types.uint64, types.boolean))(proj, types.intp, types.intp, threshold), codegen


@overload(_sign_word, jit_options={"nogil": True})
def _sign_word_jit(proj, r, lo, threshold):
    if (isinstance(proj, types.Array) and proj.layout == "C" and proj.dtype in (types.float32, types.float64)
            and isinstance(threshold, types.Array) and threshold.layout == "C" and threshold.dtype == proj.dtype):
        return lambda proj, r, lo, threshold: _sign_word_vector(proj, r, lo, threshold)
    return lambda proj, r, lo, threshold: _sign_bits(proj, r, lo, 64, threshold)


@jit()
def pack_projection(proj, out, nonfinite, threshold):
    """Pack ``proj > threshold`` (rows x bits, against ``(bits,)``) into ``out`` (rows x W), LSB first.

    ``threshold`` (see :func:`thresholds`) has ``proj``'s dtype: zeros for
    the plain SimHash, ``-offset`` for the bits of ``proj + offset``.
    ``nonfinite[r]`` is set when row ``r`` of the projection holds a NaN or an
    infinity (the caller then decides whether the input row was bad).
    """
    rows, bits = proj.shape
    words = out.shape[1]
    for r in range(rows):
        bad = False
        for w in range(words):
            lo = w * 64
            if lo + 64 <= bits:
                word, flag = _sign_word(proj, r, lo, threshold)
            else:
                word, flag = _sign_bits(proj, r, lo, bits - lo, threshold)
            out[r, w] = word
            bad |= flag
        nonfinite[r] = bad


@jit()
def project_pack(x, planes, threshold, lo, hi, out, nonfinite):
    """Rows ``lo..hi-1``: project ``x[r] @ planes``, pack ``> threshold`` into ``out[r]`` (no BLAS).

    ``x``, ``planes`` and ``threshold`` (see :func:`thresholds`) have the
    working dtype. Each projection is summed in order over ``dim``, one
    vectorised pass over the bits per input value; with ``-offset`` as the
    threshold the bits are those of the sum plus the offset added last,
    which is the sum that ``[x[r], 1]`` with planes ``[planes; offset]``
    gives, bit for bit. ``nonfinite[r]`` as in :func:`pack_projection`.
    """
    dim, bits = planes.shape
    proj = np.empty((1, bits), dtype=planes.dtype)
    acc = proj[0]
    for r in range(lo, hi):
        acc[:] = 0
        for i in range(dim):
            xi = x[r, i]
            for j in range(bits):
                acc[j] += xi * planes[i, j]
        pack_projection(proj, out[r : r + 1], nonfinite[r : r + 1], threshold)


def raise_nonfinite(x2: np.ndarray, rows: np.ndarray, offset: int, lead: tuple[int, ...]) -> None:
    """Raise for the first of ``rows`` (flagged by the kernel) that holds a non-finite value."""
    finite = np.isfinite(x2[rows]).all(axis=1)
    if not finite.all():
        first = int(rows[np.argmin(finite)]) + offset
        raise nonfinite_error(np.unravel_index(first, lead) if lead else ())


#: Pure Python (``NUMBA_DISABLE_JIT=1``) computes the projection in numpy scalars, which warn on
#: ``inf * 0``; compiled code flags such rows without a warning, and so must the fallback.
_QUIET: Callable[[], AbstractContextManager[object]] = (
    (lambda: np.errstate(invalid="ignore", over="ignore")) if PURE_PYTHON else nullcontext
)


def pack_small(x2: np.ndarray, planes: np.ndarray, out: np.ndarray, check_finite: bool,
               lead: tuple[int, ...], offset: np.ndarray | None = None) -> None:
    """Pack the ``(rows, dim)`` rows of ``x2`` into ``out`` with the Numba projection (no BLAS).

    For request-sized inputs (:data:`config.PACK_BLAS_WORK`): the projection
    is summed in order in the working precision, on the library's threads,
    so no BLAS thread pool wakes up (and keeps spinning) between two kernels.
    Inputs are normalised to C-contiguous read-only arrays of the working
    dtype (copies of a small ``x`` at most), so one variant per dtype is
    compiled (with or without an ``offset``).
    """
    ctype = np.result_type(x2.dtype, planes.dtype)
    xs = kernel_input(x2.astype(ctype, copy=False), contiguous=True)
    ps = kernel_input(planes.astype(ctype, copy=False), contiguous=True)
    limit = thresholds(offset, ps.shape[1], ctype)
    rows, (dim, bits) = xs.shape[0], ps.shape
    flags = np.empty(rows, dtype=np.bool_)

    def run(lo: int, hi: int) -> None:
        with _QUIET():  # in every worker thread: numpy's error state is per thread
            project_pack(xs, ps, limit, lo, hi, out, flags)

    parallel_rows(run, rows, rows * dim * bits // 32)
    if check_finite and flags.any():
        raise_nonfinite(xs, np.flatnonzero(flags), 0, lead)


def pack_signatures(a: np.ndarray, p: np.ndarray, check_finite: bool, offset: np.ndarray | None = None) -> np.ndarray:
    """Host path of :func:`etaretrieval.pack_signatures`; inputs validated: ``a`` ``(..., dim)``, ``p`` ``(dim, bits)``.

    Request-sized inputs go through :func:`pack_small`, larger ones through
    BLAS in row chunks and :func:`pack_projection` (the ``(bits,)``
    ``offset``, if any, added to the product as a threshold).
    """
    dim, bits = p.shape
    lead = a.shape[:-1]
    words = (bits + 63) // 64
    out = np.empty((int(np.prod(lead, dtype=np.int64)), words), dtype=np.uint64)
    if out.shape[0] == 0:
        return out.reshape(lead + (words,))
    if out.shape[0] * dim * bits <= config.PACK_BLAS_WORK:  # request-sized: no BLAS
        pack_small(a.reshape(-1, dim), p, out, check_finite, lead, offset)
        return out.reshape(lead + (words,))
    try:
        x2 = a.reshape(-1, dim, copy=False)
    except ValueError:  # strides that no 2-D view can express: gather each chunk instead
        x2 = None
    ctype = np.result_type(a.dtype, p.dtype)
    planes_c = p.astype(ctype, copy=False)
    limit = thresholds(offset, bits, ctype)
    chunk = max(1, config.PACK_CHUNK_ELEMENTS // bits)
    proj = np.empty((min(chunk, out.shape[0]), bits), dtype=ctype)
    flags = np.empty(proj.shape[0], dtype=np.bool_)
    for start in range(0, out.shape[0], chunk):
        stop = min(start + chunk, out.shape[0])
        n = stop - start
        block = x2[start:stop] if x2 is not None else a[np.unravel_index(np.arange(start, stop), lead)]
        with np.errstate(invalid="ignore", over="ignore"):  # inf/nan rows are flagged by the pack kernel
            np.matmul(block, planes_c, out=proj[:n])
        with _QUIET():
            pack_projection(proj[:n], out[start : start + n], flags[:n], limit)
        if check_finite and flags[:n].any():
            raise_nonfinite(block, np.flatnonzero(flags[:n]), start, lead)
    return out.reshape(lead + (words,))
