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
   ``k``-th distance (two counts when it is the same, as is common: 8-12 %
   off a serving lookup of 1,024 targets over one sequence of 1,024).
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

import numba
import numpy as np
import numpy.typing as npt
from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic, overload

from .._bits import popcount
from .._jit import jit, kernel_input
from .._threads import parallel_rows
from .._validate import ids_error, results

__all__ = ["topk_hamming", "topk_hamming_lookup",
           "topk_keys", "topk_lookup", "CHUNK", "LANES", "SAMPLE_STRIDE", "SAMPLE_MIN_LENGTH", "WIDE",
           "CACHED_TABLE_BYTES"]

#: Positions per stack buffer of the distance step.
CHUNK = 1024

#: One block of :data:`LANES` distances in ``SAMPLE_STRIDE`` enters the sample that bounds the threshold.
SAMPLE_STRIDE = 8

#: Rows shorter than this count every block for the bound (it is then exact).
SAMPLE_MIN_LENGTH = 4096

#: Masked pre-gathered keys of at least this many words are read along each
#: row (contiguous vector loads) rather than one pass per word (unmasked keys
#: are, from four words, in the distance pass's first pass). Tables above
#: :data:`CACHED_TABLE_BYTES` take one gather pass per word whatever ``W``:
#: at 8 and 16 words (1M rows) that is 1.4-1.7 times faster than reading
#: along each row.
WIDE = 8

#: Tables of at most this many bytes are read one position at a time, every
#: word at once: they stay in cache, and one pass beats several. Larger
#: tables take one gather pass per word (more cache misses in flight). The
#: crossover measured on a 32 MiB L3 (AMD EPYC) lies between 5 and 13 MiB.
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


@intrinsic
def _alloca_chunk(typingctx, dtype):
    if not isinstance(dtype, types.NumberClass):
        return None
    element = dtype.instance_type

    def codegen(context, builder, signature, args):
        return cgutils.alloca_once(builder, context.get_value_type(element), size=CHUNK)

    return types.CPointer(element)(dtype), codegen


@overload(_stack_buffer, inline="always")  # inlined, so the alloca lands in the caller's frame
def _stack_buffer_jit(dtype):
    return lambda dtype: numba.carray(_alloca_chunk(dtype), CHUNK)


def _below_mask(scratch: npt.NDArray[np.uint16], start: int, v: int) -> np.uint64:
    """Bit ``i`` set iff ``scratch[start + i] <= v``, for the :data:`LANES` slots from ``start``."""
    bits = np.packbits(scratch[start : start + LANES] <= v, bitorder="little")
    return np.uint64(int.from_bytes(bits.tobytes(), "little"))


@intrinsic
def _below_mask_vector(typingctx, scratch, start, v):
    """One vector load and compare (two AVX-512 instructions, or their equivalent)."""
    if not (isinstance(scratch, types.Array) and scratch.dtype == types.uint16 and scratch.layout == "C"):
        return None

    def codegen(context, builder, signature, args):
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

    return types.uint64(scratch, types.int64, types.int64), codegen


@overload(_below_mask, jit_options={"nogil": True})
def _below_mask_jit(scratch, start, v):
    if isinstance(scratch, types.Array) and scratch.dtype == types.uint16 and scratch.layout == "C":
        return lambda scratch, start, v: _below_mask_vector(scratch, start, v)
    return None


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
    as literals: each combination is compiled apart with its tests removed
    and its word loop unrolled (one word: no row buffer, no further-word
    pass). From four words, a cached table is read with vector loads along
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
    without the gathers or the per-position sums of :func:`_distance_pass`
    (against ``(L, W)`` keys: 1.9x faster at 4 words, 3.7x at 8, 1.6x at 1).
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


@jit()
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
    if exact or end < SAMPLE_MIN_LENGTH:
        return _smallest(scratch, end, 1, take, top, hint)
    sampled = _count_below(scratch, end, top, SAMPLE_STRIDE)  # valid positions in the sample
    # 1.5 times the expected count in the sample, plus 3: about 2.5 k
    # candidates, and a sample too low to give k about once in 300 rows.
    need = (3 * take * sampled + 2 * nvalid - 1) // (2 * nvalid) + 3
    return _smallest(scratch, end, SAMPLE_STRIDE, need, top, -1)


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
    n = 0
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


