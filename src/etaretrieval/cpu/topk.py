"""Top-K by Hamming distance without a comparison sort, plain and fused with an id lookup.

Each row takes four steps, no comparison sort among them and none with a
``B x L`` matrix:

1. *distances*: every position's distance goes to a uint16 scratch slot
   (``64 W + 1`` marks a position that is not valid). The loops have no
   branch (an out-of-range id only raises a flag and reads the last row) and write
   small stack buffers first, which the compiler knows alias nothing, so they
   are vectorised (gathers + vector popcount; a table larger than
   :data:`CACHED_TABLE_BYTES` takes one pass per signature word; keys
   shared by every row are copied word-major once per call and read in one
   contiguous pass per word): this is the only step that touches the ids
   and the table, i.e. the memory traffic of the floor.
2. *bound*: in rows of :data:`SAMPLE_MIN_LENGTH` or more, first the
   previous row's ``k``-th distance plus one (rows of a batch have similar
   distances): if it has at least ``k`` positions at or below it, and not
   too many, it is ``v`` (the next step's scan counts them). Otherwise a
   binary search over distances, counting with vector
   compares in every :data:`SAMPLE_STRIDE`-th block of :data:`LANES`
   positions, gives a distance ``v`` with, very likely, at least ``k``
   positions at or below it. Rows shorter than :data:`SAMPLE_MIN_LENGTH`
   count every block: the exact bound, searched from the previous row's
   ``k``-th distance (two counts when it is the same, as is common).
3. *candidates*: one scan, :data:`LANES` positions per vector compare
   (whose mask bits are visited one per hit), collects every position at
   distance ``<= v``. If there are fewer than ``k`` (an unlucky sample), the
   exact bound is found as for short rows and the scan is repeated.
4. *selection*: a counting sort of the candidates by distance (they are
   few, and its loops branch on no data), placing them newest first within
   a distance; the first ``k`` go out.

The result is ordered by (distance ascending, position descending) in
``O(L)`` per row, plus ``O(n + v)`` (``n`` candidates, about ``2.5 k``).
"""

from __future__ import annotations

import functools
from typing import Any

import numba
import numpy as np
import numpy.typing as npt
from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.core.typing import signature as call_signature
from numba.extending import intrinsic, lower_builtin, type_callable
from numba.np.arrayobj import populate_array

from .. import config
from .._bits import popcount
from .._jit import PURE_PYTHON, array_type, compiled, jit, kernel_input
from .._threads import parallel_rows
from .._validate import MAX_WORDS, TopkCall, host_lengths, ids_error, results

__all__ = ["run", "pass_variant", "lookup_fast", "lookup_at", "small_entry", "topk_keys", "topk_lookup", "CHUNK",
           "LANES", "SAMPLE_STRIDE", "SAMPLE_MIN_LENGTH", "WIDE", "CACHED_TABLE_BYTES", "SMALL_WORK", "SMALL_RESULTS",
           "DONE", "NOT_SMALL", "BAD_ID"]

#: Positions per stack buffer of the distance step.
CHUNK = 1024

#: One block of :data:`LANES` distances in ``SAMPLE_STRIDE`` enters the sample that bounds the threshold.
SAMPLE_STRIDE = 8

#: Rows shorter than this count every block for the bound (it is then exact).
SAMPLE_MIN_LENGTH = 4096

#: Masked pre-gathered keys of at least this many words are read along each
#: row (contiguous vector loads) rather than one pass per word (unmasked keys
#: are, from four words, in the distance pass's first pass). Tables above
#: :data:`CACHED_TABLE_BYTES` take one gather pass per word whatever ``W``
#: (faster than reading along each row; see the performance guide).
WIDE = 8

#: Tables of at most this many bytes are read one position at a time, every
#: word at once: they stay in cache, and one pass beats several. Larger
#: tables take one gather pass per word (more cache misses in flight); the
#: performance guide has the measured crossover.
CACHED_TABLE_BYTES = 8 << 20

#: Positions per test of the candidate scan (one bit each in a uint64 mask).
LANES = 64

#: Start value of a position that is not valid: distances added to it stay
#: above any distance, and clamp to ``64 W + 1`` at the end.
_UNSET = np.uint16(0x8000)


def _stack_buffer(dtype: type) -> npt.NDArray[np.generic]:
    """:data:`CHUNK` elements of work space, on the caller's stack in compiled code.

    Stack memory aliases no argument array, so a loop that gathers from the
    table and stores here can be vectorised. Pure Python (``NUMBA_DISABLE_JIT=1``)
    gets a heap array.
    """
    return np.empty(CHUNK, dtype=dtype)


@type_callable(_stack_buffer)
def _stack_buffer_type(context):
    def typer(dtype):
        return types.Array(dtype.instance_type, 1, "C") if isinstance(dtype, types.NumberClass) else None

    return typer


@lower_builtin(_stack_buffer, types.NumberClass)
def _stack_buffer_code(context, builder, signature, args):
    """An ``alloca`` in the caller's entry block, as an array (lowered in place: no function of its own to compile)."""
    array = signature.return_type
    element = context.get_value_type(array.dtype)
    itemsize = context.get_constant(types.intp, context.get_abi_sizeof(element))
    out = context.make_array(array)(context, builder)
    populate_array(out, data=cgutils.alloca_once(builder, element, size=CHUNK),
                   shape=[context.get_constant(types.intp, CHUNK)], strides=[itemsize], itemsize=itemsize, meminfo=None)
    return out._getvalue()


