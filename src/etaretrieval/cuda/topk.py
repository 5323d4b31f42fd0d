"""Counting-sort top-K by Hamming distance on the GPU, plain and fused with an id lookup.

One block per row; a different algorithm from the CPU kernel's
(``etaretrieval.cpu.topk``: a sampled bound, then the candidates by distance
with vector compares) with the same result bit for bit, ties included:

1. Every thread takes positions ``tid, tid + T, ...`` of the valid prefix,
   computes their distance (``cuda.popc`` on uint64 words) into a per-row
   uint16 scratch (dynamic shared memory, or global memory for long rows) and
   counts it into a shared histogram over ``0..64 W``.
2. A block scan of the histogram gives each bucket's first output slot and the
   threshold bucket ``t``: ``acc`` positions lie strictly below it and the
   first ``need = take - acc`` of bucket ``t`` (newest first) complete the row.
3. Ordered emission, from the newest position backwards in tiles of
   ``T x ITEMS`` positions. A block scan over the tile counts positions below
   the threshold (``lt``) and at it (``eq``) before each thread's items. An
   ``eq`` position's slot is simply ``acc + (eq positions seen before it)``.
   ``lt`` positions are compacted into a shared list in position order; each
   one's rank among the earlier list entries of its bucket, plus the bucket's
   running offset, is its slot; then the offsets advance by the tile's counts.
   The loop stops as soon as all ``acc`` and ``need`` positions are placed.

The result is ordered by (distance ascending, position descending), with
``-1`` tails when a row has fewer than ``k`` valid positions.

Bad input is reported through two int64 "error cells" lowered with
``atomic.min``: cell 0 the first row whose ``lengths`` entry lies outside
``0..L``, cell 1 ``row * L + position`` of the first valid position holding an
id outside ``[0, N)`` (the same row and position the CPU reports).
"""

from __future__ import annotations

import functools
from typing import Any

import numpy as np

from .._device import DeviceArray, describe
from .._validate import MAX_WORDS, TopkCall, check_padding_side, ids_error, lengths_error
from . import _backend, config
from .padding import left_padding

__all__ = ["run", "topk_hamming_into", "topk_hamming_lookup_into", "raise_errors"]

#: ``numba.cuda`` once a kernel is built (a module global: the simulator swaps it while kernels run).
cuda: Any = None

#: Scratch value of a position that is not a candidate (above any distance).
INVALID = 0xFFFF
NBUCKETS = 64 * MAX_WORDS + 1

# Slots of the block's shared ``info`` array (int64).
#: Number of candidates of the row (valid positions with a good id), summed over the threads.
INFO_VALID = 0
#: The threshold bucket ``t``: the distance of the last result.
INFO_THRESHOLD = 1
#: ``acc``: the number of candidates strictly below the threshold bucket (all of them are results).
INFO_BELOW = 2
#: Nonzero when the row holds a bad id (the row gets no result).
INFO_BAD_ID = 3
INFO_SLOTS = 4

#: A thread's tile counts travel through the block scan as one int32 ``lt * PAIR + eq``; both counts
#: are at most ``TOPK_THREADS * TOPK_ITEMS <= 32767 < PAIR``, so the halves never carry into each other and
#: the block total ``<= 32767 * (PAIR + 1)`` fits an int32.
PAIR = 65536