@jit()
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
def topk_keys(query, keys, keys_t, shared, k, lengths, mask, use_mask, lo, hi, base, idx, dist):
    """Top-``k`` of ``keys[b]`` (``(B, L, W)``, may be a broadcast view) for each ``query[b]``, rows ``lo..hi-1``.

    With ``shared``, every row's keys are ``keys_t.T`` (word-major ``(W, L)``,
    read by :func:`_word_major_pass`; ``keys`` gives the shape only).
    Row ``b``'s result goes to row ``b - base`` of ``idx`` and ``dist``.
    Serial: :func:`etaretrieval._threads.parallel_rows` spreads row ranges over threads.
    """
    _, length, words = keys.shape
    invalid = 64 * words + 1
    scratch, work = _workspace(length, words)
    guess = -1
    for b in range(lo, hi):
        end = lengths[b]
        if shared:
            nvalid = _word_major_pass(query, keys_t, b, end, mask, use_mask, scratch, words)
        elif use_mask:
            _, nvalid = _distance_pass(query, keys[b], mask, b, end, mask, True, 0, False, scratch, words, False, False)
        elif words == 4:  # the common case, compiled apart with the test removed (literal flags); from four
            # words one pass with vector loads along each row beats a pass per word (1.3-1.4x at 4 words, as a
            # literal, 1.2-1.7x at 8 and 16; slower at 2)
            _, nvalid = _distance_pass(query, keys[b], mask, b, end, mask, False, 0, False, scratch, 4, False, True)
        elif words > 4:
            _, nvalid = _distance_pass(query, keys[b], mask, b, end, mask, False, 0, False, scratch, words, False,
                                       True)
        else:
            _, nvalid = _distance_pass(query, keys[b], mask, b, end, mask, False, 0, False, scratch, words, False,
                                       False)
        scratch[end : (end + LANES - 1) // LANES * LANES] = invalid
        guess = _select(scratch, end, nvalid, k, invalid - 1, work, idx[b - base], dist[b - base], guess)


@jit()
def topk_lookup(
    query, ids, table, k, lengths, mask, use_mask, pad, use_pad, cached, lo, hi, base, idx, dist, bad
):
    """Fused ids -> table rows -> Hamming -> top-``k``, rows ``lo..hi-1`` (serial, like :func:`topk_keys`).

    ``cached``: the table has at most :data:`CACHED_TABLE_BYTES` (one pass
    per position rather than per word). Row ``b``'s result goes to row
    ``b - base`` of ``idx`` and ``dist``; ``bad[b - base]`` receives the first valid
    position of row ``b`` holding an id outside ``[0, N)`` (it is not written
    otherwise); such a row gets no result. Returns the first such row of the
    range, or ``-1``. Positions that are not valid never index the table
    outside its rows.
    """
    length = ids.shape[1]
    nrows, words = table.shape
    invalid = 64 * words + 1
    scratch, work = _workspace(length, words)
    guess = -1
    first_bad = -1
    for b in range(lo, hi):
        end = lengths[b]
        if nrows == 0:  # no row to read in place of a bad id
            out_of_range, nvalid = True, 0
        elif use_mask or use_pad:
            out_of_range, nvalid = _distance_pass(query, table, ids, b, end, mask, use_mask, pad, use_pad, scratch,
                                                  words, True, False)
        # The common case, compiled apart with the tests removed (literal flags and word counts).
        elif words == 1:  # one word: no row buffer nor further-word pass
            out_of_range, nvalid = _distance_pass(query, table, ids, b, end, mask, False, pad, False, scratch, 1,
                                                  True, False)
        elif not cached:
            out_of_range, nvalid = _distance_pass(query, table, ids, b, end, mask, False, pad, False, scratch,
                                                  words, True, False)
        elif words == 2:  # unrolled: two gathers per vector of positions
            out_of_range, nvalid = _distance_pass(query, table, ids, b, end, mask, False, pad, False, scratch, 2,
                                                  True, True)
        else:  # vector loads along each row
            out_of_range, nvalid = _distance_pass(query, table, ids, b, end, mask, False, pad, False, scratch,
                                                  words, True, True)
        if out_of_range:
            bad[b - base] = _first_bad(ids, b, end, mask, use_mask, pad, use_pad, nrows)
            if bad[b - base] >= 0:
                first_bad = b if first_bad < 0 else first_bad
                continue
            scratch[:end] = invalid  # empty table and no valid position: an empty result
        scratch[end : (end + LANES - 1) // LANES * LANES] = invalid
        guess = _select(scratch, end, nvalid, k, invalid - 1, work, idx[b - base], dist[b - base], guess)
    return first_bad


_NO_MASK = kernel_input(np.zeros((0, 0), dtype=np.bool_))
_NO_KEYS = np.zeros((0, 0), dtype=np.uint64)



def _run_keys(q: np.ndarray, keys: np.ndarray, k: int, n: np.ndarray, m: np.ndarray | None,
              idx: np.ndarray, dist: np.ndarray) -> None:
    """:func:`topk_keys` over every row, on the calling thread or spread over the pool.

    Keys shared by every row (a broadcast view) are copied word-major once.
    """
    mask = _NO_MASK if m is None else kernel_input(m)
    batch, length, words = keys.shape
    shared = batch > 1 and keys.strides[0] == 0
    keys_t = kernel_input(np.ascontiguousarray(keys[0].T) if shared else _NO_KEYS)
    q, keys = kernel_input(q, contiguous=True), kernel_input(keys)
    parallel_rows(lambda lo, hi, base, i, d: topk_keys(q, keys, keys_t, shared, k, n, mask, m is not None, lo, hi,
                                                       base, i, d),
                  batch, batch * length * words, (idx, dist))


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
    q: np.ndarray, kk: np.ndarray, k: int, n: np.ndarray, m: np.ndarray | None
) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int32]]:
    """Host path of :func:`etaretrieval.topk_hamming` (inputs validated).

    ``q`` ``(B, W)`` and ``kk`` ``(B, L, W)`` / ``(L, W)`` uint64, ``n`` and
    ``m`` the lengths and optional mask of :func:`etaretrieval._validate.validity`.
    """
    batch, words = q.shape
    kk = np.broadcast_to(kk, (batch, kk.shape[-2], words))
    idx, dist = results(batch, k)
    if batch:
        _run_keys(q, kk, k, n, m, idx, dist)
    return idx, dist