def _below_mask(scratch: npt.NDArray[np.uint16], start: int, v: int) -> np.uint64:
    """Bit ``i`` set iff ``scratch[start + i] <= v``, for the :data:`LANES` slots from ``start``."""
    bits = np.packbits(scratch[start : start + LANES] <= v, bitorder="little")
    return np.uint64(int.from_bytes(bits.tobytes(), "little"))


@type_callable(_below_mask)
def _below_mask_type(context):
    def typer(scratch, start, v):
        if isinstance(scratch, types.Array) and scratch.dtype == types.uint16 and scratch.layout == "C":
            return call_signature(types.uint64, scratch, types.int64, types.int64)
        return None

    return typer


@lower_builtin(_below_mask, types.Array, types.Integer, types.Integer)
def _below_mask_code(context, builder, signature, args):
    """One vector load and compare (two AVX-512 instructions, or their equivalent), lowered in place."""
    data = context.make_array(signature.args[0])(context, builder, value=args[0]).data
    lane = ir.IntType(16)
    vector = ir.VectorType(lane, LANES)
    values = builder.load(builder.bitcast(builder.gep(data, [args[1]]), vector.as_pointer()), align=2)
    limit = builder.insert_element(
        ir.Constant(vector, ir.Undefined), builder.trunc(args[2], lane), ir.Constant(ir.IntType(32), 0)
    )
    limit = builder.shuffle_vector(
        limit, ir.Constant(vector, ir.Undefined), ir.Constant(ir.VectorType(ir.IntType(32), LANES), None)
    )
    return builder.bitcast(builder.icmp_unsigned("<=", values, limit), ir.IntType(LANES))


@jit()
def _distance_pass(query, src, ids, b, end, mask, use_mask, pad, use_pad, scratch, words, lookup, cached):
    """Distances of row ``b`` into ``scratch[:end]``: position ``pos`` has signature ``src[item]``.

    ``item`` is ``ids[b, pos]`` with ``lookup`` (``src`` is the table) and
    ``pos`` itself otherwise (``src`` is ``keys[b]``; ``ids`` is not read).
    With ``lookup``, ``src`` must have a row. Returns ``(out_of_range,
    nvalid)``: whether a valid position holds an id outside the table (its
    distance is then meaningless: the last row stands in for it), and the
    number of valid positions. Per chunk, one pass checks the ids (a running
    maximum, and a clamp) and does the first signature word, then one pass
    per further word; indices are unsigned (no negative-index wraparound)
    and flags combine bitwise (no branches), so that every pass vectorises,
    whatever ``W``. With ``cached`` (a table of at most
    :data:`CACHED_TABLE_BYTES`, or unmasked pre-gathered keys of four words
    or more), the first pass does every word instead.
    ``words`` is ``src.shape[1]``, and the callers pass the flags
    (``lookup``, ``use_mask``, ``use_pad``, ``cached``) and one or two words
    as literals (:func:`pass_variant`): each combination is compiled apart,
    its tests folded away by LLVM and its word loop unrolled (one word: no
    row buffer, no further-word pass). From four words, a cached table is read with vector loads along
    each row (faster there than unrolled gathers).
    """
    rows = _stack_buffer(np.uint64)
    dist = _stack_buffer(np.uint16)
    nrows = np.uint64(src.shape[0])
    invalid = np.uint16(64 * words + 1)
    zero = np.uint64(0)
    one = np.uint64(1)
    last = max(nrows, one) - one  # the last row (a table has one; keys may have none)
    row = np.uint64(b)
    first = query[row, zero]
    largest = zero  # the largest valid id, as unsigned (a negative one is huge)
    nvalid = 0
    for lo in range(0, end, CHUNK):
        start = np.uint64(lo)
        n = min(CHUNK, end - lo)
        for j in range(n):
            pos = start + np.uint64(j)
            valid = one
            if use_mask:
                valid = np.uint64(mask[row, pos])
            item = pos
            if lookup:
                raw = np.int64(ids[row, pos])
                if use_pad:
                    valid &= np.uint64(raw != pad)
                item = np.uint64(raw)
                largest = max(largest, item if valid else zero)
                item = min(item, last)  # row N - 1 stands in for an id outside the table
                rows[j] = item
            if cached:  # every word, as one loop (whole vectors along the row for wide signatures)
                d = 0
                for w in range(words):
                    d += popcount(query[row, np.uint64(w)] ^ src[item, np.uint64(w)])
            else:
                d = popcount(first ^ src[item, zero])
            dist[j] = np.uint16(d) | (np.uint16(0) if valid else _UNSET)
            nvalid += np.int64(valid)
        if cached:
            pass  # every word went into the first pass
        elif lookup or words < WIDE:  # one gather pass per further word
            for w in range(1, words):
                word = query[row, np.uint64(w)]
                for j in range(n):
                    item = rows[j] if lookup else start + np.uint64(j)
                    dist[j] += np.uint16(popcount(word ^ src[item, np.uint64(w)]))
        else:  # long pre-gathered keys: contiguous vector loads along each row
            for j in range(n):
                item = rows[j] if lookup else start + np.uint64(j)
                d = 0
                for w in range(1, words):
                    d += popcount(query[row, np.uint64(w)] ^ src[item, np.uint64(w)])
                dist[j] += np.uint16(d)
        for j in range(n):
            scratch[start + np.uint64(j)] = min(dist[j], invalid)
    return lookup and largest >= nrows, nvalid