@functools.lru_cache(maxsize=None)
def _kernels(threads: int, items: int) -> Any:
    if threads < 1 or threads > 1024 or threads & (threads - 1):
        raise ValueError(f"TOPK_THREADS must be a power of two in 1..1024, got {threads}")
    if items < 1 or threads * items > 32767:
        raise ValueError(f"TOPK_THREADS * TOPK_ITEMS must lie in 1..32767, got {threads} * {items}")
    global cuda
    cuda = _backend.cuda()
    from numba import int16, int32, int64, uint16, uint64

    T = threads
    R = items
    TILE = threads * items
    NB = NBUCKETS
    MW = MAX_WORDS
    INV = INVALID

    @cuda.jit(device=True)
    def scan_inclusive(scan, tid):
        """In-place inclusive prefix sum of ``scan[0:T]`` (all threads call it)."""
        off = 1
        while off < T:
            v = int32(0)
            if tid >= off:
                v = scan[tid - off]
            cuda.syncthreads()
            scan[tid] += v
            cuda.syncthreads()
            off *= 2

    @cuda.jit(device=True)
    def load(sdist, gdist, use_global, b, p):
        if use_global:
            return int32(gdist[b, p])
        return int32(sdist[p])

    @cuda.jit(device=True)
    def store(sdist, gdist, use_global, b, p, d):
        if use_global:
            gdist[b, p] = uint16(d)
        else:
            sdist[p] = uint16(d)

    @cuda.jit(device=True)
    def bucket_offsets(tid, nb, take, hist, scan, info):
        """Step 2: ``hist[v]`` (counts) becomes bucket ``v``'s first output slot; sets the threshold slots.

        ``info[INFO_THRESHOLD]`` is the bucket ``t`` holding result ``take - 1``,
        ``info[INFO_BELOW]`` the number of candidates below it.
        """
        chunk = (nb + T - 1) // T
        lo = min(tid * chunk, nb)
        hi = min(lo + chunk, nb)
        mine = int32(0)
        for v in range(lo, hi):
            mine += hist[v]
        scan[tid] = mine
        cuda.syncthreads()
        scan_inclusive(scan, tid)
        run = int64(scan[tid] - mine)
        for v in range(lo, hi):
            h = hist[v]
            if run < take and take <= run + h:
                info[INFO_THRESHOLD] = v
                info[INFO_BELOW] = run
            hist[v] = run
            run += h
        cuda.syncthreads()

    @cuda.jit(device=True)
    def emit_tile(b, tid, top, t, acc, need, eq_seen, hist, scan, listd, listp, sdist, gdist, use_global, idx, dist):
        """Step 3 for the tile of positions ``[top - TILE, top)``: write its results into ``idx`` / ``dist``.

        ``t``, ``acc`` and ``need`` are the threshold bucket, the candidates
        below it and the results taken from it; ``eq_seen`` counts the
        threshold positions of the newer tiles. ``hist`` holds each bucket's
        next free slot and advances past this tile's positions below ``t``.
        Returns this tile's (positions below ``t``, positions at ``t``).
        """
        base = top - 1 - tid * R
        nlt = int32(0)
        neq = int32(0)
        for r in range(R):
            p = base - r
            if p >= 0:
                d = load(sdist, gdist, use_global, b, p)
                if d < t:
                    nlt += 1
                elif d == t:
                    neq += 1
        mine = nlt * PAIR + neq  # see PAIR: the two counts in one int32 scan
        scan[tid] = mine
        cuda.syncthreads()
        scan_inclusive(scan, tid)
        before = scan[tid] - mine
        total = scan[T - 1]
        lt_pos = before // PAIR
        eq_pos = eq_seen + before % PAIR
        for r in range(R):
            p = base - r
            if p >= 0:
                d = load(sdist, gdist, use_global, b, p)
                if d < t:
                    listd[lt_pos] = int16(d)
                    listp[lt_pos] = int16(tid * R + r)
                    lt_pos += 1
                elif d == t:
                    if eq_pos < need:
                        idx[b, acc + eq_pos] = p
                        dist[b, acc + eq_pos] = d
                    eq_pos += 1
        cuda.syncthreads()
        tile_lt = total // PAIR
        for e in range(tid, tile_lt, T):
            d = int32(listd[e])
            rank = int32(0)
            for j in range(e):
                if listd[j] == d:
                    rank += 1
            slot = hist[d] + rank
            idx[b, slot] = top - 1 - int64(listp[e])
            dist[b, slot] = d
        cuda.syncthreads()
        for e in range(tid, tile_lt, T):
            cuda.atomic.add(hist, int32(listd[e]), 1)
        cuda.syncthreads()
        return tile_lt, total % PAIR

    @cuda.jit(device=True)
    def select(b, tid, end, nb, k, hist, scan, listd, listp, info, sdist, gdist, use_global, idx, dist):
        """Steps 2 and 3 for row ``b``: hist holds the counts, ``info[INFO_VALID]`` the number of candidates."""
        take = min(k, info[INFO_VALID])
        if take > 0:
            bucket_offsets(tid, nb, take, hist, scan, info)
            t = info[INFO_THRESHOLD]
            acc = info[INFO_BELOW]
            need = take - acc
            lt_seen = int64(0)
            eq_seen = int64(0)
            top = end  # this tile covers positions [top - TILE, top), newest first
            while top > 0 and (lt_seen < acc or eq_seen < need):
                tile_lt, tile_eq = emit_tile(
                    b, tid, top, t, acc, need, eq_seen, hist, scan, listd, listp, sdist, gdist, use_global, idx, dist
                )
                lt_seen += tile_lt
                eq_seen += tile_eq
                top -= TILE
        for s in range(take + tid, k, T):
            idx[b, s] = -1
            dist[b, s] = -1

    @cuda.jit
    def topk_kernel(
        query, keys, ids, table, use_ids, lengths, use_len, mask, use_mask, pad, use_pad,
        k, idx, dist, gdist, use_global, err,
    ):
        """Top-``k`` for ``query[b]``, one block per row ``b``.

        The signature of position ``pos`` is ``keys[b or 0, pos]`` (``(B or 1,
        L, W)``), or with ``use_ids`` the fused lookup ``table[ids[b or 0,
        pos]]``; a row holding a bad id gets no result (reported in ``err[1]``).
        An axis of length 1 in place of ``B`` is shared by all rows. Arguments:

        - ``query``: ``(B, W)`` uint64 signatures, ``1 <= W <= MAX_WORDS``;
        - ``keys``: ``(B or 1, L, W)`` uint64 (a placeholder with ``use_ids``);
        - ``ids``, ``table``: ``(B or 1, L)`` integer ids into ``(N, W)`` uint64
          (placeholders unless ``use_ids``);
        - ``lengths``, ``use_len``: ``(B,)`` valid prefix lengths, read when ``use_len``;
        - ``mask``, ``use_mask``: ``(B or 1, L)`` bool validity, read when ``use_mask``;
        - ``pad``, ``use_pad``: int64 bits of the padding id (skipped like a masked
          position), compared when ``use_pad``;
        - ``k``: int64 number of results;
        - ``idx``, ``dist``: ``(B, k)`` int64 / int32 outputs;
        - ``gdist``, ``use_global``: ``(B, L)`` uint16 distance scratch in global
          memory, used instead of the dynamic shared array when ``use_global``;
        - ``err``: the ``(2,)`` int64 error cells (see the module docstring).
        """
        hist = cuda.shared.array(NB, int32)
        scan = cuda.shared.array(T, int32)
        listd = cuda.shared.array(TILE, int16)
        listp = cuda.shared.array(TILE, int16)
        qs = cuda.shared.array(MW, uint64)
        info = cuda.shared.array(INFO_SLOTS, int64)
        sdist = cuda.shared.array(0, uint16)
        b = cuda.blockIdx.x
        tid = cuda.threadIdx.x
        length = ids.shape[1] if use_ids else keys.shape[1]
        nrows = table.shape[0]
        words = query.shape[1]
        nb = 64 * words + 1
        end = int64(length)
        if use_len:
            end = int64(lengths[b])
            if end < 0 or end > length:
                if tid == 0:
                    cuda.atomic.min(err, 0, int64(b))
                return
        kb = b if keys.shape[0] > 1 else 0
        ib = b if ids.shape[0] > 1 else 0
        mb = b if mask.shape[0] > 1 else 0
        for v in range(tid, nb, T):
            hist[v] = 0
        for w in range(tid, words, T):
            qs[w] = query[b, w]
        if tid == 0:
            info[INFO_VALID] = 0
            info[INFO_BAD_ID] = 0
        cuda.syncthreads()
        count = int64(0)
        for pos in range(tid, end if k > 0 or use_ids else 0, T):
            d = INV
            if not use_mask or mask[mb, pos]:
                if not use_ids:
                    d = 0
                    for w in range(words):
                        d += int32(cuda.popc(qs[w] ^ keys[kb, pos, w]))
                else:
                    item = int64(ids[ib, pos])
                    if not (use_pad and item == pad):
                        if item < 0 or item >= nrows:
                            cuda.atomic.min(err, 1, int64(b) * length + pos)
                            info[INFO_BAD_ID] = 1
                        else:
                            d = 0
                            for w in range(words):
                                d += int32(cuda.popc(qs[w] ^ table[item, w]))
                if d != INV:
                    cuda.atomic.add(hist, d, 1)
                    count += 1
            store(sdist, gdist, use_global, b, pos, d)
        cuda.atomic.add(info, INFO_VALID, count)
        cuda.syncthreads()
        if info[INFO_BAD_ID] != 0:
            return
        select(b, tid, end, nb, k, hist, scan, listd, listp, info, sdist, gdist, use_global, idx, dist)

    return topk_kernel


