"""Top-K by Hamming distance over ragged rows (flat values + offsets) on the GPU.

The blocks share the work, not the rows: every row is cut into *tiles* of at
most :data:`TILE` positions, one block per tile, so a row of ``10^5``
behaviours is spread over many blocks and a batch of short rows over few. The
result is the CPU's bit for bit (a different algorithm):

1. :func:`_kernels`' ``tile_kernel``: each thread of a tile's block computes
   the distance of its positions (``cuda.popc`` on uint64 words, read from
   the flat keys or from the table rows of the flat ids) and stores one int64
   *order key* per position in shared memory: the distance above
   :data:`POS_BITS` bits of the complemented position in the row, so that
   ascending keys are the result order (distance ascending, newest first) and
   keys within a row are unique; a position that is not valid gets
   :data:`NO_KEY`. A key's rank in its tile is the number of smaller keys
   there; the ``width = min(k, TILE)`` smallest go, in order, to the tile's
   slots of a partial list (``NO_KEY`` after its valid positions).
2. ``merge_kernel``: one thread per partial entry finds its rank in its row,
   the sum over the row's tiles of the entries below it (a binary search in
   each sorted list); entries of rank below ``k`` are results and are written
   there. A list truncated to ``width = k`` entries never hides an entry
   below a written one. The same kernel fills each row's slots past its valid
   positions with ``-1``.

A valid position holding an id outside ``[0, N)`` lowers the error cell with
``atomic.min`` to its flat index: the first such position in row order, which
the host names ``ids[row, position]`` as the CPU does.
"""

from __future__ import annotations

import functools
from typing import Any

import numpy as np

from .._device import DeviceArray
from .._validate import MAX_WORDS, ids_error
from . import _backend, config

__all__ = ["TILE", "POS_BITS", "NO_KEY", "MERGE_THREADS", "topk_hamming", "topk_hamming_lookup", "sdim_group_sums",
           "sdim_pool", "sdim_buckets"]

#: ``numba.cuda`` once a kernel is built (a module global: the simulator swaps it while kernels run).
cuda: Any = None

#: Positions of a row handled by one block (the tile's order keys live in shared memory, 8 bytes each).
TILE = 1024

#: Threads per block of the merge kernel.
MERGE_THREADS = 256

#: Bits of an order key below the distance: the position's complement (rows are shorter than ``2**40``).
POS_BITS = 40
POS_MASK = (1 << POS_BITS) - 1

#: The order key of a position that is not valid: above every valid key.
NO_KEY = np.iinfo(np.int64).max


