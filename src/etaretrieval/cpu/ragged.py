"""Top-K by Hamming distance over ragged rows (flat values + offsets), plain and fused with an id lookup.

Row ``b`` is ``values[starts[b] : starts[b] + lens[b]]``: the kernels read the
flat ``keys`` ``(T, W)`` / ``ids`` ``(T,)`` (and a flat ``(T,)`` mask) in
place, one row at a time through zero-copy views, and run each row through the
padded kernel's steps (:mod:`etaretrieval.cpu.topk`: the distance pass, then
the counting-sort selection), so the results are the padded path's bit for bit.

Work, not rows, is spread over the library's threads. :func:`plan` cuts every
row longer than the call's share of work per task (and than
:data:`MIN_PIECE`) into *pieces* of about equal length; the pieces, in row
order, are grouped into ranges of about equal work (positions plus
:data:`ROW_COST` per piece), which :func:`etaretrieval._threads.parallel_rows`
hands out. A row in one piece writes its result directly; the pieces of a cut
row write partial top-K lists (positions shifted to the row's start) that
:func:`merge_pieces` merges afterwards. One row of ``10^5`` behaviours among
short ones is thus shared by every thread instead of holding one.
"""

from __future__ import annotations

import functools
from typing import Any

import numba
import numpy as np
import numpy.typing as npt
from numba import types
from numba.extending import intrinsic, overload

from .. import config
from .._jit import array_type, compiled, jit, kernel_input
from .._threads import parallel_rows, thread_count
from .._validate import ids_error, results
from .topk import CACHED_TABLE_BYTES, LANES, _distance_pass, _first_bad, _select, _workspace, pass_variant

__all__ = ["MIN_PIECE", "ROW_COST", "row_of", "rows_of", "block_of", "split_offsets", "plan", "ragged_topk",
           "merge_pieces", "topk_hamming", "topk_hamming_lookup"]

#: Rows are cut into pieces only when longer than this many positions (each
#: piece costs a partial top-K list and its merge).
MIN_PIECE = 4096

#: The work of a piece, in positions, on top of its length: its selection
#: step and its share of the call's overhead (so that many empty rows still
#: weigh something when rows are grouped).
ROW_COST = 32

#: Bits of a merge key that hold the position (rows are shorter than ``2**40``).
_POS_BITS = 40
_POS_MASK = (1 << _POS_BITS) - 1


def row_of(values: np.ndarray, start: int, n: int) -> np.ndarray:
    """``values[start : start + n]`` of C-contiguous 1-D ``values`` as a ``(1, n)`` view."""
    return values[None, start : start + n]


def rows_of(values: np.ndarray, start: int, n: int) -> np.ndarray:
    """Rows ``start .. start + n - 1`` of C-contiguous 2-D ``values`` (a view)."""
    return values[start : start + n]


def block_of(values: np.ndarray, start: int, n: int) -> np.ndarray:
    """Rows ``start .. start + n - 1`` of C-contiguous 2-D ``values`` as a ``(1, n, x)`` view."""
    return values[None, start : start + n]


@intrinsic
def _element_address(typingctx, values, index):
    """A pointer to flat element ``index`` of a C-contiguous array."""
    if not (isinstance(values, types.Array) and values.layout == "C"):
        return None

    def codegen(context, builder, signature, args):
        data = context.make_array(signature.args[0])(context, builder, value=args[0]).data
        return builder.gep(data, [args[1]])

    return types.CPointer(values.dtype)(values, types.intp), codegen


# In compiled code the views are made from a pointer: they carry no reference count, whose atomic updates
# (a view passed to another function keeps them) would cost each row more than its views' other work.
@overload(row_of, inline="always")
def _row_of_jit(values, start, n):
    return lambda values, start, n: numba.carray(_element_address(values, start), (1, n))


@overload(block_of, inline="always")
def _block_of_jit(values, start, n):
    return lambda values, start, n: numba.carray(_element_address(values, start * values.shape[1]),
                                                 (1, n, values.shape[1]))


@overload(rows_of, inline="always")
def _rows_of_jit(values, start, n):
    return lambda values, start, n: numba.carray(_element_address(values, start * values.shape[1]),
                                                 (n, values.shape[1]))