def _words_checked(query: Any, other: Any, name: str) -> Any:
    """``query``, checked to fit the kernel's shared copy and to match ``other``'s ``W``.

    The raw launchers validate nothing else, but an out-of-range ``W`` would
    make the kernel read or write outside its arrays.
    """
    words = query.shape[1]
    if not 1 <= words <= MAX_WORDS or tuple(other.shape)[-1] != words:
        raise ValueError(
            f"query must have 1..{MAX_WORDS} signature words, as many as {name}: "
            f"got shapes {tuple(query.shape)} and {tuple(other.shape)}"
        )
    return query


def _expand0(arr: Any) -> Any:
    """``arr`` with a leading axis of length 1 (shared keys / ids / mask)."""
    return _backend.view(arr, (1,) + tuple(arr.shape), (0,) + tuple(arr.strides))


#: Shared memory a block may use without opting in (every CUDA GPU since compute capability 2.0).
SHARED_LIMIT = 48 * 1024


def _static_shared_bytes(threads: int, items: int) -> int:
    """The top-K kernel's static shared arrays: hist, scan, listd + listp, qs, info."""
    return 4 * NBUCKETS + 4 * threads + 2 * 2 * threads * items + 8 * MAX_WORDS + 8 * INFO_SLOTS


def _scratch(like: DeviceArray | None, batch: int, length: int, stream: Any) -> tuple[Any, bool, int]:
    """(global scratch, use it, dynamic shared bytes) for rows of ``length`` positions."""
    static = _static_shared_bytes(config.TOPK_THREADS, config.TOPK_ITEMS)
    if static + config.TOPK_SHARED_SCRATCH_BYTES > SHARED_LIMIT:
        raise ValueError(
            f"etaretrieval.cuda.config: TOPK_SHARED_SCRATCH_BYTES = {config.TOPK_SHARED_SCRATCH_BYTES} plus the "
            f"{static} bytes of static shared memory of TOPK_THREADS = {config.TOPK_THREADS} x TOPK_ITEMS = "
            f"{config.TOPK_ITEMS} exceed the {SHARED_LIMIT} bytes a block may use"
        )
    if 2 * length <= config.TOPK_SHARED_SCRATCH_BYTES:
        return _backend.placeholder(like, (1, 1), np.uint16, stream), False, 2 * length
    return _backend.empty(like, (batch, length), np.uint16, stream)[1], True, 0


