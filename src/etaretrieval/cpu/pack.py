"""Sign-bit packing of a projection block into uint64 signature words.

A full word is one vector compare: 64 projected values ``> 0`` give the 64
bits of the word directly (and ``v - v != 0``, true for NaN and infinities
only, flags non-finite rows), a few instructions per 64 values; a last partial
word is packed bit by bit.

The kernel is deliberately serial: it runs between two BLAS calls on a block
that is still in cache, so it costs a few percent of the matrix product that
made the block. A parallel kernel here (one Numba parallel region per block)
makes Numba's worker threads and the BLAS library's spinning threads fight
over the cores: on two cores it made :func:`etaretrieval.pack_signatures`
10 to 70 times slower than the bare product.
"""

from __future__ import annotations

import numpy as np
from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic, overload

from .._jit import jit

__all__ = ["pack_projection", "project_pack"]


@jit()
def _sign_bits(proj, r, lo, n):  # type: ignore[no-untyped-def]
    """``(word, nonfinite)``: bit ``j < n`` is ``proj[r, lo + j] > 0``; whether one of them is NaN or infinite."""
    word = np.uint64(0)
    bad = False
    for j in range(n):
        v = proj[r, lo + j]
        word |= np.uint64(v > 0) << np.uint64(j)
        bad |= v - v != 0  # true for +-inf and NaN only
    return word, bad


def _sign_word(proj: np.ndarray, r: int, lo: int) -> tuple[np.uint64, bool]:
    """:func:`_sign_bits` of the 64 values from ``proj[r, lo]``; one vector compare in compiled code."""
    return _sign_bits(proj, r, lo, 64)  # type: ignore[no-any-return]


@intrinsic
def _sign_word_vector(typingctx, proj, r, lo):  # type: ignore[no-untyped-def]
    def codegen(context, builder, signature, args):  # type: ignore[no-untyped-def]
        array = context.make_array(signature.args[0])(context, builder, value=args[0])
        cols = cgutils.unpack_tuple(builder, array.shape, 2)[1]
        vector = ir.VectorType(context.get_value_type(signature.args[0].dtype), 64)
        start = builder.add(builder.mul(args[1], cols), args[2])
        values = builder.load(builder.bitcast(builder.gep(array.data, [start]), vector.as_pointer()),
                              align=signature.args[0].dtype.bitwidth // 8)
        zero = ir.Constant(vector, None)
        word = builder.bitcast(builder.fcmp_ordered(">", values, zero), ir.IntType(64))
        bad = builder.bitcast(builder.fcmp_unordered("!=", builder.fsub(values, values), zero), ir.IntType(64))
        return context.make_tuple(builder, signature.return_type, [word, builder.icmp_unsigned("!=", bad, bad.type(0))])

    return types.Tuple((types.uint64, types.boolean))(proj, types.intp, types.intp), codegen


@overload(_sign_word, jit_options={"nogil": True})
def _sign_word_jit(proj, r, lo):  # type: ignore[no-untyped-def]
    if isinstance(proj, types.Array) and proj.layout == "C" and proj.dtype in (types.float32, types.float64):
        return lambda proj, r, lo: _sign_word_vector(proj, r, lo)
    return lambda proj, r, lo: _sign_bits(proj, r, lo, 64)


@jit()
def pack_projection(proj, out, nonfinite):  # type: ignore[no-untyped-def]
    """Pack ``proj > 0`` (rows x bits) into ``out`` (rows x W), LSB first.

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
                word, flag = _sign_word(proj, r, lo)
            else:
                word, flag = _sign_bits(proj, r, lo, bits - lo)
            out[r, w] = word
            bad |= flag
        nonfinite[r] = bad


@jit()
def project_pack(x, planes, lo, hi, out, nonfinite):  # type: ignore[no-untyped-def]
    """Rows ``lo..hi-1``: project ``x[r] @ planes`` and pack its signs into ``out[r]`` (no BLAS).

    ``x`` and ``planes`` have the working dtype. Each projection is summed in
    order over ``dim``, one vectorised pass over the bits per input value;
    ``nonfinite[r]`` as in :func:`pack_projection`.
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
        pack_projection(proj, out[r : r + 1], nonfinite[r : r + 1])