@jit()
def ragged_topk(
    query, keys, ids, table, k, starts, lens, whole, piece_row, piece_lo, piece_hi, piece_slot, mask, pad, first,
    last, idx, dist, part_idx, part_dist, bad, use_mask, use_pad, cached, words,
):
    """Top-``k`` of pieces ``first..last-1`` (serial; :func:`etaretrieval._threads.parallel_rows` spreads ranges).

    Arguments:

    - ``query``: ``(B, W)`` uint64 signatures;
    - ``keys``: ``(T, W)`` flat uint64 signatures, or ``None`` (a lookup);
    - ``ids``, ``table``: ``(T,)`` flat ids into ``(N, W)`` uint64, or
      ``None`` (top-K of ``keys``): the branch that reads the ``None``
      arguments is not compiled;
    - ``starts``, ``lens``: ``(B,)`` int64 first flat index and length of each row;
    - ``whole``: piece ``p`` is row ``p``, whole (the ``piece_*`` arrays are not read);
    - ``piece_row``, ``piece_lo``, ``piece_hi``: piece ``p`` is positions
      ``piece_lo[p]..piece_hi[p]-1`` of row ``piece_row[p]``;
    - ``piece_slot``: ``-1`` for a whole row (its result goes to ``idx`` /
      ``dist`` row ``piece_row[p]``), else the row of ``part_idx`` /
      ``part_dist`` ``(S, kp)`` taking its partial top-``kp`` (positions from
      the row's start);
    - ``mask``, ``use_mask``: ``(T,)`` flat bool validity;
    - ``pad``, ``use_pad``: int64 bits of the padding id;
    - ``bad``: ``(P,)`` int64, receives the first valid position (in the
      piece) holding an id outside ``[0, N)``, for such pieces only (which
      get no result);
    - ``use_mask``, ``use_pad``, ``cached``, ``words`` (``W``): the
      distance pass of the padded kernels, as literals where the driver
      fixes them (:func:`etaretrieval.cpu.topk.pass_variant`), so a piece
      costs what a padded row of its length does.

    Returns the first piece of the range with a bad id, or ``-1``.
    """
    invalid = 64 * query.shape[1] + 1
    longest = 0
    for p in range(first, last):
        longest = max(longest, lens[p] if whole else piece_hi[p] - piece_lo[p])
    scratch, work = _workspace(longest, query.shape[1])
    kp = part_idx.shape[1]
    guess = np.int64(-1)  # an int64 from the start: a literal -1 would compile a variant of _select of its own
    first_bad = -1
    for p in range(first, last):
        b = p if whole else piece_row[p]
        lo = 0 if whole else piece_lo[p]
        end = lens[b] if whole else piece_hi[p] - lo
        s = starts[b] + lo
        q = rows_of(query, b, 1)
        m2 = row_of(mask, s if use_mask else 0, end if use_mask else 0)  # (an empty view without a mask)
        if keys is not None:
            _, nvalid = _distance_pass(q, rows_of(keys, s, end), m2, 0, end, m2, use_mask, pad, use_pad, scratch,
                                       words, False, cached)
        elif table is not None:
            i2 = row_of(ids, s, end)
            if table.shape[0] == 0:  # no row to read in place of a bad id
                out_of_range, nvalid = True, 0
            else:
                out_of_range, nvalid = _distance_pass(q, table, i2, 0, end, m2, use_mask, pad, use_pad, scratch,
                                                      words, True, cached)
            if out_of_range:
                bad[p] = _first_bad(i2, 0, end, m2, use_mask, pad, use_pad, table.shape[0])
                if bad[p] >= 0:
                    first_bad = p if first_bad < 0 else first_bad
                    continue
                scratch[:end] = invalid  # empty table and no valid position: an empty result
        scratch[end : (end + LANES - 1) // LANES * LANES] = invalid  # the last block's tail
        slot = -1 if whole else piece_slot[p]
        if slot < 0:
            guess = _select(scratch, end, nvalid, k, invalid - 1, work, idx[b], dist[b], guess)
        else:
            guess = _select(scratch, end, nvalid, kp, invalid - 1, work, part_idx[slot], part_dist[slot], guess)
            for j in range(min(kp, nvalid)):
                part_idx[slot, j] += lo
    return first_bad


@jit()
def merge_pieces(rows, slot_first, slot_count, part_idx, part_dist, k, idx, dist):
    """Merge the partial top-K lists of each cut row ``rows[r]``: slots ``slot_first[r]`` + ``0..slot_count[r]-1``.

    Each entry becomes one int64 key (distance above :data:`_POS_BITS` bits of
    the complemented position), so that ascending keys are the result order
    (distance ascending, newest first); keys are unique within a row.
    """
    kp = part_idx.shape[1]
    for r in range(rows.shape[0]):
        b = rows[r]
        keys = np.empty(slot_count[r] * kp, dtype=np.int64)
        n = 0
        for slot in range(slot_first[r], slot_first[r] + slot_count[r]):
            for j in range(kp):
                if part_idx[slot, j] < 0:
                    break
                keys[n] = (np.int64(part_dist[slot, j]) << _POS_BITS) | (_POS_MASK - part_idx[slot, j])
                n += 1
        keys = np.sort(keys[:n])
        take = min(k, n)
        for j in range(take):
            idx[b, j] = _POS_MASK - (keys[j] & _POS_MASK)
            dist[b, j] = keys[j] >> _POS_BITS
        for j in range(take, k):
            idx[b, j] = -1
            dist[b, j] = -1


@jit()
def split_offsets(offsets, total):
    """``(ok, starts, lens)`` of integer ``(B + 1,)`` ``offsets``: int64 ``(B,)`` starts and lengths, in one pass.

    ``ok`` is false when an offset is negative, above ``total`` or below the
    one before it (``starts`` and ``lens`` are then not to be used).
    """
    batch = offsets.shape[0] - 1
    starts = np.empty(batch, dtype=np.int64)
    lens = np.empty(batch, dtype=np.int64)
    ok = offsets[0] >= 0 and offsets[batch] <= total
    for b in range(batch):
        lo, hi = offsets[b], offsets[b + 1]
        ok &= lo <= hi
        starts[b] = np.int64(lo)
        lens[b] = np.int64(hi) - np.int64(lo)
    return ok, starts, lens


class Plan:
    """The pieces of a call and their grouping (see :func:`plan`).

    Attributes
    ----------
    row, lo, hi : numpy.ndarray
        ``(P,)`` int64: piece ``p`` is positions ``lo[p]..hi[p]-1`` of row ``row[p]``, in row order.
    slot : numpy.ndarray
        ``(P,)`` int64: ``-1`` for a whole row, else the piece's partial list.
    groups : numpy.ndarray
        ``(G + 1,)`` int64 piece bounds of the groups of about equal work.
    cut_rows, slot_first, slot_count : numpy.ndarray
        The rows cut into pieces, their first partial list and their number of pieces.
    part_width : int
        Entries of a partial list, ``min(k, longest piece of a cut row)``.
    """

    __slots__ = ("row", "lo", "hi", "slot", "groups", "cut_rows", "slot_first", "slot_count", "part_width")

    def __init__(self, row: np.ndarray, lo: np.ndarray, hi: np.ndarray, slot: np.ndarray, groups: np.ndarray,
                 cut_rows: np.ndarray, slot_first: np.ndarray, slot_count: np.ndarray, part_width: int) -> None:
        self.row, self.lo, self.hi, self.slot, self.groups = row, lo, hi, slot, groups
        self.cut_rows, self.slot_first, self.slot_count, self.part_width = cut_rows, slot_first, slot_count, part_width


@jit()
def _plan(lens, min_piece, ngroups, row_cost):
    """:func:`plan`'s arrays, the longest piece of a cut row and the number of positions."""
    batch = lens.shape[0]
    positions = 0
    for b in range(batch):
        positions += lens[b]
    limit = max(min_piece, (positions + ngroups - 1) // ngroups)
    npieces = ncut = 0
    for b in range(batch):
        count = max(1, (lens[b] + limit - 1) // limit)
        npieces += count
        ncut += count > 1
    pieces = np.empty((4, npieces), dtype=np.int64)  # one array to return (each returned array costs its boxing)
    row, lo, hi, slot = pieces[0], pieces[1], pieces[2], pieces[3]
    cuts = np.empty((3, ncut), dtype=np.int64)
    cut_rows, slot_first, slot_count = cuts[0], cuts[1], cuts[2]
    p = s = r = longest = total = 0
    for b in range(batch):
        n = lens[b]
        count = max(1, (n + limit - 1) // limit)
        if count > 1:
            cut_rows[r], slot_first[r], slot_count[r] = b, s, count
            r += 1
        for i in range(count):
            row[p], lo[p], hi[p] = b, n * i // count, n * (i + 1) // count
            slot[p] = s if count > 1 else -1
            if count > 1:
                s += 1
                longest = max(longest, hi[p] - lo[p])
            total += hi[p] - lo[p] + row_cost
            p += 1
    ngroups = max(1, min(ngroups, npieces))
    groups = np.full(ngroups + 1, npieces, dtype=np.int64)
    groups[0] = 0
    work = g = 0
    for p in range(npieces):  # group g ends after the last piece whose cumulative work is <= g / ngroups of the total
        work += hi[p] - lo[p] + row_cost
        while g + 1 < ngroups and work > total * (g + 1) // ngroups:
            g += 1
            groups[g] = p
    return pieces, groups, cuts, longest, positions


def plan(lens: npt.NDArray[np.int64], k: int, tasks: int) -> tuple[Plan, int]:
    """Cut rows of ``lens`` positions into pieces and group them into ``<= tasks`` ranges of about equal work.

    A row longer than both :data:`MIN_PIECE` and ``total / tasks`` is cut into
    the fewest pieces of at most that length (of equal length, to a position);
    a piece's work is its length plus :data:`ROW_COST`. Returns the plan and
    the number of positions.
    """
    pieces, groups, cuts, longest, positions = _plan(lens, MIN_PIECE, max(tasks, 1), ROW_COST)
    row, lo, hi, slot = pieces
    cut_rows, slot_first, slot_count = cuts
    return Plan(row, lo, hi, slot, groups, cut_rows, slot_first, slot_count, min(k, int(longest))), int(positions)


_NO_IDS = kernel_input(np.zeros(0, dtype=np.int64))
_NO_MASK = kernel_input(np.zeros(0, dtype=np.bool_))
_NO_PIECES = np.zeros(0, dtype=np.int64)
_NO_PART_IDX = np.zeros((0, 0), dtype=np.int64)
_KERNEL_IDS = (np.dtype(np.int32), np.dtype(np.int64))
_NO_PART_DIST = np.zeros((0, 0), dtype=np.int32)


@functools.lru_cache(maxsize=None)
def _kernel(ids_dtype: np.dtype | None, use_mask: bool, use_pad: bool, cached_table: bool, words: int
            ) -> tuple[tuple[bool, bool, bool, int], Any]:
    """The flags and :func:`ragged_topk` compiled for :func:`_run`'s arguments: a lookup of ``ids_dtype`` ids, or keys.

    ``ids_dtype`` ``None``: top-K of flat keys. The flags are those of
    :func:`etaretrieval.cpu.topk.pass_variant`.
    """
    flags, signature = pass_variant(ids_dtype is not None, use_mask, use_pad, cached_table, words)
    count, signatures, pieces = types.int64, array_type(np.uint64, 2), array_type(np.int64, 1, readonly=False)
    offsets, out = array_type(np.int64, 1), (array_type(np.int64, 2, False), array_type(np.int32, 2, False))
    sources = (signatures, types.none, types.none) if ids_dtype is None else (
        types.none, array_type(ids_dtype, 1), signatures)
    return flags, compiled(ragged_topk, (signatures, *sources, count, offsets, offsets, types.boolean, pieces, pieces,
                                         pieces, pieces, array_type(np.bool_, 1), count, count, count, *out, *out,
                                         pieces, *signature))


def _run(q: np.ndarray, keys: np.ndarray | None, ids: np.ndarray | None, table: np.ndarray | None, k: int,
         starts: np.ndarray, lens: np.ndarray, mask: np.ndarray | None, pad: int | None, named: np.ndarray = _NO_IDS
         ) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int32]]:
    """Run the rows in the calling thread (small calls), or plan pieces and run them over the threads.

    ``keys`` (top-K of flat keys), or ``ids`` and ``table`` (a lookup) are
    given, the others ``None``. Then merge the cut rows and raise the first
    bad id, its value read from ``named`` (the caller's ids).
    """
    batch, words = q.shape
    idx, dist = results(batch, k)
    if not batch:
        return idx, dist
    m = _NO_MASK if mask is None else kernel_input(mask, contiguous=True)
    q, starts, lens = (kernel_input(a, contiguous=True) for a in (q, starts, lens))
    rows = 0 if table is None else table.shape[0]
    flags, kernel = _kernel(None if ids is None else ids.dtype, mask is not None, pad is not None,
                            table is not None and table.nbytes <= CACHED_TABLE_BYTES, words)
    common = (m, 0 if pad is None else pad)
    positions = int(starts[-1] + lens[-1] - starts[0])  # the rows lie back to back
    threads = thread_count()
    if positions * words // max(1, config.SERIAL_WORK) <= 1 or threads <= 1:  # one thread (as parallel_rows
        # would decide): whole rows, no plan
        bad = np.empty(batch, dtype=np.int64)
        first = kernel(q, keys, ids, table, k, starts, lens, True, _NO_PIECES, _NO_PIECES, _NO_PIECES, _NO_PIECES,
                       *common, 0, batch, idx, dist, _NO_PART_IDX, _NO_PART_DIST, bad, *flags)
        if first >= 0:
            raise ids_error(first, int(bad[first]), named[starts[first] + bad[first]], rows)
        return idx, dist
    pieces, _ = plan(lens, k, threads * config.TASKS_PER_THREAD)
    part_idx = np.empty((pieces.lo.shape[0] - batch + pieces.cut_rows.shape[0], pieces.part_width), dtype=np.int64)
    part_dist = np.empty(part_idx.shape, dtype=np.int32)
    bad = np.empty(pieces.row.shape[0], dtype=np.int64)  # written only for pieces with a bad id
    groups = pieces.groups

    def run(lo: int, hi: int) -> int:
        """The first piece of groups ``lo..hi-1`` with a bad id, or -1."""
        return int(kernel(q, keys, ids, table, k, starts, lens, False, pieces.row, pieces.lo, pieces.hi, pieces.slot,
                          *common, groups[lo], groups[hi], idx, dist, part_idx, part_dist, bad, *flags))

    first_bad = [p for p in parallel_rows(run, groups.shape[0] - 1, positions * words) if p >= 0]
    if first_bad:
        p = min(first_bad)
        row, pos = int(pieces.row[p]), int(pieces.lo[p] + bad[p])
        raise ids_error(row, pos, named[starts[row] + pos], rows)
    if pieces.cut_rows.shape[0]:
        merge_pieces(pieces.cut_rows, pieces.slot_first, pieces.slot_count, part_idx, part_dist, k, idx, dist)
    return idx, dist


def topk_hamming(
    q: np.ndarray, keys: np.ndarray, k: int, starts: np.ndarray, lens: np.ndarray, mask: np.ndarray | None
) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int32]]:
    """Host path of :func:`etaretrieval.ragged.topk_hamming_ragged` (inputs validated).

    ``q`` ``(B, W)`` and flat ``keys`` ``(T, W)`` uint64, ``starts`` / ``lens``
    ``(B,)`` int64 (rows inside ``keys``), ``mask`` ``(T,)`` bool or ``None``.
    """
    return _run(q, kernel_input(keys, contiguous=True), None, None, k, starts, lens, mask, None)


def topk_hamming_lookup(
    q: np.ndarray, ids: np.ndarray, table: np.ndarray, k: int, starts: np.ndarray, lens: np.ndarray,
    mask: np.ndarray | None, pad: int | None,
) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int32]]:
    """Host path of :func:`etaretrieval.ragged.topk_hamming_lookup_ragged` (inputs validated).

    Flat ``ids`` ``(T,)`` of any integer dtype, ``table`` ``(N, W)`` uint64,
    ``pad`` the padding id's int64 bit pattern or ``None``; the rest as in
    :func:`topk_hamming`. Raises the :class:`IndexError` of the first valid
    position holding an id outside the table, named ``ids[row, position]``.
    """
    i = ids if ids.dtype in _KERNEL_IDS else ids.astype(np.int64)  # the same values (uint64 above 2**63 turn
    # negative: outside the table too); pad, as int64 bits, compares alike. Two id dtypes: two kernel variants.
    return _run(q, None, kernel_input(i, contiguous=True), kernel_input(table, contiguous=True), k, starts, lens, mask,
                pad, named=ids)