def _validity(like: DeviceArray | None, lengths: Any, mask: Any, stream: Any) -> tuple[Any, bool, Any, bool]:
    """The kernel's ``(lengths, use_len, mask, use_mask)``: numba views, or placeholders for absent ones."""
    if lengths is not None:
        n, use_len = _backend.as_numba(lengths), True
    else:
        n, use_len = _backend.placeholder(like, (1,), np.int64, stream), False
    if mask is not None:
        m, use_mask = _backend.as_numba(mask), True
        if m.ndim == 1:
            m = _expand0(m)
    else:
        m, use_mask = _backend.placeholder(like, (1, 1), np.bool_, stream), False
    return n, use_len, m, use_mask


def raise_errors(cells: np.ndarray, batch: int, length: int, nrows: int, lengths: Any = None, ids: Any = None) -> None:
    """Raise the CPU's error for host copies of the error cells, if they report one."""
    first_row, first_item = int(cells[0]), int(cells[1])
    if first_row < batch:
        value = _backend.element(_backend.as_numba(lengths), (first_row,))
        raise lengths_error(length, first_row, int(value))
    if first_item < batch * length:
        row, pos = divmod(first_item, length)
        i = _backend.as_numba(ids)
        value = _backend.element(i, (pos,) if i.ndim == 1 else (row, pos))
        raise ids_error(row, pos, value, nrows, shared=i.ndim == 1)