@functools.lru_cache(maxsize=None)
def _kernels(threads: int, tile: int) -> tuple[Any, Any]:
    if threads < 1 or threads > 1024:
        raise ValueError(f"TOPK_THREADS must lie in 1..1024, got {threads}")
    if not 1 <= tile <= 4096:
        raise ValueError(f"etaretrieval.cuda.ragged.TILE must lie in 1..4096, got {tile}")
    global cuda
    cuda = _backend.cuda()
    from numba import int32, int64, uint64

    T = threads
    TILE_ = tile
    MW = MAX_WORDS

    @cuda.jit
    def tile_kernel(
        query, keys, ids, table, use_ids, starts, tile_row, tile_lo, tile_hi, mask, use_mask, pad, use_pad,
        width, part, tile_valid, err,
    ):
        """Partial top-``width`` of tile ``blockIdx.x``: positions ``tile_lo..tile_hi-1`` of row ``tile_row``.

        - ``query``: ``(B, W)`` uint64; ``keys``: ``(T, W)`` flat uint64 (read unless ``use_ids``);
        - ``ids``, ``table``: ``(T,)`` flat integer ids into ``(N, W)`` uint64 (read with ``use_ids``);
        - ``starts``: ``(B,)`` int64 flat index of each row's first position;
        - ``mask``, ``use_mask``: ``(T,)`` flat bool validity;
        - ``pad``, ``use_pad``: int64 bits of the padding id;
        - ``part``: ``(tiles * width,)`` int64 partial lists of order keys (out);
        - ``tile_valid``: ``(tiles,)`` int64 valid positions of each tile (out);
        - ``err``: ``(1,)`` int64 error cell, lowered to the flat index of a bad id.
        """
        skeys = cuda.shared.array(TILE_, int64)
        qs = cuda.shared.array(MW, uint64)
        count = cuda.shared.array(1, int32)
        t = cuda.blockIdx.x
        tid = cuda.threadIdx.x
        b = tile_row[t]
        lo = tile_lo[t]
        n = tile_hi[t] - lo
        words = query.shape[1]
        nrows = table.shape[0]
        for w in range(tid, words, T):
            qs[w] = query[b, w]
        if tid == 0:
            count[0] = 0
        cuda.syncthreads()
        mine = int32(0)
        for j in range(tid, n, T):
            f = starts[b] + lo + j
            key = int64(NO_KEY)
            if not use_mask or mask[f]:
                d = int64(-1)
                if not use_ids:
                    d = 0
                    for w in range(words):
                        d += int64(cuda.popc(qs[w] ^ keys[f, w]))
                else:
                    item = int64(ids[f])
                    if not (use_pad and item == pad):
                        if item < 0 or item >= nrows:
                            cuda.atomic.min(err, 0, f)
                        else:
                            d = 0
                            for w in range(words):
                                d += int64(cuda.popc(qs[w] ^ table[item, w]))
                if d >= 0:
                    key = (d << POS_BITS) | (POS_MASK - (lo + j))
                    mine += 1
            skeys[j] = key
        cuda.atomic.add(count, 0, mine)
        cuda.syncthreads()
        valid = count[0]
        for j in range(tid, n, T):
            key = skeys[j]
            if key != NO_KEY:
                rank = 0
                for i in range(n):
                    if skeys[i] < key:
                        rank += 1
                if rank < width:
                    part[t * width + rank] = key
        for s in range(valid + tid, width, T):
            part[t * width + s] = NO_KEY
        if tid == 0:
            tile_valid[t] = valid

    @cuda.jit
    def merge_kernel(part, width, tile_row, row_first, row_tiles, tile_valid, k, idx, dist):
        """Thread ``e < tiles * width``: place partial entry ``e`` by its rank in its row; thread ``e < B * k``: fill.

        - ``row_first``, ``row_tiles``: ``(B,)`` int64 first tile and number of tiles of each row;
        - ``idx``, ``dist``: ``(B, k)`` int64 / int32 results.
        """
        e = cuda.grid(1)
        if e < part.shape[0]:
            key = part[e]
            if key != NO_KEY:
                b = tile_row[e // width]
                rank = int64(0)
                for t in range(row_first[b], row_first[b] + row_tiles[b]):
                    low = int64(0)
                    high = int64(width)  # the entries of list t below key: [0, low)
                    while low < high:
                        mid = (low + high) // 2
                        if part[t * width + mid] < key:
                            low = mid + 1
                        else:
                            high = mid
                    rank += low
                if rank < k:
                    idx[b, rank] = POS_MASK - (key & POS_MASK)
                    dist[b, rank] = int32(key >> POS_BITS)
        batch = idx.shape[0]
        if e < batch * k:
            b = e // k
            s = e - b * k
            total = int64(0)
            for t in range(row_first[b], row_first[b] + row_tiles[b]):
                total += tile_valid[t]
            if s >= total:
                idx[b, s] = -1
                dist[b, s] = -1

    return tile_kernel, merge_kernel


@functools.lru_cache(maxsize=None)
def _sdim_kernel(threads: int) -> Any:
    """The ragged SDIM group-sums kernel for blocks of ``threads`` threads."""
    global cuda
    cuda = _backend.cuda()
    from numba import float64, int32, int64, uint64

    T = threads

    @cuda.jit(device=True)
    def code(sig, r, start, tau):
        """The code at bits ``[start, start + tau)`` of ``sig[r]`` (``(R, W)`` uint64)."""
        word = start >> 6
        off = start & 63
        c = sig[r, word] >> uint64(off)
        if off + tau > 64:
            c |= sig[r, word + 1] << uint64(64 - off)
        return int64(c & uint64((1 << tau) - 1))

    @cuda.jit
    def sums_kernel(query, keys, values, tau, starts, lens, mask, use_mask, out):
        """``out[b, g, :]`` = the group sums of row ``b`` (flat ``keys`` / ``values`` / ``mask`` from ``starts[b]``).

        Block ``b * G + g``; as :mod:`etaretrieval.cuda.sdim`'s sums: the block
        flags ``T`` positions at a time, then thread ``t`` adds component
        ``t`` (``t + T``, ...) of the flagged positions in increasing order
        into its float64 accumulator.
        """
        flags = cuda.shared.array(T, int32)
        groups = out.shape[1]
        d = out.shape[2]
        b = cuda.blockIdx.x // groups
        g = cuda.blockIdx.x % groups
        tid = cuda.threadIdx.x
        s = starts[b]
        end = lens[b]
        start = g * tau
        target = code(query, b, start, tau)
        for i0 in range(0, d, T):
            i = i0 + tid
            acc = float64(0.0)
            for p0 in range(0, end, T):
                p = p0 + tid
                f = 0
                if p < end and (not use_mask or mask[s + p]) and code(keys, s + p, start, tau) == target:
                    f = 1
                flags[tid] = f
                cuda.syncthreads()
                if i < d:
                    for j in range(min(T, end - p0)):
                        if flags[j] != 0:
                            acc += float64(values[s + p0 + j, i])
                cuda.syncthreads()
            if i < d:
                out[b, g, i] = acc

    return sums_kernel


def _extents(starts: np.ndarray, lens: np.ndarray, stream: Any) -> tuple[Any, ...]:
    """The rows' int64 ``(starts, lens)`` copied to the current device on ``stream``."""
    c = _backend.cuda()
    return tuple(c.to_device(np.ascontiguousarray(a), stream=stream) for a in (starts, lens))


def _sdim_sums(q: DeviceArray, keys: DeviceArray, values: DeviceArray, tau: int, groups: int, starts: np.ndarray,
               lens: np.ndarray, mask: DeviceArray | None, stream: Any) -> tuple[Any, Any]:
    """``(user, numba view)`` of the ``(B, G, d)`` group sums, launched on ``stream``."""
    from .sdim import THREADS

    batch = q.shape[0]
    user, out = _backend.empty(q, (batch, groups, values.shape[1]), values.dtype, stream)
    if batch:
        d_starts, d_lens = _extents(starts, lens, stream)
        m = _backend.placeholder(q, (1,), np.bool_, stream) if mask is None else _backend.as_numba(mask)
        _backend.configure(_sdim_kernel(THREADS), batch * groups, THREADS, stream)(
            _backend.as_numba(q, np.uint64), _backend.as_numba(keys, np.uint64), _backend.as_numba(values),
            np.int64(tau), d_starts, d_lens, m, mask is not None, out,
        )
    return user, out


def sdim_group_sums(q: DeviceArray, keys: DeviceArray, values: DeviceArray, tau: int, groups: int,
                    starts: np.ndarray, lens: np.ndarray, mask: DeviceArray | None) -> Any:
    """Device path of :func:`etaretrieval.ragged.sdim_group_sums_ragged` (inputs validated)."""
    with _backend.device_scope(q):
        return _sdim_sums(q, keys, values, tau, groups, starts, lens, mask, _backend.launch_stream(q))[0]


def sdim_pool(q: DeviceArray, keys: DeviceArray, values: DeviceArray, tau: int, groups: int,
              starts: np.ndarray, lens: np.ndarray, mask: DeviceArray | None) -> Any:
    """Device path of :func:`etaretrieval.ragged.sdim_pool_ragged`: the group sums, then the padded path's finish."""
    from .sdim import _from_rows

    with _backend.device_scope(q):
        stream = _backend.launch_stream(q)
        _, sums = _sdim_sums(q, keys, values, tau, groups, starts, lens, mask, stream)
        user, out = _backend.empty(q, (q.shape[0], values.shape[1]), values.dtype, stream)
        _from_rows(stream, q, q, tau, sums, None, out)
    return user


def sdim_buckets(keys: DeviceArray, values: DeviceArray, tau: int, groups: int, starts: np.ndarray,
                 lens: np.ndarray, mask: DeviceArray | None) -> Any:
    """Device path of :func:`etaretrieval.ragged.sdim_buckets_ragged`: ``(B, G, 2**tau, d)``.

    The padded path's kernel (:func:`etaretrieval.cuda.sdim.buckets_into`)
    over the flat arrays, each row read from its start.
    """
    from .sdim import buckets_into

    with _backend.device_scope(keys):
        stream = _backend.launch_stream(keys)
        user, _ = _backend.empty(keys, (starts.shape[0], groups, 1 << tau, values.shape[1]), values.dtype, stream)
        d_starts, d_lens = _extents(starts, lens, stream)
        buckets_into(keys, values, tau, user, lengths=d_lens, mask=mask, starts=d_starts, stream=stream, check=False)
    return user


def _tiles(starts: np.ndarray, lens: np.ndarray, tile: int) -> tuple[np.ndarray, ...]:
    """Rows cut into tiles of at most ``tile`` positions: ``(tile_row, tile_lo, tile_hi, row_first, row_tiles)``."""
    row_tiles = -(-lens // tile)
    row_first = np.cumsum(row_tiles) - row_tiles
    tile_row = np.repeat(np.arange(lens.shape[0], dtype=np.int64), row_tiles)
    tile_lo = (np.arange(tile_row.shape[0], dtype=np.int64) - row_first[tile_row]) * tile
    tile_hi = np.minimum(tile_lo + tile, lens[tile_row])
    return tile_row, tile_lo, tile_hi, row_first, row_tiles


def _run(q: DeviceArray, keys: DeviceArray | None, ids: DeviceArray | None, table: DeviceArray | None, k: int,
         starts: np.ndarray, lens: np.ndarray, mask: DeviceArray | None, pad: int | None) -> tuple[Any, Any]:
    """Launch both kernels on ``q``'s device and stream; raise the first bad id (one read-back)."""
    batch = q.shape[0]
    with _backend.device_scope(q):
        stream = _backend.launch_stream(q)
        idx_user, idx = _backend.empty(q, (batch, k), np.int64, stream)
        dist_user, dist = _backend.empty(q, (batch, k), np.int32, stream)
        tile_row, tile_lo, tile_hi, row_first, row_tiles = _tiles(starts, lens, TILE)
        ntiles = tile_row.shape[0]
        if not batch or not (ntiles or k):
            return idx_user, dist_user
        c = _backend.cuda()
        up = [c.to_device(np.ascontiguousarray(a), stream=stream)
              for a in (starts, tile_row, tile_lo, tile_hi, row_first, row_tiles, np.full(1, NO_KEY, np.int64))]
        d_starts, d_row, d_lo, d_hi, d_first, d_tiles, err = up
        width = min(k, TILE)
        part = _backend.empty(q, (max(ntiles * width, 1),), np.int64, stream)[1]
        valid = _backend.empty(q, (max(ntiles, 1),), np.int64, stream)[1]
        qq = _backend.as_numba(q, np.uint64)
        if ids is not None:
            kk = _backend.placeholder(q, (1, 1), np.uint64, stream)
            ii, tt = _backend.as_numba(ids), _backend.as_numba(table, np.uint64)
        else:
            kk = _backend.as_numba(keys, np.uint64)
            ii = _backend.placeholder(q, (1,), np.int64, stream)
            tt = _backend.placeholder(q, (1, 1), np.uint64, stream)
        m = _backend.placeholder(q, (1,), np.bool_, stream) if mask is None else _backend.as_numba(mask)
        tile_kernel, merge_kernel = _kernels(config.TOPK_THREADS, TILE)
        if ntiles:
            _backend.configure(tile_kernel, ntiles, config.TOPK_THREADS, stream)(
                qq, kk, ii, tt, ids is not None, d_starts, d_row, d_lo, d_hi, m, mask is not None,
                np.int64(0 if pad is None else pad), pad is not None, np.int64(width), part, valid, err,
            )
        entries = max(ntiles * width, batch * k)
        if entries:
            _backend.configure(merge_kernel, -(-entries // MERGE_THREADS), MERGE_THREADS, stream)(
                part[: ntiles * width], np.int64(max(width, 1)), d_row, d_first, d_tiles, valid, np.int64(k),
                idx, dist,
            )
        first = int(_backend.read_back(err, stream)[0])
        if first != NO_KEY:
            row = int(np.searchsorted(starts + lens, first, side="right"))
            i = _backend.as_numba(ids)
            raise ids_error(row, first - int(starts[row]), _backend.element(i, (first,)), tt.shape[0])
    return idx_user, dist_user


def topk_hamming(
    q: DeviceArray, keys: DeviceArray, k: int, starts: np.ndarray, lens: np.ndarray, mask: DeviceArray | None
) -> tuple[Any, Any]:
    """Device path of :func:`etaretrieval.ragged.topk_hamming_ragged` (inputs validated, offsets on the host)."""
    return _run(q, keys, None, None, k, starts, lens, mask, None)


def topk_hamming_lookup(
    q: DeviceArray, ids: DeviceArray, table: DeviceArray, k: int, starts: np.ndarray, lens: np.ndarray,
    mask: DeviceArray | None, pad: int | None,
) -> tuple[Any, Any]:
    """Device path of :func:`etaretrieval.ragged.topk_hamming_lookup_ragged` (``pad`` as int64 bits)."""
    return _run(q, None, ids, table, k, starts, lens, mask, pad)