def topk_hamming_lookup(
    q: np.ndarray, i: np.ndarray, t: np.ndarray, k: int, n: np.ndarray, m: np.ndarray | None, pad: int | None,
    shared: bool,
) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int32]]:
    """Host path of :func:`etaretrieval.topk_hamming_lookup` (inputs validated).

    ``i`` ``(B, L)`` ids (a broadcast view when ``shared``), ``t`` ``(N, W)``
    uint64, ``pad`` the padding id's int64 bit pattern or ``None``; the rest
    as in :func:`topk_hamming`. Raises the :class:`IndexError` of the first
    valid position holding an id outside the table.
    """
    batch, words = q.shape
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
    cached = t.nbytes <= CACHED_TABLE_BYTES

    def run(lo: int, hi: int, base: int, idx_: np.ndarray, dist_: np.ndarray, bad_: np.ndarray) -> int:
        """The first row of ``lo..hi-1`` with a bad id, or -1."""
        return int(topk_lookup(q, i, t, k, n, mask, m is not None, padding, pad is not None, cached,
                               lo, hi, base, idx_, dist_, bad_))

    first_bad = parallel_rows(run, batch, batch * i.shape[1] * words, (idx, dist, bad))
    rows = [r for r in first_bad if r >= 0]
    if rows:
        row = min(rows)
        pos = int(bad[row])
        raise ids_error(row, pos, i[row, pos], t.shape[0], shared=shared)
    return idx, dist