def _launch_into(
    query: Any,
    keys: Any,
    ids: Any,
    table: Any,
    k: int,
    idx: Any,
    dist: Any,
    lengths: Any,
    mask: Any,
    padding_id: int | None,
    padding_side: str,
    stream: Any,
    check: bool,
) -> Any:
    """The raw launchers' body: given ``keys``, or ``ids`` into ``table`` (the other ``None``).

    Launches the top-K kernel on numba views of the arguments (placeholders
    for the absent ones); front-padded ``lengths`` become a mask first
    (:func:`etaretrieval.cuda.padding.left_padding`, on the same stream).
    See :func:`topk_hamming_into` for ``check``.
    """
    left = check_padding_side(padding_side) == "left" and lengths is not None
    like = describe(idx)
    with _backend.device_scope(like):
        stream = _backend.launch_stream(like, stream)
        use_ids = ids is not None
        if use_ids:
            t = _backend.as_numba(table, np.uint64)
            q = _words_checked(_backend.as_numba(query, np.uint64), t, "table")
            i = _backend.as_numba(ids)
            if i.ndim == 1:
                i = _expand0(i)
            length, nrows = i.shape[1], t.shape[0]
            kk = _backend.placeholder(like, (1, 1, 1), np.uint64, stream)
        else:
            kk = _backend.as_numba(keys, np.uint64)
            q = _words_checked(_backend.as_numba(query, np.uint64), kk, "keys")
            if kk.ndim == 2:
                kk = _expand0(kk)
            length, nrows = kk.shape[1], 0
            i = _backend.placeholder(like, (1, 1), np.int64, stream)
            t = _backend.placeholder(like, (1, 1), np.uint64, stream)
        batch = q.shape[0]
        cells = _backend.error_cells(like, batch, batch * length, stream)
        described = describe(lengths) if left else None
        if batch and described is not None:
            lengths, mask = left_padding(described, length, stream)
        if batch:
            n, use_len, m, use_mask = _validity(like, lengths, mask, stream)
            gdist, use_global, shared_bytes = _scratch(like, batch, length, stream)
            pad = np.int64(0 if padding_id is None else padding_id)
            _backend.configure(_kernels(config.TOPK_THREADS, config.TOPK_ITEMS), batch, config.TOPK_THREADS, stream,
                               shared_bytes)(
                q, kk, i, t, use_ids, n, use_len, m, use_mask, pad, padding_id is not None, np.int64(k),
                _backend.as_numba(idx), _backend.as_numba(dist), gdist, use_global, cells,
            )
        if not check:
            return cells
        raise_errors(_backend.read_back(cells, stream), batch, length, nrows, lengths=lengths, ids=ids)
    return None


