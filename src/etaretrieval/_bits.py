"""Population count of a 64-bit word, as one machine instruction under Numba.

Numba 0.6x has no ``np.bitwise_count``; :func:`popcount` lowers to LLVM's
``ctpop`` intrinsic (``popcnt`` on x86-64) inside jitted code, and stays a plain
Python function when ``NUMBA_DISABLE_JIT=1``.
"""

from __future__ import annotations

from numba import types
from numba.extending import intrinsic, overload

__all__ = ["popcount"]


def popcount(x: int) -> int:
    """Number of set bits of the unsigned 64-bit word ``x``."""
    return bin(int(x) & 0xFFFF_FFFF_FFFF_FFFF).count("1")


@intrinsic
def _ctpop_u64(typingctx, x):
    if not isinstance(x, types.Integer):
        return None
    sig = types.int64(x)

    def codegen(context, builder, signature, args):
        (val,) = args
        ty = context.get_value_type(signature.args[0])
        count = builder.ctpop(val)
        if ty.width < 64:
            return builder.zext(count, context.get_value_type(types.int64))
        return count

    return sig, codegen


@overload(popcount, jit_options={"nogil": True})
def _popcount_impl(x):
    if isinstance(x, types.Integer):
        return lambda x: _ctpop_u64(x)
    return None