@jit()
def _word_major_pass(query, keys_t, b, end, mask, use_mask, scratch, words):
    """Distances of row ``b`` to word-major keys ``keys_t`` (``(W, L)``, shared by every row) into ``scratch[:end]``.

    One pass per word over contiguous memory: whole vectors of positions,
    without the gathers or the per-position sums of :func:`_distance_pass`.
    Returns the number of valid positions.
    """
    dist = _stack_buffer(np.uint16)
    invalid = np.uint16(64 * words + 1)
    row = np.uint64(b)
    zero = np.uint64(0)
    nvalid = 0
    for lo in range(0, end, CHUNK):
        start = np.uint64(lo)
        n = min(CHUNK, end - lo)
        first = query[row, zero]
        for j in range(n):
            pos = start + np.uint64(j)
            valid = np.uint64(mask[row, pos]) if use_mask else np.uint64(1)
            dist[j] = np.uint16(popcount(first ^ keys_t[zero, pos])) | (np.uint16(0) if valid else _UNSET)
            nvalid += np.int64(valid)
        for w in range(1, words):
            word = query[row, np.uint64(w)]
            for j in range(n):
                dist[j] += np.uint16(popcount(word ^ keys_t[np.uint64(w), start + np.uint64(j)]))
        for j in range(n):
            scratch[start + np.uint64(j)] = min(dist[j], invalid)
    return nvalid


@jit(inline="always")
def _first_bad(ids, b, end, mask, use_mask, pad, use_pad, nrows):
    """First valid position of row ``b`` whose id is outside ``[0, nrows)``, or ``-1``."""
    for pos in range(end):
        raw = np.int64(ids[b, pos])
        if (not use_mask or mask[b, pos]) and (not use_pad or raw != pad) and not 0 <= raw < nrows:
            return pos
    return -1


