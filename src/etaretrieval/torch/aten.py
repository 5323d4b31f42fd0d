"""ATen-only forms of the ``torch.ops.etaretrieval`` operators, for export and generated code.

Each function here takes the arguments of its operator, checks them with the
operator's own ``check_*`` function (same messages, raised while tracing) and
computes the result with plain torch operations only: xor, a popcount made of
shifts, masks and adds on the int32 halves of the words, and a ``torch.topk`` on one int64 key per
position that orders by distance ascending, then position descending. The
integer results (signature words, positions, int32 distances, ``-1`` fill)
equal the Numba kernels' bit for bit; the float results of the SDIM ops are
summed in float64, like the kernels, in torch's order (equal after rounding,
exactly so for values whose sums are exact).

:func:`decompositions` maps every operator to its form, for
``ExportedProgram.run_decompositions``: the exported program then holds ATen
operators only and runs wherever PyTorch runs (AOTInductor packages loaded
from C++, other runtimes) without this package or Numba. Each form is also a
plain function that ``torch.compile`` turns into generated code.

Value checks the kernels raise for (``lengths`` outside ``0..L``, a valid
position holding an id outside the table, a valid row of ``x`` holding a NaN
or an infinity) are ``torch._assert_async`` nodes in the graph: eager torch
and AOTInductor raise a ``RuntimeError`` with the message (AOTInductor's C++
runtime throws it as a ``std::runtime_error``); a runtime that drops
assertions computes on: out-of-range ``lengths`` act as clamped to ``0..L``,
out-of-range ids as invalid positions (no read outside the table, never
retrieved), non-finite rows are hashed.
"""

from __future__ import annotations

from typing import Callable, Optional

import torch

from . import _ops
from . import sdim as _sdim_ops

__all__ = [
    "decompositions",
    "popcount",
    "hamming",
    "pack_signatures",
    "topk_hamming",
    "topk_hamming_lookup",
    "topk_hamming_ragged",
    "topk_hamming_lookup_ragged",
    "sdim_codes",
    "sdim_group_sums",
    "sdim_group_sums_backward",
    "sdim_group_sums_ragged",
    "sdim_group_sums_ragged_backward",
    "sdim_buckets",
    "sdim_buckets_ragged",
    "sdim_from_buckets",
]


def _assert(ok: torch.Tensor, message: str) -> None:
    """Raise ``RuntimeError(message)`` where ``ok`` (a bool scalar tensor) is false, as a graph node."""
    torch._assert_async(ok, message)


def _halves(x: torch.Tensor) -> torch.Tensor:
    """``(..., W)`` int64 words as a ``(2 W, ...)`` float32 view of their halves' bit patterns (copied only if strided).

    :func:`_hamming_halves` reads them back as int32. Generated CPU code
    loads int32 vectors through a stack buffer (torch 2.13: each load stalls
    on the copy) but float32 vectors directly, and the bit cast in between
    is free: the distance loop runs about three times faster this way. The
    halves give 8 int32 lanes per AVX2 vector instead of 4 int64 ones (whose
    arithmetic right shift AVX2 lacks). Floats are only moved, never
    computed on, so every bit pattern (NaNs included) survives.
    """
    if x.stride(-1) != 1:
        x = x.clone(memory_format=torch.contiguous_format)
    return x.view(torch.float32).movedim(-1, 0)


def _stored(x: torch.Tensor) -> torch.Tensor:
    """Float32 ``x`` with an even number of elements, unchanged: generated code stores it once, contiguous.

    A view to another element width is an ATen call that needs its input in
    memory (so Inductor stores ``x`` contiguously) and the view back, through
    an unsqueeze (which keeps Inductor from cancelling the pair), gives the
    float32 values again; in eager torch all are views. Used for the key
    halves (``2 W`` of them: even), which the distance loop reads once per
    query: stored, they are read as contiguous vectors instead of being
    gathered again for every query.
    """
    flat = x.reshape(-1)  # a copy only if x is strided
    return flat.view(torch.int64).unsqueeze(0).view(torch.float32)[0].view(x.shape)