def topk_hamming_into(
    query: Any,
    keys: Any,
    k: int,
    idx: Any,
    dist: Any,
    *,
    lengths: Any = None,
    mask: Any = None,
    padding_side: str = "right",
    stream: Any = None,
    check: bool = True,
) -> Any:
    """Raw launcher of :func:`etaretrieval.topk_hamming` on device arrays, into ``idx`` / ``dist``.

    For the PyTorch plugin: no validation (shapes and dtypes are the caller's
    business). ``query`` ``(B, W)`` and ``keys`` ``(B, L, W)`` / ``(L, W)`` are
    uint64 or int64 (same bits); ``lengths`` ``(B,)`` any integer dtype;
    ``mask`` ``(B, L)`` / ``(L,)`` bool; ``padding_side="left"``: ``lengths``
    count the valid positions at the end of each row; ``idx`` ``(B, k)`` int64 and ``dist``
    ``(B, k)`` int32 outputs. Any ``__cuda_array_interface__`` objects (torch
    CUDA tensors) are viewed without copying. Runs on ``stream`` (numba stream
    or raw ``cudaStream_t`` int), by default the current stream of ``idx``'s
    library (torch's current stream for tensors).

    With ``check=True`` a bad ``lengths`` entry raises the CPU's
    :class:`ValueError` (this reads two int64 back: one stream sync) and
    ``None`` is returned. With ``check=False`` nothing is read back and the
    ``(2,)`` int64 error cells are returned (cell 0 is ``B`` unless a lengths
    entry is bad); see :func:`raise_errors`.

    Rows longer than ``TOPK_SHARED_SCRATCH_BYTES / 2`` use a global scratch
    allocated (by torch or CuPy, from their pools) on their current stream and
    released on return: with ``check=False`` and a ``stream`` other than that
    current stream, synchronise ``stream`` before that library allocates again.
    """
    return _launch_into(query, keys, None, None, k, idx, dist, lengths, mask, None, padding_side, stream, check)


def topk_hamming_lookup_into(
    query: Any,
    ids: Any,
    table: Any,
    k: int,
    idx: Any,
    dist: Any,
    *,
    lengths: Any = None,
    mask: Any = None,
    padding_id: int | None = None,
    padding_side: str = "right",
    stream: Any = None,
    check: bool = True,
) -> Any:
    """Raw launcher of :func:`etaretrieval.topk_hamming_lookup` on device arrays.

    As :func:`topk_hamming_into`, with ``ids`` ``(B, L)`` / ``(L,)`` of any
    integer dtype, ``table`` ``(N, W)`` uint64/int64 and ``padding_id`` the
    int64 bit pattern of the padding id (see ``_validate.as_padding``) or
    ``None``. With ``check=True`` a valid position holding an id outside
    ``[0, N)`` raises the CPU's :class:`IndexError` (naming the first row and
    position) and a bad ``lengths`` entry its :class:`ValueError`; with
    ``check=False`` the error cells are returned (cell 1 is ``B * L`` unless
    an id is bad, else ``row * L + position``).
    """
    return _launch_into(query, None, ids, table, k, idx, dist, lengths, mask, padding_id, padding_side, stream, check)


def run(call: TopkCall) -> tuple[Any, Any]:
    """The CUDA driver of a top-K call of device arrays: ``(idx, dist)`` allocated on the query's device.

    ``lengths`` and the ids are checked by the kernel (the errors are the
    CPU driver's); front padding becomes a mask on the device.
    """
    query = call.query
    batch = query.shape[0]
    side = "left" if call.left else "right"
    with _backend.device_scope(query):
        stream = _backend.launch_stream(query)
        idx, _ = _backend.empty(query, (batch, call.k), np.int64, stream)
        dist, _ = _backend.empty(query, (batch, call.k), np.int32, stream)
        if call.keys is None:
            topk_hamming_lookup_into(query, call.ids, call.table, call.k, idx, dist, lengths=call.lengths,
                                     mask=call.mask, padding_id=call.pad, padding_side=side, stream=stream)
        else:
            topk_hamming_into(query, call.keys, call.k, idx, dist, lengths=call.lengths, mask=call.mask,
                              padding_side=side, stream=stream)
    return idx, dist