@jit()
def _count_below(scratch, end, v, step):
    """The number of slots at most ``v`` in blocks ``0, step, 2 step, ...`` of :data:`LANES` slots below ``end``."""
    count = 0
    for block in range(0, (end + LANES - 1) // LANES, step):
        count += popcount(_below_mask(scratch, block * LANES, v))
    return count


@jit()
def _smallest(scratch, end, step, need, top, hint):
    """The smallest distance with ``need`` slots at or below it in :func:`_count_below`'s blocks, or ``top``.

    A binary search over distances: each step is one vector compare per
    block. A ``hint`` in ``[0, top]`` (the previous row's answer) first
    gallops from there (steps 1, 2, 4, ... away from it): two counts when it
    is the answer, instead of ``log2(top)``.
    """
    low, high = 0, top  # the answer lies in [low, high]
    if 0 <= hint <= top:
        gap = 1
        if _count_below(scratch, end, hint, step) >= need:  # the answer is at most hint
            high = hint
            while gap <= high and _count_below(scratch, end, high - gap, step) >= need:
                high -= gap
                gap *= 2
            low = max(high - gap + 1, 0)
        else:  # above hint (or, with hint == top, top itself)
            low = min(hint + 1, top)
            while low + gap - 1 < top and _count_below(scratch, end, low + gap - 1, step) < need:
                low += gap
                gap *= 2
            high = min(low + gap - 1, top)
    while low < high:
        mid = (low + high) // 2
        if _count_below(scratch, end, mid, step) >= need:
            high = mid
        else:
            low = mid + 1
    return low


@jit()
def _bound(scratch, end, nvalid, take, top, exact, hint):
    """A distance with, very likely, ``take`` valid positions at or below it (``top`` is ``64 W``).

    The smallest such distance for short rows and with ``exact`` (searched
    from ``hint``, ``-1``: none); otherwise from a sample of every
    :data:`SAMPLE_STRIDE`-th block of :data:`LANES`.
    """
    if take == nvalid:
        return top
    # The steps are literals (each count loop compiled for its step: faster), the hint not (-1 is no hint, as
    # an int64: a literal -1 would compile a variant of _count_below of its own).
    if exact or end < SAMPLE_MIN_LENGTH:
        return _smallest(scratch, end, 1, take, top, hint)
    sampled = _count_below(scratch, end, top, SAMPLE_STRIDE)  # valid positions in the sample
    # 1.5 times the expected count in the sample, plus 3: about 2.5 k
    # candidates, and a sample too low to give k about once in 300 rows.
    need = (3 * take * sampled + 2 * nvalid - 1) // (2 * nvalid) + 3
    return _smallest(scratch, end, SAMPLE_STRIDE, need, top, np.int64(-1))


@jit()
def _pop_lowest(bits, base, cand, n):
    """Append ``base`` + the index of the lowest set bit of ``bits`` (if any) to ``cand[n]``, without a branch.

    Returns ``(bits without that bit, new n)``; with ``bits == 0`` it writes
    ``cand[n]`` (one spare slot) but does not count it.
    """
    one = np.uint64(1)
    some = bits != 0
    low = bits | np.uint64(not some)  # never 0, so that low - 1 cannot wrap
    cand[n] = base + popcount(low ^ (low - one)) - 1
    return bits & (bits - np.uint64(some)), n + some


@jit()
def _candidates(scratch, end, v, cand):
    """Positions at distance ``<= v`` into ``cand``, oldest first; returns their number.

    ``scratch`` holds a multiple of :data:`LANES` slots, those at and after
    ``end`` not valid. Each block's first two hits are taken without a branch
    (at about ``2.5 k`` candidates per row, most blocks hold 0, 1 or 2 and a
    branch on their number would be mispredicted), further ones in a loop.
    """
    n = np.int64(0)  # an int64 from the start: a literal 0 would compile a variant of _pop_lowest of its own
    for block in range((end + LANES - 1) // LANES):
        below = _below_mask(scratch, block * LANES, v)
        base = block * LANES
        below, n = _pop_lowest(below, base, cand, n)
        below, n = _pop_lowest(below, base, cand, n)
        while below:
            below, n = _pop_lowest(below, base, cand, n)
    return n


@jit()
def _select(scratch, end, nvalid, k, top, work, idx_row, dist_row, guess):
    """Write the top-``k`` of ``scratch[:end]`` in (distance, -position) order, ``-1`` tails.

    ``top`` is ``64 W``, the largest distance; ``work`` is :func:`_workspace`'s
    ``(cand, cand_dist, order, count)``. ``guess`` (``-1``: none), the
    previous row's ``k``-th distance plus one, is tried as the bound first in
    rows of :data:`SAMPLE_MIN_LENGTH` or more: if between ``k`` and
    ``8 k +`` :data:`LANES` positions lie at or below it, they hold the
    top-``k`` (only when too few or too many is the bound searched). Returns
    the next row's guess.
    """
    cand, cand_dist, order, count = work
    take = min(k, nvalid)
    if take > 0:
        v = guess
        n = _candidates(scratch, end, v, cand) if guess >= 0 and end >= SAMPLE_MIN_LENGTH else 0
        if not take <= n <= 8 * k + LANES:
            v = _bound(scratch, end, nvalid, take, top, False, guess - 1)
            n = _candidates(scratch, end, v, cand)
        if n < take:  # the sample under-estimated the bound: the exact one
            v = _bound(scratch, end, nvalid, take, top, True, guess - 1)
            n = _candidates(scratch, end, v, cand)
        # A counting sort of the candidates by distance, newest first within
        # a distance: no branch depends on the data.
        count[: v + 1] = 0
        for i in range(n):
            d = scratch[cand[i]]
            cand_dist[i] = d
            count[d] += 1
        slot = 0
        for d in range(v + 1):  # count[d]: the first slot at distance d
            here = count[d]
            count[d] = slot
            slot += here
        for i in range(n - 1, -1, -1):
            d = cand_dist[i]
            order[count[d]] = cand[i]
            count[d] += 1
        for p in range(take):
            idx_row[p] = order[p]
            dist_row[p] = scratch[order[p]]
    for p in range(take, k):
        idx_row[p] = -1
        dist_row[p] = -1
    return min(dist_row[take - 1] + 1, top) if take > 0 else guess


@jit(inline="always")
def _workspace(length, words):
    """Per-task scratch (a multiple of :data:`LANES` slots) and :func:`_select`'s buffers."""
    padded = (length + LANES - 1) // LANES * LANES
    work = (
        np.empty(padded + 1, dtype=np.int32),  # candidate positions, and a spare slot
        np.empty(padded, dtype=np.uint16),  # candidate distances
        np.empty(padded, dtype=np.int32),  # candidate positions in result order
        np.empty(64 * words + 1, dtype=np.int32),  # candidates per distance, then first slots
    )
    return np.empty(padded, dtype=np.uint16), work


@jit()
def topk_keys(query, keys, keys_t, length, k, lengths, mask, lo, hi, base, idx, dist, use_mask, use_pad, cached,
              words):
    """Top-``k`` of the ``length`` keys of each row ``lo..hi-1`` for ``query[b]``; serial.

    ``keys`` is ``(B, L, W)`` and ``keys_t`` ``None``, or (keys shared by
    every row) ``keys`` is ``None`` and ``keys_t`` the word-major ``(W, L)``
    keys, read by :func:`_word_major_pass` (the branch that reads the
    ``None`` one is not compiled). ``lengths`` ``(B,)`` int64 gives each
    row's valid prefix, ``mask`` ``(B, L)`` the valid positions where
    ``use_mask``. Row ``b``'s result goes to row ``b - base`` of ``idx`` and
    ``dist``: :func:`etaretrieval._threads.parallel_rows` spreads row ranges
    over threads. The last four arguments select the distance pass
    (``use_pad`` is false, ``words`` is ``W``): the driver passes the
    literals of the variant it runs (:func:`pass_variant`).
    """
    invalid = 64 * query.shape[1] + 1
    scratch, work = _workspace(length, query.shape[1])
    guess = np.int64(-1)  # an int64 from the start: a literal -1 would compile a variant of _select of its own
    for b in range(lo, hi):
        end = lengths[b]
        if keys_t is not None:
            nvalid = _word_major_pass(query, keys_t, b, end, mask, use_mask, scratch, words)
        elif keys is not None:
            _, nvalid = _distance_pass(query, keys[b], mask, b, end, mask, use_mask, 0, use_pad, scratch, words,
                                       False, cached)
        scratch[end : (end + LANES - 1) // LANES * LANES] = invalid  # the last block's tail
        guess = _select(scratch, end, nvalid, k, invalid - 1, work, idx[b - base], dist[b - base], guess)


@jit()
def topk_lookup(query, ids, table, k, lengths, mask, pad, lo, hi, base, idx, dist, bad, use_mask, use_pad, cached,
                words):
    """Fused ids -> table rows -> Hamming -> top-``k``, rows ``lo..hi-1`` (serial, like :func:`topk_keys`).

    ``ids`` ``(B, L)`` index the ``(N, W)`` ``table``; ``mask`` (read where
    ``use_mask``) and ``pad`` (the padding id's int64 bits, compared where
    ``use_pad``) exclude positions; ``cached``: every word in one pass per
    position (see :func:`_distance_pass`); ``words`` is ``W`` (the last four
    arguments are the literals of the variant the driver runs: see
    :func:`pass_variant`). Row ``b``'s result goes to row ``b - base`` of
    ``idx`` and ``dist``; ``bad[b - base]`` receives the first valid
    position of row ``b`` holding an id outside ``[0, N)`` (it is not
    written otherwise); such a row gets no result. Returns the first such
    row of the range, or ``-1``. Positions that are not valid never index
    the table outside its rows.
    """
    nrows = table.shape[0]
    invalid = 64 * table.shape[1] + 1
    scratch, work = _workspace(ids.shape[1], table.shape[1])
    guess = np.int64(-1)  # as in topk_keys
    first_bad = -1
    for b in range(lo, hi):
        end = lengths[b]
        if nrows == 0:  # no row to read in place of a bad id
            out_of_range, nvalid = True, 0
        else:
            out_of_range, nvalid = _distance_pass(query, table, ids, b, end, mask, use_mask, pad, use_pad, scratch,
                                                  words, True, cached)
        if out_of_range:
            bad[b - base] = _first_bad(ids, b, end, mask, use_mask, pad, use_pad, nrows)
            if bad[b - base] >= 0:
                first_bad = b if first_bad < 0 else first_bad
                continue
            scratch[:end] = invalid  # empty table and no valid position: an empty result
        scratch[end : (end + LANES - 1) // LANES * LANES] = invalid  # the last block's tail
        guess = _select(scratch, end, nvalid, k, invalid - 1, work, idx[b - base], dist[b - base], guess)
    return first_bad


_OFF = types.literal(False)


def pass_variant(lookup: bool, use_mask: bool, use_pad: bool, cached_table: bool, words: int
                 ) -> tuple[tuple[bool, bool, bool, int], tuple[Any, ...]]:
    """The variant of :func:`_distance_pass` a call runs: flags ``(use_mask, use_pad, cached, words)`` and their types.

    Returns the flags' values and their Numba types for the drivers'
    signatures (:func:`etaretrieval._jit.compiled`): a literal type fixes a
    flag in the compiled code (its tests removed, one or two words
    unrolled), ``boolean`` / ``int64`` leave it to run time. A lookup
    (``cached_table``: a table of at most :data:`CACHED_TABLE_BYTES`) reads
    masks and padding ids in one variant with both tests at run time, one
    word in a variant without row buffer nor further-word pass, a cached
    table of two words with two unrolled gathers per vector of positions,
    one of more words with vector loads along each row, a larger table with
    one gather pass per word. Pre-gathered keys read a mask in one variant;
    from four words (four unrolled) they are read along each row.
    """
    if use_mask or use_pad:
        if lookup:
            return (use_mask, use_pad, False, words), (types.boolean, types.boolean, _OFF, types.int64)
        return (True, False, False, words), (types.literal(True), _OFF, _OFF, types.int64)
    if lookup:
        cached = cached_table and words > 1
        fixed = words == 1 or (cached and words == 2)
    else:
        cached, fixed = words >= 4, words == 4
    return (False, False, cached, words), (_OFF, _OFF, types.literal(cached),
                                           types.literal(words) if fixed else types.int64)


_SIGNATURES = array_type(np.uint64, 2)
_RESULTS = (array_type(np.int64, 2, readonly=False), array_type(np.int32, 2, readonly=False))


_LENGTHS = array_type(np.int64, 1, readonly=False)  # fresh from host_lengths / _host_validity


@functools.lru_cache(maxsize=None)
def _keys_kernel(shared: bool, use_mask: bool, words: int) -> tuple[tuple[bool, bool, bool, int], Any]:
    """The flags and :func:`topk_keys` compiled for the arguments :func:`_run_keys` passes."""
    if shared:  # the word-major pass, its mask test at run time
        flags, signature = (use_mask, False, False, words), (types.boolean, _OFF, _OFF, types.int64)
    else:
        flags, signature = pass_variant(False, use_mask, False, False, words)
    count = types.int64
    keys, keys_t = (types.none, _SIGNATURES) if shared else (array_type(np.uint64, 3), types.none)
    return flags, compiled(topk_keys, (_SIGNATURES, keys, keys_t, count, count, _LENGTHS, array_type(np.bool_, 2),
                                       count, count, count, *_RESULTS, *signature))


@functools.lru_cache(maxsize=None)
def _lookup_kernel(ids_dtype: np.dtype, use_mask: bool, use_pad: bool, cached_table: bool, words: int
                   ) -> tuple[tuple[bool, bool, bool, int], Any]:
    """The flags and :func:`topk_lookup` compiled for the arguments :func:`run` passes (``ids_dtype`` ids)."""
    flags, signature = pass_variant(True, use_mask, use_pad, cached_table, words)
    count = types.int64
    return flags, compiled(topk_lookup, (_SIGNATURES, array_type(ids_dtype, 2), _SIGNATURES, count, _LENGTHS,
                                         array_type(np.bool_, 2), count, count, count, count, *_RESULTS,
                                         array_type(np.int64, 1, readonly=False), *signature))


#: Codes of :func:`_lookup_small`: the call was done, or the general path must run (and raise, if the call is bad).
DONE, NOT_SMALL, BAD_ID = 0, 1, 2

#: :func:`lookup_fast` takes calls of at most this much work (``B x L x W``); larger ones run faster
#: in the general kernels (their selection reads each row once, with vector compares).
SMALL_WORK = 1 << 15

#: :func:`lookup_fast` handles calls of at most this many result slots (``B x k``).
SMALL_RESULTS = 1 << 22


def _lookup_small(query, ids, offsets, table, idx, dist):
    """Fast path of :func:`etaretrieval.topk_hamming_lookup` into ``idx`` and ``dist``: a code, checks inside.

    ``query`` ``(B, W)`` and ``table`` ``(N, W)`` uint64 and ``ids`` int64 or
    int32, all C-contiguous; no mask, lengths nor padding id. Padded rows:
    ``ids`` ``(B, L)`` and ``offsets`` empty. Ragged rows (as
    :func:`etaretrieval.ragged.topk_hamming_lookup_ragged`): ``ids`` ``(1, T)``
    holds the flat ids and row ``b`` is ``ids[0, offsets[b]:offsets[b + 1]]``
    (``offsets`` ``(B + 1,)`` int64 or int32). ``idx`` ``(B, k)`` int64 and
    ``dist`` ``(B, k)`` int32 are allocated by the caller (cheaper than
    returning arrays the compiled code allocates). Checks the shapes, the
    offsets and the ids; any failure returns a code other than :data:`DONE`
    (the outputs then hold nothing to read) and the caller runs the general
    path, which raises the error of the bad argument.

    One self-contained function, so that a fresh cache compiles it in a
    fraction of the general kernels' time (a jitted call chain is optimised
    again at every level). Per row: the distances (one branch-free pass:
    an id outside the table reads the last row and is reported after the
    row), then a counting sort over ``0..64 W``: ``first[d]`` becomes the
    number of positions nearer than ``d``, and the positions, newest first,
    take the slots ``first[d], first[d] + 1, ...``; those below ``k`` are
    the results, in the order of the general path.
    """
    batch, words = query.shape
    nrows = table.shape[0]
    k = idx.shape[1]
    ragged = offsets.shape[0] > 0
    if not ((ids.shape[0] == 1 and offsets.shape[0] == batch + 1) if ragged else ids.shape[0] == batch):
        return NOT_SMALL
    if not (table.shape[1] == words and 1 <= words <= MAX_WORDS and nrows > 0
            and idx.shape[0] == batch and dist.shape[0] == batch and dist.shape[1] == k):
        return NOT_SMALL
    if ragged:  # from >= 0 to <= T, non-decreasing
        if offsets[0] < 0 or offsets[batch] > ids.shape[1]:
            return NOT_SMALL
        for b in range(batch):
            if offsets[b] > offsets[b + 1]:
                return NOT_SMALL
    distances = np.empty(ids.shape[1], dtype=np.int32)
    first = np.empty(64 * words + 1, dtype=np.int64)
    last = np.uint64(nrows - 1)
    for b in range(batch):
        row, start, length = b, 0, ids.shape[1]
        if ragged:
            row, start, length = 0, np.int64(offsets[b]), np.int64(offsets[b + 1]) - np.int64(offsets[b])
        take = min(k, length)
        largest = np.uint64(0)  # the largest id, as unsigned (a negative one is huge)
        if words == 1:  # one gather per position: a loop the compiler vectorises
            word = query[b, 0]
            for pos in range(length):
                item = np.uint64(ids[row, start + pos])
                largest = max(largest, item)
                distances[pos] = popcount(word ^ table[min(item, last), 0])
        else:
            for pos in range(length):
                item = np.uint64(ids[row, start + pos])
                largest = max(largest, item)
                item = min(item, last)
                d = 0
                for w in range(words):
                    d += popcount(query[b, w] ^ table[item, w])
                distances[pos] = d
        if largest > last:
            return BAD_ID
        for d in range(64 * words + 1):
            first[d] = 0
        for pos in range(length):
            first[distances[pos]] += 1
        nearer = 0
        for d in range(64 * words + 1):
            here = first[d]
            first[d] = nearer
            nearer += here
        for pos in range(length - 1, -1, -1):
            d = distances[pos]
            slot = first[d]
            first[d] = slot + 1
            if slot < take:
                idx[b, slot] = pos
                dist[b, slot] = d
        for slot in range(take, k):
            idx[b, slot] = -1
            dist[b, slot] = -1
    return DONE


#: Numba types of the outputs ``idx`` and ``dist`` of :func:`_lookup_small`.
_OUTPUTS = (types.Array(types.int64, 2, "C"), types.Array(types.int32, 2, "C"))

_UINT64 = np.dtype(np.uint64)
#: The ``offsets`` of padded rows in :func:`_lookup_small`.
_NO_OFFSETS = kernel_input(np.zeros(0, dtype=np.int64))
_FAST_IDS = (np.dtype(np.int64), np.dtype(np.int32))


@functools.lru_cache(maxsize=None)
def small_entry(ids_dtype: np.dtype) -> Any:
    """The compiled :func:`_lookup_small` for C-contiguous ``ids_dtype`` (int64 or int32) ids, one variant each.

    It is compiled (or loaded from Numba's cache) for read-only arrays on
    the first call, then closed to further compiles: writeable arrays are
    passed as read-only ones (a safe conversion), so no layout or flag a
    caller meets compiles a new variant inside a serving call.
    """
    if PURE_PYTHON:
        return _lookup_small
    entry = jit()(_lookup_small)
    signature = types.Array(types.uint64, 2, "C", readonly=True)
    entry.compile((signature, types.Array(numba.from_dtype(ids_dtype), 2, "C", readonly=True),
                   types.Array(types.int64, 1, "C", readonly=True), signature, *_OUTPUTS))
    entry.disable_compile()
    return entry


def lookup_fast(query: Any, ids: Any, table: Any, k: Any) -> tuple[np.ndarray, np.ndarray] | None:
    """``(idx, dist)`` of a small common lookup through :func:`small_entry`, or ``None``: use the general path.

    The guard: NumPy arrays, uint64 signatures and int64/int32 ids, all
    C-contiguous and 2-D, a Python int ``k >= 0`` with at most
    :data:`SMALL_RESULTS` result slots (the outputs are allocated here) and
    work of at most :data:`SMALL_WORK` that :func:`parallel_rows` would run
    in the calling thread (below ``2 x SERIAL_WORK``); the entry checks the rest.
    """
    if not (type(query) is np.ndarray and type(ids) is np.ndarray and type(table) is np.ndarray
            and query.dtype == _UINT64 and table.dtype == _UINT64
            and (ids.dtype == _FAST_IDS[0] or ids.dtype == _FAST_IDS[1])
            and query.ndim == 2 and ids.ndim == 2 and table.ndim == 2
            and query.flags.c_contiguous and ids.flags.c_contiguous and table.flags.c_contiguous
            and type(k) is int and 0 <= k <= SMALL_RESULTS and query.shape[0] * k <= SMALL_RESULTS
            and ids.size * query.shape[1] <= min(SMALL_WORK, 2 * config.SERIAL_WORK - 1)):
        return None
    idx, dist = np.empty((query.shape[0], k), dtype=np.int64), np.empty((query.shape[0], k), dtype=np.int32)
    return (idx, dist) if small_entry(ids.dtype)(query, ids, _NO_OFFSETS, table, idx, dist) == DONE else None


#: :func:`_lookup_small` called from :func:`_lookup_at` (its own variants: writeable C arrays).
_lookup_small_jit = jit()(_lookup_small)


@intrinsic
def _pointer_at(typingctx, address, dtype):
    """The integer ``address`` as a pointer to ``dtype`` values."""
    if not (isinstance(address, types.Integer) and isinstance(dtype, types.NumberClass)):
        return None
    pointer = types.CPointer(dtype.instance_type)

    def codegen(context, builder, signature, args):
        return builder.inttoptr(args[0], context.get_value_type(pointer))

    return pointer(address, dtype), codegen


def _lookup_at(query, query_rows, words, ids, ids_rows, length, ids_dtype, offsets, count, offsets_dtype, table,
               table_rows, table_words, idx, dist):
    """:func:`_lookup_small` on C-contiguous memory given by addresses and sizes (e.g. CPU tensors' ``data_ptr()``).

    Each address is read as an array of its own shape (uint64 signatures,
    ``ids_dtype`` ids, ``count`` offsets of ``offsets_dtype``: none for
    padded rows) and :func:`_lookup_small` checks that they agree, so no
    read leaves the memory the caller described.
    """
    return _lookup_small_jit(numba.carray(_pointer_at(query, np.uint64), (query_rows, words)),
                             numba.carray(_pointer_at(ids, ids_dtype), (ids_rows, length)),
                             numba.carray(_pointer_at(offsets, offsets_dtype), count),
                             numba.carray(_pointer_at(table, np.uint64), (table_rows, table_words)), idx, dist)


@functools.lru_cache(maxsize=None)
def _at_entry(ids_dtype: np.dtype, offsets_dtype: np.dtype) -> Any:
    """The compiled :func:`_lookup_at` for ``ids_dtype`` ids and ``offsets_dtype`` offsets, closed to new compiles."""
    entry = jit()(_lookup_at)
    size, address = types.int64, types.uintp
    signature = (address, size, size, address, size, size, types.NumberClass(numba.from_dtype(ids_dtype)),
                 address, size, types.NumberClass(numba.from_dtype(offsets_dtype)), address, size, size, *_OUTPUTS)
    entry.compile(signature)
    entry.disable_compile()
    return entry.overloads[signature].entry_point  # called without the dispatcher's type resolution


_INT64 = np.dtype(np.int64)
#: ``(address, count, dtype)`` of no offsets (padded rows).
_PADDED = (0, 0, _INT64)


def lookup_at(query: tuple[int, int, int], ids: tuple[int, int, int], ids_dtype: np.dtype,
              table: tuple[int, int, int], k: int, offsets: tuple[int, int, np.dtype] = _PADDED
              ) -> tuple[np.ndarray, np.ndarray] | None:
    """``(idx, dist)`` of a small common lookup on memory the caller owns, or ``None``: use the general path.

    ``query``, ``ids`` and ``table`` are ``(address, rows, columns)`` of
    C-contiguous uint64 signatures and int64/int32 (``ids_dtype``) ids, alive
    for the call (the torch ops pass their tensors' ``data_ptr()`` and
    shape: no array view to build). Ragged rows: ``ids`` is ``(address, 1,
    T)`` of the flat ids and ``offsets`` ``(address, B + 1, dtype)`` of
    int64/int32 offsets (see :func:`_lookup_small`). The guard of
    :func:`lookup_fast` on the sizes and ``k`` applies; the entry checks the
    rest. ``None`` always in pure Python (``NUMBA_DISABLE_JIT=1``), where
    memory cannot be read by address.
    """
    batch = query[1]
    if PURE_PYTHON or not (type(k) is int and 0 <= k <= SMALL_RESULTS and batch * k <= SMALL_RESULTS
                           and ids[1] * ids[2] * query[2] <= min(SMALL_WORK, 2 * config.SERIAL_WORK - 1)):
        return None
    idx, dist = np.empty((batch, k), dtype=np.int64), np.empty((batch, k), dtype=np.int32)
    code = _at_entry(ids_dtype, offsets[2])(*query, *ids, ids_dtype.type, offsets[0], offsets[1], offsets[2].type,
                                             *table, idx, dist)
    return (idx, dist) if code == DONE else None


_NO_MASK = kernel_input(np.zeros((0, 0), dtype=np.bool_))


def _host_validity(
    lengths: np.ndarray | None, mask: np.ndarray | None, left: bool, batch: int, length: int
) -> tuple[np.ndarray, np.ndarray | None]:
    """``(lengths, mask)`` for the kernels: ``(B,)`` int64 prefixes in ``0..L``, and ``(L,)`` / ``(B, L)`` bool or None.

    Front padding (``left``) turns ``lengths`` into the mask of the last
    ``lengths[b]`` positions of each row, one ``(L,)`` row when every row
    has the same length (shared sequences stay shared), and the lengths into ``L``.
    """
    n = host_lengths(lengths, batch, length)
    if left and lengths is not None and n.size and n.min() < length:
        start = length - (n[0] if n.min() == n.max() else n[:, None])  # the first valid position of each row
        return np.full(batch, length, dtype=np.int64), np.arange(length) >= start
    return n, mask


def _mask_input(mask: np.ndarray | None, batch: int, length: int) -> np.ndarray:
    """The kernels' mask argument: a read-only C-contiguous ``(B, L)`` bool array (one layout: one variant)."""
    if mask is None:
        return _NO_MASK
    return kernel_input(np.ascontiguousarray(np.broadcast_to(mask, (batch, length))))


def _run_keys(query: np.ndarray, keys: np.ndarray, k: int, lengths: np.ndarray, mask: np.ndarray | None,
              idx: np.ndarray, dist: np.ndarray) -> None:
    """:func:`topk_keys` over every row of ``(B, L, W)`` or shared ``(L, W)`` keys, on the calling thread or the pool.

    Shared keys (``(L, W)``, or a stride-0 broadcast of them) are copied
    word-major once; other keys are read in place when C-contiguous.
    """
    batch = query.shape[0]
    length, words = keys.shape[-2:]
    shared = keys.ndim == 2 or (batch > 1 and keys.strides[0] == 0)
    if shared and batch == 1:
        shared, keys = False, keys.reshape(1, length, words)
    q, m = kernel_input(query, contiguous=True), _mask_input(mask, batch, length)
    rows: np.ndarray | None
    keys_t: np.ndarray | None
    if shared:  # word-major keys
        rows, keys_t = None, kernel_input(np.ascontiguousarray((keys if keys.ndim == 2 else keys[0]).T))
    else:
        rows, keys_t = kernel_input(np.ascontiguousarray(keys)), None
    flags, kernel = _keys_kernel(shared, mask is not None, words)

    def run(lo: int, hi: int, base: int, idx_: np.ndarray, dist_: np.ndarray) -> None:
        kernel(q, rows, keys_t, length, k, lengths, m, lo, hi, base, idx_, dist_, *flags)

    parallel_rows(run, batch, batch * length * words, (idx, dist))


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


def _ids_input(ids: np.ndarray, batch: int) -> np.ndarray:
    """The kernels' ids argument: read-only C-contiguous ``(B, L)`` int32 or int64 (a copy of any other dtype)."""
    if ids.dtype not in _FAST_IDS:
        ids = ids.astype(np.int64)  # the same values; pad, as int64 bits, compares alike
    return kernel_input(np.ascontiguousarray(np.broadcast_to(ids, (batch, ids.shape[-1]))))


def run(call: TopkCall) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int32]]:
    """The CPU driver of a top-K call (:class:`etaretrieval._validate.TopkCall` of NumPy arrays).

    Checks the values the front ends leave to the driver (the range of
    ``lengths``, the ids), turns front padding into a mask and brings every
    array to one dtype and layout per argument (so a fixed, small set of
    kernel variants is ever compiled), then runs the kernels over the rows.
    Raises the :class:`IndexError` of the first valid position holding an id
    outside the table.
    """
    query, k = call.query, call.k
    batch = query.shape[0]
    length = call.length
    lengths, mask = _host_validity(call.lengths, call.mask, call.left, batch, length)
    idx, dist = results(batch, k)
    if not batch:
        return idx, dist
    if call.keys is not None:
        _run_keys(query, call.keys, k, lengths, mask, idx, dist)
        return idx, dist
    ids, table, pad = call.ids, call.table, call.pad
    if ids.ndim == 1 and (mask is None or mask.ndim == 1):
        gathered = _gather_shared(ids, table, lengths, mask, pad)
        if gathered is not None:  # many targets, one sequence: its signatures are gathered once
            keys, valid = gathered
            _run_keys(query, keys, k, lengths, valid, idx, dist)
            return idx, dist
    bad = np.empty(batch, dtype=np.int64)  # written only for rows with a bad id
    q, i = kernel_input(query, contiguous=True), _ids_input(ids, batch)
    t = kernel_input(np.ascontiguousarray(table))
    m, padding = _mask_input(mask, batch, length), 0 if pad is None else pad
    flags, kernel = _lookup_kernel(i.dtype, mask is not None, pad is not None, t.nbytes <= CACHED_TABLE_BYTES,
                                   call.words)

    def rows(lo: int, hi: int, base: int, idx_: np.ndarray, dist_: np.ndarray, bad_: np.ndarray) -> int:
        """The first row of ``lo..hi-1`` with a bad id, or -1."""
        return int(kernel(q, i, t, k, lengths, m, padding, lo, hi, base, idx_, dist_, bad_, *flags))

    first_bad = [r for r in parallel_rows(rows, batch, batch * length * call.words, (idx, dist, bad)) if r >= 0]
    if first_bad:
        row = min(first_bad)
        pos = int(bad[row])
        raise ids_error(row, pos, ids[pos] if ids.ndim == 1 else ids[row, pos], table.shape[0],
                        shared=ids.ndim == 1)
    return idx, dist