def _hamming_halves(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Set bits of ``a ^ b``, halves ``(H, ...)`` from :func:`_halves` (broadcast), summed over ``H``: int32 ``(...)``.

    Per half: the SWAR steps on its low 31 bits (non-negative, so no step
    wraps and the arithmetic right shift never meets a set sign bit) leave
    four byte counts, the sign bit is added to the lowest byte (at most 9).
    Up to 16 halves are summed bytewise (each byte at most 144) before the
    bytes are folded into one count.
    """
    total = None
    for start in range(0, a.shape[0], 16):
        acc = None
        for h in range(start, min(start + 16, a.shape[0])):
            x = a[h].view(torch.int32) ^ b[h].view(torch.int32)
            v = x & 0x7FFF_FFFF
            v = v - ((v >> 1) & 0x5555_5555)
            v = (v & 0x3333_3333) + ((v >> 2) & 0x3333_3333)
            v = ((v + (v >> 4)) & 0x0F0F_0F0F) + (x < 0).to(torch.int32)
            acc = v if acc is None else acc + v
        assert acc is not None
        s = (acc & 0x00FF_00FF) + ((acc >> 8) & 0x00FF_00FF)
        count = (s & 0xFFFF) + (s >> 16)
        total = count if total is None else total + count
    if total is None:  # no words
        return torch.zeros(torch.broadcast_shapes(a.shape[1:], b.shape[1:]), dtype=torch.int32, device=a.device)
    return total


def popcount(x: torch.Tensor) -> torch.Tensor:
    """Set bits of each int64 word (its uint64 bit pattern), as int64.

    Examples
    --------
    >>> import torch
    >>> from etaretrieval.torch.aten import popcount
    >>> popcount(torch.tensor([0, 7, -1, -2**63]))
    tensor([ 0,  3, 64,  1])
    """
    h = _halves(x.unsqueeze(-1))
    return _hamming_halves(h, torch.zeros_like(h)).to(torch.int64)


def hamming(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Hamming distances between int64 signatures ``(..., W)`` (broadcast), as int32 ``(...)``.

    Examples
    --------
    >>> import torch
    >>> from etaretrieval.torch.aten import hamming
    >>> hamming(torch.tensor([[0b1011, -1]]), torch.tensor([[0b0001, 0]]))
    tensor([66], dtype=torch.int32)
    """
    ndim = max(a.dim(), b.dim())
    a = a.reshape((1,) * (ndim - a.dim()) + tuple(a.shape))
    b = b.reshape((1,) * (ndim - b.dim()) + tuple(b.shape))
    return _hamming_halves(_halves(a), _halves(b))


def pack_signatures(
    x: torch.Tensor, planes: torch.Tensor, check_finite: bool = True, valid: Optional[torch.Tensor] = None,
    offset: Optional[torch.Tensor] = None,
) -> torch.Tensor:
    """ATen form of ``torch.ops.etaretrieval.pack_signatures``: ``(..., W)`` int64 SimHash words.

    Bit ``j`` (word ``j // 64``, LSB first) is ``x @ planes[:, j] > 0``
    (``x @ planes[:, j] + offset[j] > 0`` with an ``offset``, added to the
    product in its dtype), the product in the dtype the kernel uses (float32
    for half inputs). The product is ``torch.matmul``'s, whose summation
    order may differ from the kernel's: a projection within rounding of zero
    may take the other sign (never for inputs whose products and sums are
    exact in that dtype). With ``check_finite``, a (valid) row holding a NaN
    or an infinity fails an assertion; a non-finite ``offset`` always does.

    Examples
    --------
    >>> import torch
    >>> from etaretrieval.torch import aten
    >>> aten.pack_signatures(torch.tensor([[2.0], [-1.0], [0.0]]), torch.tensor([[1.0, -1.0, 0.0]])).ravel()
    tensor([1, 2, 0])
    """
    shape = _ops.check_pack(x, planes, valid, offset)
    xs = _ops.as_float32(x)
    ctype = torch.promote_types(xs.dtype, planes.dtype)
    if check_finite:
        finite = torch.isfinite(xs).all(-1)
        if valid is not None:
            finite = finite | ~valid
        _assert(finite.all(), "x holds a non-finite value (NaN or inf) in a valid row; pass check_finite=False "
                              "to hash it anyway")
    bits = planes.shape[1]
    words = shape[-1]
    projection = xs.detach().to(ctype) @ planes.detach().to(ctype)
    if offset is not None:
        _assert(torch.isfinite(offset).all(), "offset must be finite, got a NaN or an infinity")
        projection = projection + offset.detach().to(ctype)
    positive = projection > 0
    if words * 64 != bits:
        positive = torch.nn.functional.pad(positive, (0, words * 64 - bits))
    weights = torch.ones(64, dtype=torch.int64, device=x.device) << torch.arange(64, device=x.device)
    return (positive.reshape(*shape, 64).to(torch.int64) * weights).sum(-1)


def _validity(
    lengths: Optional[torch.Tensor],
    mask: Optional[torch.Tensor],
    length: int,
    device: torch.device,
    padding_side: str,
) -> Optional[torch.Tensor]:
    """``(B, L)`` or shared ``(1, L)`` bool valid positions, or ``None`` (all valid)."""
    if mask is not None:
        m = mask if mask.dtype == torch.bool else mask != 0
        return m.unsqueeze(0) if m.dim() == 1 else m
    if lengths is None:
        return None
    n = lengths.to(torch.int64).unsqueeze(1)  # L - n in int64 (uint8 lengths would wrap)
    _assert(((n >= 0) & (n <= length)).all(), f"lengths must lie in 0..{length}")
    pos = torch.arange(length, device=device)
    return pos >= length - n if padding_side == "left" else pos < n


def _select(
    dist: torch.Tensor, valid: Optional[torch.Tensor], k: int, max_dist: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-``k`` of ``(B, L)`` distances: positions by (distance ascending, position descending), ``-1`` fill.

    One int64 key per position, ``dist * L + (L - 1 - pos)``, is distinct in
    a row, so ``torch.topk`` has no ties to break; positions that are not
    valid get the key ``(max_dist + 1) * L``, above every valid one.
    """
    batch, length = dist.shape
    if length == 0 or k == 0:
        return (torch.full((batch, k), -1, dtype=torch.int64, device=dist.device),
                torch.full((batch, k), -1, dtype=torch.int32, device=dist.device))
    take = min(k, length)
    newest = torch.arange(length - 1, -1, -1, device=dist.device)
    key = dist.to(torch.int64) * length + newest
    invalid = (max_dist + 1) * length
    if valid is not None:
        key = torch.where(valid, key, invalid)
    best = key.topk(take, dim=1, largest=False, sorted=True).values
    found = best < invalid
    idx = torch.where(found, length - 1 - best % length, -1)
    d = torch.where(found, best // length, -1).to(torch.int32)
    if take < k:
        idx = torch.nn.functional.pad(idx, (0, k - take), value=-1)
        d = torch.nn.functional.pad(d, (0, k - take), value=-1)
    return idx, d


def topk_hamming(
    query: torch.Tensor,
    keys: torch.Tensor,
    k: int,
    lengths: Optional[torch.Tensor] = None,
    mask: Optional[torch.Tensor] = None,
    padding_side: str = "right",
) -> tuple[torch.Tensor, torch.Tensor]:
    """ATen form of ``torch.ops.etaretrieval.topk_hamming`` (same arguments and results).

    Examples
    --------
    >>> import torch
    >>> from etaretrieval.torch import aten
    >>> keys = torch.tensor([[0b0001], [0b0111], [0b0010], [0b0000]])
    >>> aten.topk_hamming(torch.tensor([[0]]), keys, 3)
    (tensor([[3, 2, 0]]), tensor([[0, 1, 1]], dtype=torch.int32))
    """
    _ops.check_topk(query, keys, k, lengths, mask, padding_side)
    rows = keys if keys.dim() == 3 else keys.unsqueeze(0)
    dist = _hamming_halves(_halves(query).unsqueeze(-1), _stored(_halves(rows)))
    valid = _validity(lengths, mask, keys.shape[-2], query.device, padding_side)
    return _select(dist.expand(query.shape[0], -1), valid, k, 64 * query.shape[1])


def topk_hamming_lookup(
    query: torch.Tensor,
    ids: torch.Tensor,
    table: torch.Tensor,
    k: int,
    lengths: Optional[torch.Tensor] = None,
    mask: Optional[torch.Tensor] = None,
    padding_id: Optional[int] = None,
    padding_side: str = "right",
) -> tuple[torch.Tensor, torch.Tensor]:
    """ATen form of ``torch.ops.etaretrieval.topk_hamming_lookup`` (same arguments and results).

    A valid position holding an id outside ``[0, N)`` fails an assertion
    (the kernel raises ``IndexError``); the table is only read at ids inside it.

    Examples
    --------
    >>> import torch
    >>> from etaretrieval.torch import aten
    >>> table = torch.tensor([[0b00], [0b01], [0b11]])
    >>> aten.topk_hamming_lookup(torch.tensor([[0b11]]), torch.tensor([[2, 0, 1, 0, 2]]), table, 2, padding_id=0)
    (tensor([[4, 0]]), tensor([[0, 0]], dtype=torch.int32))
    """
    _ops.check_lookup(query, ids, table, k, lengths, mask, padding_side)
    nrows, words = table.shape
    i = ids.to(torch.int64)  # uint64 ids past 2**63 become negative: outside the table either way
    i = i.unsqueeze(0) if i.dim() == 1 else i
    valid = _validity(lengths, mask, ids.shape[-1], query.device, padding_side)
    pad = _ops.padding_bits(padding_id, ids.dtype)  # its int64 bit pattern, or None
    if pad is not None:
        not_pad = torch.ne(i, pad)
        valid = not_pad if valid is None else valid & not_pad
    inside = (i >= 0) & (i < nrows)
    _assert((inside if valid is None else inside | ~valid).all(),
            f"ids: a valid position holds an id outside the table's rows [0, {nrows})")
    rows = table if nrows else table.new_zeros((1, words))
    keys = _halves(rows)[:, torch.where(inside, i, 0)]  # (2 W, R, L): gathered half by half
    if keys.shape[1] == 1:  # one sequence for every query: gathered once
        keys = _stored(keys)
    valid = inside if valid is None else valid & inside
    return _select(_hamming_halves(_halves(query).unsqueeze(-1), keys), valid, k, 64 * words)


def _rows(offsets: torch.Tensor, total: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """:func:`._ops.ragged_rows`, with offsets that are negative, decreasing or past ``total`` failing an assertion."""
    o = offsets.to(torch.int64)
    _assert((o[0] >= 0) & (o[1:] >= o[:-1]).all() & (o[-1] <= total),
            f"offsets must be non-decreasing, from >= 0 to at most the {total} flat values")
    return _ops.ragged_rows(offsets, total)


def _ragged_select(
    dist: torch.Tensor, valid: torch.Tensor, o: torch.Tensor, seg: torch.Tensor, pos: torch.Tensor, k: int,
    max_dist: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-``k`` of each ragged row of ``(T,)`` distances, in :func:`_select`'s order and fill.

    One sort of the flat values by (row, distance, position descending), as
    a stable sort by the key of :func:`_select` and then by row; row ``b``
    starts at ``offsets[b] - offsets[0]`` in it, and its first ``k`` entries
    that are valid are the result. No ``(B, L_max)`` block is built.
    """
    total = dist.shape[0]
    span = total + 1  # positions are < total; >= 1, so an empty batch divides by nothing
    invalid = (max_dist + 1) * span
    key = torch.where(valid, dist.to(torch.int64) * span + (span - 1 - pos), invalid)
    order = key.sort(stable=True).indices
    order = order[seg[order].sort(stable=True).indices]
    ranked = torch.cat([key[order], key.new_full((1,), invalid)])  # the end: a sentinel past every row
    count = torch.cat([valid.new_zeros(1, dtype=torch.int64), valid.to(torch.int64).cumsum(0)])
    found = torch.arange(k, device=dist.device) < (count[o[1:]] - count[o[:-1]]).unsqueeze(1)
    best = ranked[((o[:-1] - o[0]).unsqueeze(1) + torch.arange(k, device=dist.device)).clamp(max=total)]
    idx = torch.where(found, span - 1 - best % span, -1)
    return idx, torch.where(found, best // span, -1).to(torch.int32)


def topk_hamming_ragged(
    query: torch.Tensor, keys: torch.Tensor, k: int, offsets: torch.Tensor, mask: Optional[torch.Tensor] = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """ATen form of ``torch.ops.etaretrieval.topk_hamming_ragged`` (same arguments and results).

    Each flat key is compared with its row's query and the flat values are
    sorted once by (row, distance, position descending).

    Examples
    --------
    >>> import torch
    >>> from etaretrieval.torch import aten
    >>> keys = torch.tensor([[0b01], [0b00], [0b11], [0b10], [0b11]])
    >>> aten.topk_hamming_ragged(torch.tensor([[0b00], [0b11]]), keys, 2, torch.tensor([0, 2, 5]))
    (tensor([[1, 0],
            [2, 0]]), tensor([[0, 1],
            [0, 0]], dtype=torch.int32))
    """
    _ops.check_topk_ragged(query, keys, k, offsets, mask)
    o, seg, pos = _rows(offsets, keys.shape[0])
    queries = torch.cat([query, query.new_zeros((1, query.shape[1]))])  # row B: values of no row
    valid = seg < query.shape[0]
    if mask is not None:
        valid = valid & (mask if mask.dtype == torch.bool else mask != 0)
    return _ragged_select(hamming(queries[seg], keys), valid, o, seg, pos, k, 64 * query.shape[1])


def topk_hamming_lookup_ragged(
    query: torch.Tensor,
    ids: torch.Tensor,
    table: torch.Tensor,
    k: int,
    offsets: torch.Tensor,
    mask: Optional[torch.Tensor] = None,
    padding_id: Optional[int] = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """ATen form of ``torch.ops.etaretrieval.topk_hamming_lookup_ragged`` (same arguments and results).

    A valid position of a row holding an id outside ``[0, N)`` fails an
    assertion (the kernel raises ``IndexError``).

    Examples
    --------
    >>> import torch
    >>> from etaretrieval.torch import aten
    >>> table = torch.tensor([[0b00], [0b01], [0b11]])
    >>> ids, offsets = torch.tensor([2, 0, 1, 0, 2, 1]), torch.tensor([0, 3, 6])
    >>> aten.topk_hamming_lookup_ragged(torch.tensor([[0b11], [0b00]]), ids, table, 2, offsets, padding_id=0)
    (tensor([[0, 2],
            [2, 1]]), tensor([[0, 1],
            [1, 2]], dtype=torch.int32))
    """
    _ops.check_lookup_ragged(query, ids, table, k, offsets, mask)
    nrows, words = table.shape
    o, seg, pos = _rows(offsets, ids.shape[0])
    i = ids.to(torch.int64)
    valid = seg < query.shape[0]
    if mask is not None:
        valid = valid & (mask if mask.dtype == torch.bool else mask != 0)
    pad = _ops.padding_bits(padding_id, ids.dtype)
    if pad is not None:
        valid = valid & torch.ne(i, pad)
    inside = (i >= 0) & (i < nrows)
    _assert((inside | ~valid).all(), f"ids: a valid position holds an id outside the table's rows [0, {nrows})")
    rows = table if nrows else table.new_zeros((1, words))
    queries = torch.cat([query, query.new_zeros((1, words))])
    dist = hamming(queries[seg], rows[torch.where(inside, i, 0)])
    return _ragged_select(dist, valid & inside, o, seg, pos, k, 64 * words)


def sdim_codes(signatures: torch.Tensor, tau: int, groups: int) -> torch.Tensor:
    """``(..., G)`` int64 group codes: code ``g`` holds bits ``[g tau, (g + 1) tau)``, bit ``g tau`` lowest.

    Examples
    --------
    >>> import torch
    >>> from etaretrieval.torch.aten import sdim_codes
    >>> sdim_codes(torch.tensor([[0b10_01_11]]), 2, 3)
    tensor([[3, 1, 2]])
    """
    shift = torch.arange(64, device=signatures.device)
    bits = ((signatures.unsqueeze(-1) >> shift) & 1).flatten(-2)[..., : groups * tau]
    weights = torch.ones(tau, dtype=torch.int64, device=signatures.device) << shift[:tau]
    return (bits.reshape(*signatures.shape[:-1], groups, tau) * weights).sum(-1)


def _matches(
    query: torch.Tensor,
    keys: torch.Tensor,
    tau: int,
    groups: int,
    lengths: Optional[torch.Tensor],
    mask: Optional[torch.Tensor],
) -> torch.Tensor:
    """``(B, L, G)`` bool: valid position ``l`` of row ``b`` has the target's group-``g`` code."""
    rows = keys if keys.dim() == 3 else keys.unsqueeze(0)
    match = sdim_codes(rows, tau, groups) == sdim_codes(query, tau, groups).unsqueeze(1)
    valid = _validity(lengths, mask, keys.shape[-2], query.device, "right")
    return match if valid is None else match & valid.unsqueeze(-1)


def sdim_group_sums(
    query: torch.Tensor,
    keys: torch.Tensor,
    values: torch.Tensor,
    tau: int,
    bits: int,
    lengths: Optional[torch.Tensor] = None,
    mask: Optional[torch.Tensor] = None,
) -> torch.Tensor:
    """ATen form of ``torch.ops.etaretrieval.sdim_group_sums``; differentiable w.r.t. ``values``.

    Examples
    --------
    >>> import torch
    >>> from etaretrieval.torch import aten
    >>> keys, values = torch.tensor([[0b01], [0b11], [0b00]]), torch.tensor([[1.0], [2.0], [4.0]])
    >>> aten.sdim_group_sums(torch.tensor([[0b01]]), keys, values, 1, 2)[0, :, 0]
    tensor([3., 5.])
    """
    batch, groups, _ = _sdim_ops.check_sums(query, keys, values, tau, bits, lengths, mask)
    match = _matches(query, keys, tau, groups, lengths, mask)
    v = values if values.dim() == 3 else values.unsqueeze(0)
    picked = torch.where(match.unsqueeze(-1), v.to(torch.float64).unsqueeze(2), 0.0)  # (B, L, G, d)
    return picked.sum(1).to(values.dtype).expand(batch, -1, -1)


def sdim_group_sums_backward(
    query: torch.Tensor,
    keys: torch.Tensor,
    grad: torch.Tensor,
    tau: int,
    bits: int,
    lengths: Optional[torch.Tensor] = None,
    mask: Optional[torch.Tensor] = None,
) -> torch.Tensor:
    """ATen form of ``torch.ops.etaretrieval.sdim_group_sums_backward``: ``(B, L, d)`` from ``(B, G, d)``."""
    _sdim_ops.check_backward(query, keys, grad, tau, bits, lengths, mask)
    match = _matches(query, keys, tau, grad.shape[1], lengths, mask)
    picked = torch.where(match.unsqueeze(-1), grad.to(torch.float64).unsqueeze(1), 0.0)  # (B, L, G, d)
    return picked.sum(2).to(grad.dtype)


def sdim_group_sums_ragged(
    query: torch.Tensor,
    keys: torch.Tensor,
    values: torch.Tensor,
    tau: int,
    bits: int,
    offsets: torch.Tensor,
    mask: Optional[torch.Tensor] = None,
) -> torch.Tensor:
    """ATen form of ``torch.ops.etaretrieval.sdim_group_sums_ragged``; differentiable w.r.t. ``values``.

    Examples
    --------
    >>> import torch
    >>> from etaretrieval.torch import aten
    >>> keys, values = torch.tensor([[0b01], [0b11], [0b00]]), torch.tensor([[1.0], [2.0], [4.0]])
    >>> aten.sdim_group_sums_ragged(torch.tensor([[0b01], [0b00]]), keys, values, 1, 2, torch.tensor([0, 2, 3]))[..., 0]
    tensor([[3., 1.],
            [4., 4.]])
    """
    batch, groups, d = _sdim_ops.check_sums_ragged(query, keys, values, tau, bits, offsets, mask)
    _rows(offsets, keys.shape[0])
    seg, match = _sdim_ops.ragged_matches(query, keys, tau, groups, offsets, mask)
    picked = torch.where(match.unsqueeze(-1), values.to(torch.float64).unsqueeze(1), 0.0)  # (T, G, d)
    sums = picked.new_zeros((batch + 1, groups, d)).index_add(0, seg, picked)  # row B: values of no row
    return sums[:batch].to(values.dtype)


def sdim_group_sums_ragged_backward(
    query: torch.Tensor,
    keys: torch.Tensor,
    grad: torch.Tensor,
    tau: int,
    bits: int,
    offsets: torch.Tensor,
    mask: Optional[torch.Tensor] = None,
) -> torch.Tensor:
    """ATen form of ``torch.ops.etaretrieval.sdim_group_sums_ragged_backward``: ``(T, d)`` from ``(B, G, d)``.

    Keys of no row get zeros.
    """
    _sdim_ops.check_backward_ragged(query, keys, grad, tau, bits, offsets, mask)
    _rows(offsets, keys.shape[0])
    return _sdim_ops.ragged_group_grads(query, keys, grad, tau, offsets, mask)


def sdim_buckets(
    keys: torch.Tensor,
    values: torch.Tensor,
    tau: int,
    bits: int,
    lengths: Optional[torch.Tensor] = None,
    mask: Optional[torch.Tensor] = None,
) -> torch.Tensor:
    """ATen form of ``torch.ops.etaretrieval.sdim_buckets``.

    Examples
    --------
    >>> import torch
    >>> from etaretrieval.torch import aten
    >>> keys, values = torch.tensor([[0b01], [0b11], [0b10]]), torch.tensor([[3.0, 4.0], [0.0, 2.0], [1.0, 0.0]])
    >>> aten.sdim_buckets(keys, values, 1, 2)[0]
    tensor([[1., 0.],
            [3., 6.]])
    """
    shape = _sdim_ops.check_buckets(keys, values, tau, bits, lengths, mask)
    groups, ncodes, d = shape[-3:]
    batch = shape[0] if len(shape) == 4 else 1
    length = keys.shape[-2]
    codes = sdim_codes(keys if keys.dim() == 3 else keys.unsqueeze(0), tau, groups).expand(batch, length, groups)
    slot = (torch.arange(batch, device=keys.device).view(-1, 1, 1) * groups
            + torch.arange(groups, device=keys.device)) * ncodes + codes  # (B, L, G) into (B G 2**tau) rows
    valid = _validity(lengths, mask, length, keys.device, "right")
    dump = batch * groups * ncodes  # invalid positions add to one extra row, dropped
    if valid is not None:
        slot = torch.where(valid.unsqueeze(-1), slot, dump)
    v = (values if values.dim() == 3 else values.unsqueeze(0)).to(torch.float64)
    src = v.unsqueeze(2).expand(batch, length, groups, d).reshape(-1, d)
    sums = torch.zeros((dump + 1, d), dtype=torch.float64, device=keys.device).index_add(0, slot.reshape(-1), src)
    return sums[:dump].to(values.dtype).reshape(shape)


def sdim_buckets_ragged(
    keys: torch.Tensor, values: torch.Tensor, tau: int, bits: int, offsets: torch.Tensor,
    mask: Optional[torch.Tensor] = None,
) -> torch.Tensor:
    """ATen form of ``torch.ops.etaretrieval.sdim_buckets_ragged``: ``(B, G, 2**tau, d)``.

    Examples
    --------
    >>> import torch
    >>> from etaretrieval.torch import aten
    >>> keys, values = torch.tensor([[0b10], [0b11]]), torch.tensor([[1.0], [2.0]])
    >>> aten.sdim_buckets_ragged(keys, values, 2, 2, torch.tensor([0, 1, 2]))[:, 0, :, 0]  # one group, codes 0..3
    tensor([[0., 0., 1., 0.],
            [0., 0., 0., 2.]])
    """
    _, groups, _, _ = _sdim_ops.check_buckets_ragged(keys, values, tau, bits, offsets, mask)
    _rows(offsets, keys.shape[0])
    return _sdim_ops.ragged_buckets(keys, values, tau, groups, offsets, _ops.bool_mask(mask))


def sdim_from_buckets(query: torch.Tensor, buckets: torch.Tensor) -> torch.Tensor:
    """ATen form of ``torch.ops.etaretrieval.sdim_from_buckets``: each group's row normalised, averaged.

    Examples
    --------
    >>> import torch
    >>> from etaretrieval.torch import aten
    >>> buckets = torch.tensor([[[1.0, 0.0], [3.0, 4.0]], [[0.0, 0.0], [0.0, 2.0]]], dtype=torch.float64)
    >>> aten.sdim_from_buckets(torch.tensor([[0b01]]), buckets)
    tensor([[0.3000, 0.4000]], dtype=torch.float64)
    """
    batch, d, tau = _sdim_ops.check_from_buckets(query, buckets)
    groups = buckets.shape[-3]
    codes = sdim_codes(query, tau, groups)  # (B, G)
    b = buckets if buckets.dim() == 4 else buckets.unsqueeze(0)
    rows = b.expand(batch, -1, -1, -1).gather(2, codes.view(batch, groups, 1, 1).expand(-1, -1, 1, d)).squeeze(2)
    s = rows.to(torch.float64)
    n2 = (s * s).sum(-1, keepdim=True)
    unit = torch.where(n2 != 0, s / torch.where(n2 != 0, n2, 1.0).sqrt(), 0.0)  # NaN rows stay NaN
    return (unit.sum(1) / groups).to(buckets.dtype)


def decompositions() -> dict[torch._ops.OpOverload, Callable[..., object]]:
    """The table for ``ExportedProgram.run_decompositions``: every etaretrieval operator -> its ATen form.

    Returns
    -------
    dict
        ``torch.ops.etaretrieval.<op>.default`` -> the function of this
        module with the same name.

    Examples
    --------
    >>> import torch
    >>> from etaretrieval.torch import decompositions
    >>> table = decompositions()
    >>> table[torch.ops.etaretrieval.topk_hamming.default].__name__
    'topk_hamming'

    An exported program, decomposed, holds ATen operators only
    (``program.run_decompositions(decompositions())``; see the
    Deploying page of the user guide).
    """
    ops = torch.ops.etaretrieval
    table: dict[torch._ops.OpOverload, Callable[..., object]] = {
        ops.pack_signatures.default: pack_signatures,
        ops.topk_hamming.default: topk_hamming,
        ops.topk_hamming_lookup.default: topk_hamming_lookup,
        ops.topk_hamming_ragged.default: topk_hamming_ragged,
        ops.topk_hamming_lookup_ragged.default: topk_hamming_lookup_ragged,
        ops.sdim_group_sums.default: sdim_group_sums,
        ops.sdim_group_sums_backward.default: sdim_group_sums_backward,
        ops.sdim_group_sums_ragged.default: sdim_group_sums_ragged,
        ops.sdim_group_sums_ragged_backward.default: sdim_group_sums_ragged_backward,
        ops.sdim_buckets.default: sdim_buckets,
        ops.sdim_buckets_ragged.default: sdim_buckets_ragged,
        ops.sdim_from_buckets.default: sdim_from_buckets,
    }
    return table

