"""SDIM in PyTorch: custom operators and the :class:`SDIMAttention` module.

Operators (``torch.ops.etaretrieval.*``; int64 tensors carry the uint64
signature words; fake kernels for ``torch.compile``; the CPU kernels run the
Numba kernels on zero-copy numpy views, the CUDA kernels the numba-cuda ones on
torch's current stream):

- ``sdim_group_sums(query, keys, values, tau, bits, lengths=None, mask=None)``
  -> ``(B, G, d)`` per-group sums ``S`` (:func:`etaretrieval.sdim_group_sums`),
  differentiable with respect to ``values``: the gradient of ``values[b, l]``
  is the sum of ``grad_S[b, g]`` over the groups where position ``l`` matches
  (``sdim_group_sums_backward``, another kernel). Codes are not differentiable.
- ``sdim_group_sums_ragged(query, keys, values, tau, bits, offsets, mask=None)``:
  the same over ragged rows (flat ``(T, W)`` keys and ``(T, d)`` values, row
  ``b`` at ``offsets[b]:offsets[b + 1]``, a flat ``(T,)`` mask;
  :func:`etaretrieval.ragged.sdim_group_sums_ragged`), differentiable with
  respect to ``values`` (``sdim_group_sums_ragged_backward``: torch operations).
- ``sdim_buckets(keys, values, tau, bits, lengths=None, mask=None)`` and
  ``sdim_from_buckets(query, buckets)``: the serving form
  (:func:`etaretrieval.sdim_buckets`, :func:`etaretrieval.sdim_from_buckets`),
  not differentiable; ``sdim_buckets_ragged(keys, values, tau, bits, offsets,
  mask=None)``: the summaries of ragged rows
  (:func:`etaretrieval.ragged.sdim_buckets_ragged`).

:class:`SDIMAttention` normalises and averages ``S`` in torch, so that
autograd reaches ``values``; it equals :func:`etaretrieval.sdim_pool` up to
float rounding (torch sums the squares in its own order).
"""

from __future__ import annotations

from typing import Any, Callable, Optional, cast

import torch

from .. import ragged, sdim
from .._validate import DTypeError, _shape, check_keys_shape
from ..simhash import hyperplanes
from . import _ops
from ._buffers import FixedDtypeBuffers
from ._cuda import _bits, _device, _stream
from ._jagged import aligned, flat_mask, is_jagged, parts, row_index
from ._ops import _check_validity, _numpy, _on, _require_cpu, _signatures, _uint64

__all__ = ["SDIMAttention", "sdim_group_sums", "sdim_buckets", "sdim_from_buckets", "normalise_mean"]

_FLOATS = (torch.float32, torch.float64)
_OPS = ("sdim_group_sums", "sdim_group_sums_backward", "sdim_buckets", "sdim_from_buckets", "sdim_group_sums_ragged",
        "sdim_group_sums_ragged_backward", "sdim_buckets_ragged")
#: Whether this import defines the operators (a reload finds them in the dispatcher and reuses them).
_FRESH = not all(hasattr(torch.ops.etaretrieval, name) for name in _OPS)


def _values(name: str, v: torch.Tensor, batch: int, length: int, device: torch.device) -> int:
    """Check ``(B, L, d)`` / ``(L, d)`` float values; return ``d``."""
    _on(name, v, device)
    if v.dtype not in _FLOATS:
        raise DTypeError(f"{name} must have dtype torch.float32 or torch.float64, got {v.dtype}")
    if v.dim() not in (2, 3) or v.shape[-2] != length or (v.dim() == 3 and v.shape[0] != batch):
        raise ValueError(
            f"{name} must have shape ({batch}, {length}, d) or ({length}, d) to match the keys, "
            f"got shape {_shape(tuple(v.shape))}"
        )
    return int(v.shape[-1])


def _query_keys(query: torch.Tensor, keys: torch.Tensor) -> tuple[int, int, int]:
    """Check target and behaviour signatures; return ``(B, W, L)``."""
    q = _signatures("query", query, (2,), "(B, W)", None)
    kk = _signatures("keys", keys, (2, 3), "(B, L, W) or (L, W)", q.device)
    batch, words = q.shape
    check_keys_shape(tuple(kk.shape), batch, words)
    return batch, words, int(kk.shape[-2])


def check_sums(
    query: torch.Tensor,
    keys: torch.Tensor,
    values: torch.Tensor,
    tau: int,
    bits: int,
    lengths: Optional[torch.Tensor],
    mask: Optional[torch.Tensor],
) -> tuple[int, int, int]:
    """Check the inputs of ``sdim_group_sums``; return ``(B, G, d)``."""
    batch, words, length = _query_keys(query, keys)
    d = _values("values", values, batch, length, query.device)
    groups = sdim.check_groups(words, sdim.check_tau(tau), bits)
    _check_validity(lengths, mask, batch, length, query.device)
    return batch, groups, d


def check_backward(
    query: torch.Tensor,
    keys: torch.Tensor,
    grad: torch.Tensor,
    tau: int,
    bits: int,
    lengths: Optional[torch.Tensor],
    mask: Optional[torch.Tensor],
) -> tuple[int, int, int]:
    """Check the inputs of ``sdim_group_sums_backward`` (``grad`` ``(B, G, d)``); return ``(B, L, d)``."""
    batch, words, length = _query_keys(query, keys)
    groups = sdim.check_groups(words, sdim.check_tau(tau), bits)
    _on("grad", grad, query.device)
    if grad.dtype not in _FLOATS:
        raise DTypeError(f"grad must have dtype torch.float32 or torch.float64, got {grad.dtype}")
    if grad.dim() != 3 or tuple(grad.shape[:2]) != (batch, groups):
        raise ValueError(f"grad must have shape ({batch}, {groups}, d), got shape {_shape(tuple(grad.shape))}")
    _check_validity(lengths, mask, batch, length, query.device)
    return batch, length, int(grad.shape[2])


def check_buckets(
    keys: torch.Tensor,
    values: torch.Tensor,
    tau: int,
    bits: int,
    lengths: Optional[torch.Tensor],
    mask: Optional[torch.Tensor],
) -> tuple[int, ...]:
    """Check the inputs of ``sdim_buckets``; return the output shape."""
    kk = _signatures("keys", keys, (2, 3), "(B, L, W) or (L, W)", None)
    batched = kk.dim() == 3 or values.dim() == 3
    batch = kk.shape[0] if kk.dim() == 3 else (values.shape[0] if values.dim() == 3 else 1)
    d = _values("values", values, batch, kk.shape[-2], kk.device)
    tau = sdim.check_tau(tau)
    groups = sdim.check_groups(kk.shape[-1], tau, bits)
    sdim.check_bucket_size(groups, tau, d)
    _check_validity(lengths, mask, batch, kk.shape[-2], kk.device)
    return ((batch,) if batched else ()) + (groups, 1 << tau, d)


def check_from_buckets(query: torch.Tensor, buckets: torch.Tensor) -> tuple[int, int, int]:
    """Check the inputs of ``sdim_from_buckets``; return ``(B, d, tau)``."""
    q = _signatures("query", query, (2,), "(B, W)", None)
    _on("buckets", buckets, q.device)
    if buckets.dtype not in _FLOATS:
        raise DTypeError(f"buckets must have dtype torch.float32 or torch.float64, got {buckets.dtype}")
    batch, words = q.shape
    ncodes = int(buckets.shape[-2]) if buckets.dim() >= 2 else 0
    tau = ncodes.bit_length() - 1
    if (buckets.dim() not in (3, 4) or (buckets.dim() == 4 and buckets.shape[0] != batch)
            or ncodes != 1 << tau or not 1 <= tau <= sdim.MAX_TAU):
        raise ValueError(
            f"buckets must have shape (G, 2**tau, d) or ({batch}, G, 2**tau, d) with tau in 1..{sdim.MAX_TAU}, "
            f"got shape {_shape(tuple(buckets.shape))}"
        )
    groups = int(buckets.shape[-3])
    if not 64 * (words - 1) < groups * tau <= 64 * words:
        raise ValueError(
            f"buckets of G = {groups} groups of tau = {tau} bits summarise {groups * tau}-bit signatures, "
            f"but query has W = {words} words ({64 * (words - 1) + 1}..{64 * words} bits)"
        )
    return batch, int(buckets.shape[-1]), tau


def _define(name: str, fake: Callable[..., object]) -> Callable[[Callable[..., object]], Callable[..., object]]:
    """Register ``fn`` as ``etaretrieval::<name>`` with its fake kernel, or reuse the registered op."""

    def register(fn: Callable[..., object]) -> Callable[..., object]:
        if not _FRESH:
            existing: Callable[..., object] = getattr(torch.ops.etaretrieval, name)
            return existing
        op = torch.library.custom_op(f"etaretrieval::{name}", fn, mutates_args=(), **_ops._CUSTOM_OP_TAGS)
        op.register_fake(fake)
        op.__doc__ = fn.__doc__
        return op

    return register


def _sums_fake(
    query: torch.Tensor,
    keys: torch.Tensor,
    values: torch.Tensor,
    tau: int,
    bits: int,
    lengths: Optional[torch.Tensor] = None,
    mask: Optional[torch.Tensor] = None,
) -> torch.Tensor:
    return values.new_empty(check_sums(query, keys, values, tau, bits, lengths, mask))


@_define("sdim_group_sums", _sums_fake)
def sdim_group_sums(
    query: torch.Tensor,
    keys: torch.Tensor,
    values: torch.Tensor,
    tau: int,
    bits: int,
    lengths: Optional[torch.Tensor] = None,
    mask: Optional[torch.Tensor] = None,
) -> torch.Tensor:
    """SDIM per-group sums ``S`` (see :func:`etaretrieval.sdim_group_sums`), differentiable w.r.t. ``values``.

    Parameters
    ----------
    query : torch.Tensor
        ``(B, W)`` int64 target signatures.
    keys : torch.Tensor
        ``(B, L, W)`` or shared ``(L, W)`` int64 behaviour signatures.
    values : torch.Tensor
        ``(B, L, d)`` or shared ``(L, d)`` float32/float64.
    tau : int
        Bits per group, ``1..16``, dividing ``bits``.
    bits : int
        Signature length ``m``; ``G = bits / tau``.
    lengths, mask : torch.Tensor, optional
        Valid positions, as in ``topk_hamming``.

    Returns
    -------
    torch.Tensor
        ``(B, G, d)`` of the dtype of ``values``: ``S[b, g]`` sums the valid
        ``values[b, l]`` whose group-``g`` code equals the target's.

    Examples
    --------
    >>> import torch, etaretrieval.torch
    >>> keys = torch.tensor([[0b01], [0b11], [0b00]])
    >>> values = torch.tensor([[1.0], [2.0], [4.0]], requires_grad=True)
    >>> s = torch.ops.etaretrieval.sdim_group_sums(torch.tensor([[0b01]]), keys, values, 1, 2)
    >>> s[0, :, 0]
    tensor([3., 5.], grad_fn=<SelectBackward0>)
    >>> s.sum().backward()
    >>> values.grad.ravel()                 # row 0 matches both groups, row 1 group 0, row 2 group 1
    tensor([2., 1., 1.])
    """
    check_sums(query, keys, values, tau, bits, lengths, mask)
    _require_cpu("sdim_group_sums", query)
    return torch.from_numpy(
        sdim.sdim_group_sums(_uint64(query), _uint64(keys), _numpy(values), tau, bits=bits,
                             lengths=_numpy(lengths), mask=_numpy(mask))
    )


def _backward_fake(
    query: torch.Tensor,
    keys: torch.Tensor,
    grad: torch.Tensor,
    tau: int,
    bits: int,
    lengths: Optional[torch.Tensor] = None,
    mask: Optional[torch.Tensor] = None,
) -> torch.Tensor:
    return grad.new_empty(check_backward(query, keys, grad, tau, bits, lengths, mask))


@_define("sdim_group_sums_backward", _backward_fake)
def sdim_group_sums_backward(
    query: torch.Tensor,
    keys: torch.Tensor,
    grad: torch.Tensor,
    tau: int,
    bits: int,
    lengths: Optional[torch.Tensor] = None,
    mask: Optional[torch.Tensor] = None,
) -> torch.Tensor:
    """Gradient of ``sdim_group_sums`` w.r.t. ``values``: ``(B, L, d)`` from ``grad`` ``(B, G, d)``."""
    check_backward(query, keys, grad, tau, bits, lengths, mask)
    _require_cpu("sdim_group_sums_backward", query)
    return torch.from_numpy(
        sdim.group_sums_backward(_uint64(query), _uint64(keys), _numpy(grad), tau, _numpy(lengths), _numpy(mask))
    )


def _setup_sums(ctx: Any, inputs: tuple[Any, ...], output: torch.Tensor) -> None:
    query, keys, values, tau, bits, lengths, mask = inputs
    ctx.save_for_backward(query, keys, lengths, mask)
    ctx.tau, ctx.bits, ctx.shared = tau, bits, values.dim() == 2


def _backward_sums(ctx: Any, grad: torch.Tensor) -> tuple[Optional[torch.Tensor], ...]:
    query, keys, lengths, mask = ctx.saved_tensors
    grad_values = None
    if ctx.needs_input_grad[2]:
        grad_values = torch.ops.etaretrieval.sdim_group_sums_backward(
            query, keys, grad, ctx.tau, ctx.bits, lengths, mask
        )
        if ctx.shared:  # (L, d) values shared by every row
            grad_values = grad_values.sum(0)
    return None, None, grad_values, None, None, None, None


def _flat_values(name: str, v: torch.Tensor, total: int, device: torch.device) -> int:
    """Check flat ``(T, d)`` float values of ragged rows; return ``d``."""
    _on(name, v, device)
    if v.dtype not in _FLOATS:
        raise DTypeError(f"{name} must have dtype torch.float32 or torch.float64, got {v.dtype}")
    if v.dim() != 2 or v.shape[0] != total:
        raise ValueError(f"{name} must have shape ({total}, d), one row per key, got shape {_shape(tuple(v.shape))}")
    return int(v.shape[1])


def _ragged_query_keys(query: torch.Tensor, keys: torch.Tensor) -> tuple[int, int, int]:
    """Check target signatures and flat behaviour signatures; return ``(B, W, T)``."""
    q = _signatures("query", query, (2,), "(B, W)", None)
    kk = _signatures("keys", keys, (2,), "(T, W): the flat keys of every row", q.device)
    batch, words = q.shape
    check_keys_shape(tuple(kk.shape), batch, words)
    return batch, words, int(kk.shape[0])


def check_sums_ragged(
    query: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, tau: int, bits: int, offsets: torch.Tensor,
    mask: Optional[torch.Tensor],
) -> tuple[int, int, int]:
    """Check the inputs of ``sdim_group_sums_ragged``; return ``(B, G, d)``."""
    batch, words, total = _ragged_query_keys(query, keys)
    d = _flat_values("values", values, total, query.device)
    groups = sdim.check_groups(words, sdim.check_tau(tau), bits)
    _ops.check_ragged(offsets, mask, batch, total, query.device)
    return batch, groups, d


def check_backward_ragged(
    query: torch.Tensor, keys: torch.Tensor, grad: torch.Tensor, tau: int, bits: int, offsets: torch.Tensor,
    mask: Optional[torch.Tensor],
) -> tuple[int, int]:
    """Check the inputs of ``sdim_group_sums_ragged_backward`` (``grad`` ``(B, G, d)``); return ``(T, d)``."""
    batch, words, total = _ragged_query_keys(query, keys)
    groups = sdim.check_groups(words, sdim.check_tau(tau), bits)
    _on("grad", grad, query.device)
    if grad.dtype not in _FLOATS:
        raise DTypeError(f"grad must have dtype torch.float32 or torch.float64, got {grad.dtype}")
    if grad.dim() != 3 or tuple(grad.shape[:2]) != (batch, groups):
        raise ValueError(f"grad must have shape ({batch}, {groups}, d), got shape {_shape(tuple(grad.shape))}")
    _ops.check_ragged(offsets, mask, batch, total, query.device)
    return total, int(grad.shape[2])


def ragged_matches(
    query: torch.Tensor, keys: torch.Tensor, tau: int, groups: int, offsets: torch.Tensor,
    mask: Optional[torch.Tensor],
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(seg, match)`` of checked ragged inputs: each flat key's row (``B`` for none) and ``(T, G)`` bool.

    ``match[t, g]``: key ``t`` is valid (in a row, ``mask``) and its group-``g``
    code equals its row's target's, i.e. the ``tau`` bits of group ``g`` of
    ``keys[t] ^ query[row]`` are all zero. Torch operations only.
    """
    _, seg, _ = _ops.ragged_rows(offsets, keys.shape[0])
    queries = torch.cat([query, query.new_zeros((1, query.shape[1]))])  # row B: keys of no row
    valid = seg < query.shape[0]
    m = _ops.bool_mask(mask)
    if m is not None:
        valid = valid & m
    return seg, (group_codes(keys ^ queries[seg], tau, groups) == 0) & valid.unsqueeze(1)


def group_codes(x: torch.Tensor, tau: int, groups: int) -> torch.Tensor:
    """``(N, G)`` int64 codes of ``(N, W)`` signature words: code ``g`` is ``sum_j bit(g tau + j) 2**j``.

    One or two word reads per group (a group may straddle two words); the
    arithmetic right shift of a negative int64 word only brings in bits that
    the mask then clears.
    """
    low = (1 << tau) - 1
    out = []
    for g in range(groups):
        word, shift = divmod(g * tau, 64)
        code = (x[:, word] >> shift) & (low if shift + tau <= 64 else (1 << (64 - shift)) - 1)
        if shift + tau > 64:  # the group's high bits open the next word
            code = code | ((x[:, word + 1] & ((1 << (shift + tau - 64)) - 1)) << (64 - shift))
        out.append(code)
    return torch.stack(out, dim=1) if out else x.new_zeros((x.shape[0], 0))


def ragged_buckets(
    keys: torch.Tensor, values: torch.Tensor, tau: int, groups: int, offsets: torch.Tensor,
    mask: Optional[torch.Tensor],
) -> torch.Tensor:
    """``(B, G, 2**tau, d)`` bucket sums of ragged rows (:func:`etaretrieval.sdim_buckets` per row); torch operations.

    Each valid value is added, in every group, to the bucket of its code
    there (``sum_j bit_j 2**j``), in float64 and in position order
    (``index_add``), then rounded to the values' dtype; values of no row
    are left out. The ATen form of ``sdim_buckets_ragged``.
    """
    total, d = values.shape
    rows = row_index(offsets, total)
    batch, ncodes = offsets.shape[0] - 1, 1 << tau
    valid = rows < batch if mask is None else (rows < batch) & mask
    codes = group_codes(keys, tau, groups)
    slot = (rows.unsqueeze(1) * groups + torch.arange(groups, device=keys.device)) * ncodes + codes
    slot = torch.where(valid.unsqueeze(1), slot, batch * groups * ncodes)  # the last slot: dropped
    out = values.new_zeros((batch * groups * ncodes + 1, d), dtype=torch.float64)
    src = values.to(torch.float64).unsqueeze(1).expand(total, groups, d).reshape(-1, d)
    out = out.index_add(0, slot.reshape(-1), src)
    return out[:-1].to(values.dtype).view(batch, groups, ncodes, d)


def check_buckets_ragged(
    keys: torch.Tensor, values: torch.Tensor, tau: int, bits: int, offsets: torch.Tensor,
    mask: Optional[torch.Tensor],
) -> tuple[int, int, int, int]:
    """Check the inputs of ``sdim_buckets_ragged``; return the output shape ``(B, G, 2**tau, d)``."""
    kk = _signatures("keys", keys, (2,), "(T, W): the flat keys of every row", None)
    total = int(kk.shape[0])
    d = _flat_values("values", values, total, kk.device)
    tau = sdim.check_tau(tau)
    groups = sdim.check_groups(int(kk.shape[1]), tau, bits)
    sdim.check_bucket_size(groups, tau, d)
    if offsets.dim() != 1 or offsets.shape[0] == 0:
        raise ValueError(f"offsets must have shape (B + 1,) for B rows, got shape {_shape(tuple(offsets.shape))}")
    batch = offsets.shape[0] - 1
    _ops.check_ragged(offsets, mask, batch, total, kk.device)
    return batch, groups, 1 << tau, d


def _buckets_ragged_fake(
    keys: torch.Tensor, values: torch.Tensor, tau: int, bits: int, offsets: torch.Tensor,
    mask: Optional[torch.Tensor] = None,
) -> torch.Tensor:
    return values.new_empty(check_buckets_ragged(keys, values, tau, bits, offsets, mask))


@_define("sdim_buckets_ragged", _buckets_ragged_fake)
def sdim_buckets_ragged(
    keys: torch.Tensor, values: torch.Tensor, tau: int, bits: int, offsets: torch.Tensor,
    mask: Optional[torch.Tensor] = None,
) -> torch.Tensor:
    """SDIM bucket summaries of ragged rows (:func:`etaretrieval.ragged.sdim_buckets_ragged`); not differentiable.

    ``keys`` ``(T, W)`` int64 signature words and ``values`` ``(T, d)``
    float32/float64 flat, row ``b`` at ``offsets[b]:offsets[b + 1]``,
    ``mask`` ``None`` or flat ``(T,)``. Returns ``(B, G, 2**tau, d)``, row
    ``b``'s equal bit for bit to ``sdim_buckets`` on that row alone.

    Examples
    --------
    >>> import torch, etaretrieval.torch
    >>> keys = torch.tensor([[0b01], [0b11], [0b10]])
    >>> values = torch.tensor([[3.0, 4.0], [0.0, 2.0], [1.0, 0.0]])
    >>> torch.ops.etaretrieval.sdim_buckets_ragged(keys, values, 1, 2, torch.tensor([0, 2, 3]))[0, 0]
    tensor([[0., 0.],
            [3., 6.]])
    """
    check_buckets_ragged(keys, values, tau, bits, offsets, mask)
    _require_cpu("sdim_buckets_ragged", keys)
    return torch.from_numpy(ragged.sdim_buckets_ragged(
        _uint64(keys), _numpy(values), tau, _numpy(offsets), bits=bits, mask=_numpy(_ops.bool_mask(mask)),
    ))


def ragged_group_grads(
    query: torch.Tensor, keys: torch.Tensor, grad: torch.Tensor, tau: int, offsets: torch.Tensor,
    mask: Optional[torch.Tensor],
) -> torch.Tensor:
    """``(T, d)`` gradient of the ragged group sums w.r.t. ``values``: per key, ``grad`` of its matching groups.

    Summed in float64, groups in increasing order (as the padded kernel),
    one ``(T, d)`` step per group; zero for keys of no row.
    """
    seg, match = ragged_matches(query, keys, tau, grad.shape[1], offsets, mask)
    rows = torch.cat([grad.to(torch.float64), grad.new_zeros((1, *grad.shape[1:]), dtype=torch.float64)])
    out = rows.new_zeros((keys.shape[0], grad.shape[2]))
    for g in range(grad.shape[1]):
        out = out + torch.where(match[:, g : g + 1], rows[:, g][seg], 0.0)
    return out.to(grad.dtype)


def _sums_ragged_fake(
    query: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, tau: int, bits: int, offsets: torch.Tensor,
    mask: Optional[torch.Tensor] = None,
) -> torch.Tensor:
    return values.new_empty(check_sums_ragged(query, keys, values, tau, bits, offsets, mask))


@_define("sdim_group_sums_ragged", _sums_ragged_fake)
def sdim_group_sums_ragged(
    query: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, tau: int, bits: int, offsets: torch.Tensor,
    mask: Optional[torch.Tensor] = None,
) -> torch.Tensor:
    """SDIM per-group sums over ragged rows, differentiable w.r.t. ``values``.

    The ragged form of ``sdim_group_sums``
    (:func:`etaretrieval.ragged.sdim_group_sums_ragged`): ``keys`` ``(T, W)``
    and ``values`` ``(T, d)`` flat, row ``b`` at ``offsets[b]:offsets[b + 1]``,
    ``mask`` ``None`` or flat ``(T,)``. Returns ``(B, G, d)``, equal bit for
    bit to ``sdim_group_sums`` on the rows padded with ``lengths``.

    Examples
    --------
    >>> import torch, etaretrieval.torch
    >>> keys = torch.tensor([[0b01], [0b11], [0b00]])
    >>> values = torch.tensor([[1.0], [2.0], [4.0]], requires_grad=True)
    >>> query, offsets = torch.tensor([[0b01], [0b00]]), torch.tensor([0, 2, 3])
    >>> s = torch.ops.etaretrieval.sdim_group_sums_ragged(query, keys, values, 1, 2, offsets)
    >>> s[:, :, 0]
    tensor([[3., 1.],
            [4., 4.]], grad_fn=<SelectBackward0>)
    >>> s.sum().backward()
    >>> values.grad.ravel()
    tensor([2., 1., 2.])
    """
    check_sums_ragged(query, keys, values, tau, bits, offsets, mask)
    _require_cpu("sdim_group_sums_ragged", query)
    return torch.from_numpy(ragged.sdim_group_sums_ragged(
        _uint64(query), _uint64(keys), _numpy(values), tau, _numpy(offsets), bits=bits,
        mask=_numpy(_ops.bool_mask(mask)),
    ))


def _backward_ragged_fake(
    query: torch.Tensor, keys: torch.Tensor, grad: torch.Tensor, tau: int, bits: int, offsets: torch.Tensor,
    mask: Optional[torch.Tensor] = None,
) -> torch.Tensor:
    return grad.new_empty(check_backward_ragged(query, keys, grad, tau, bits, offsets, mask))


@_define("sdim_group_sums_ragged_backward", _backward_ragged_fake)
def sdim_group_sums_ragged_backward(
    query: torch.Tensor, keys: torch.Tensor, grad: torch.Tensor, tau: int, bits: int, offsets: torch.Tensor,
    mask: Optional[torch.Tensor] = None,
) -> torch.Tensor:
    """Gradient of ``sdim_group_sums_ragged`` w.r.t. ``values``: ``(T, d)`` from ``grad`` ``(B, G, d)``.

    Offsets are checked on the host; the gradient is computed with torch
    operations on the inputs' device (:func:`ragged_group_grads`, also the ATen form).
    """
    total = check_backward_ragged(query, keys, grad, tau, bits, offsets, mask)[0]
    ragged.as_offsets(offsets.detach().cpu().numpy(), query.shape[0], total, "keys")
    return ragged_group_grads(query, keys, grad, tau, offsets, mask)


def _setup_sums_ragged(ctx: Any, inputs: tuple[Any, ...], output: torch.Tensor) -> None:
    query, keys, values, tau, bits, offsets, mask = inputs
    ctx.save_for_backward(query, keys, offsets, mask)
    ctx.tau, ctx.bits = tau, bits


def _backward_sums_ragged(ctx: Any, grad: torch.Tensor) -> tuple[Optional[torch.Tensor], ...]:
    query, keys, offsets, mask = ctx.saved_tensors
    grad_values = None
    if ctx.needs_input_grad[2]:
        grad_values = torch.ops.etaretrieval.sdim_group_sums_ragged_backward(
            query, keys, grad, ctx.tau, ctx.bits, offsets, mask
        )
    return None, None, grad_values, None, None, None, None


def _buckets_fake(
    keys: torch.Tensor,
    values: torch.Tensor,
    tau: int,
    bits: int,
    lengths: Optional[torch.Tensor] = None,
    mask: Optional[torch.Tensor] = None,
) -> torch.Tensor:
    return values.new_empty(check_buckets(keys, values, tau, bits, lengths, mask))


@_define("sdim_buckets", _buckets_fake)
def sdim_buckets(
    keys: torch.Tensor,
    values: torch.Tensor,
    tau: int,
    bits: int,
    lengths: Optional[torch.Tensor] = None,
    mask: Optional[torch.Tensor] = None,
) -> torch.Tensor:
    """Per-user SDIM bucket sums (see :func:`etaretrieval.sdim_buckets`); serving, not differentiable.

    Parameters
    ----------
    keys : torch.Tensor
        ``(L, W)`` (one user) or ``(B, L, W)`` int64 signatures.
    values : torch.Tensor
        ``(L, d)`` or ``(B, L, d)`` float32/float64.
    tau, bits : int
        Bits per group and signature length.
    lengths, mask : torch.Tensor, optional
        Valid positions.

    Returns
    -------
    torch.Tensor
        ``(G, 2**tau, d)`` or ``(B, G, 2**tau, d)`` of the dtype of ``values``.

    Examples
    --------
    >>> import torch, etaretrieval.torch
    >>> keys = torch.tensor([[0b01], [0b11], [0b10]])
    >>> values = torch.tensor([[3.0, 4.0], [0.0, 2.0], [1.0, 0.0]])
    >>> torch.ops.etaretrieval.sdim_buckets(keys, values, 1, 2)[0]
    tensor([[1., 0.],
            [3., 6.]])
    """
    check_buckets(keys, values, tau, bits, lengths, mask)
    _require_cpu("sdim_buckets", keys)
    return torch.from_numpy(
        sdim.sdim_buckets(_uint64(keys), _numpy(values), tau, bits=bits, lengths=_numpy(lengths), mask=_numpy(mask))
    )


def _from_buckets_fake(query: torch.Tensor, buckets: torch.Tensor) -> torch.Tensor:
    batch, d, _ = check_from_buckets(query, buckets)
    return buckets.new_empty((batch, d))


@_define("sdim_from_buckets", _from_buckets_fake)
def sdim_from_buckets(query: torch.Tensor, buckets: torch.Tensor) -> torch.Tensor:
    """SDIM vectors of candidate targets from a bucket summary (see :func:`etaretrieval.sdim_from_buckets`).

    Parameters
    ----------
    query : torch.Tensor
        ``(B, W)`` int64 target signatures.
    buckets : torch.Tensor
        ``(G, 2**tau, d)`` (one user, every target) or ``(B, G, 2**tau, d)``.

    Returns
    -------
    torch.Tensor
        ``(B, d)`` of the dtype of ``buckets``; ``O(d G)`` per target.

    Examples
    --------
    >>> import torch, etaretrieval.torch
    >>> keys = torch.tensor([[0b01], [0b11], [0b10]])
    >>> values = torch.tensor([[3.0, 4.0], [0.0, 2.0], [1.0, 0.0]], dtype=torch.float64)
    >>> buckets = torch.ops.etaretrieval.sdim_buckets(keys, values, 1, 2)
    >>> torch.ops.etaretrieval.sdim_from_buckets(torch.tensor([[0b01]]), buckets)
    tensor([[0.5236, 0.8472]], dtype=torch.float64)
    """
    check_from_buckets(query, buckets)
    _require_cpu("sdim_from_buckets", query)
    return torch.from_numpy(sdim.sdim_from_buckets(_uint64(query), _numpy(buckets)))


def normalise_mean(sums: torch.Tensor) -> torch.Tensor:
    """``(..., G, d)`` group sums -> ``(..., d)``: each row L2-normalised (zero rows stay zero), then averaged.

    Differentiable; a zero row has zero gradient (no eps, as in the kernels).

    Examples
    --------
    >>> import torch
    >>> from etaretrieval.torch.sdim import normalise_mean
    >>> normalise_mean(torch.tensor([[[3.0, 4.0], [0.0, 0.0]]]))
    tensor([[0.3000, 0.4000]])
    """
    n2 = sums.square().sum(-1, keepdim=True)
    some = n2 != 0  # NaN rows stay NaN, as in the kernels
    unit = sums / torch.where(some, n2, torch.ones_like(n2)).sqrt()
    return torch.where(some, unit, torch.zeros_like(unit)).mean(-2)


def _float_tensor(name: str, t: object, ndim: int, what: str, device: Optional[torch.device]) -> torch.Tensor:
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if t.dtype not in _FLOATS:
        raise DTypeError(f"{name} must have dtype torch.float32 or torch.float64, got {t.dtype}")
    if t.dim() != ndim:
        raise ValueError(f"{name} must have shape {what}, got shape {_shape(tuple(t.shape))}")
    if device is not None and t.device != device:
        raise ValueError(f"{name} must be on the device of the other inputs ({device}), got {t.device}")
    return t


def _valid(mask: Optional[torch.Tensor], shape: tuple[int, int], device: torch.device) -> Optional[torch.Tensor]:
    """A ``(B, L)`` bool mask (numeric masks: non-zero is valid), or ``None``."""
    if mask is None:
        return None
    if not isinstance(mask, torch.Tensor):
        raise TypeError(f"mask must be a torch.Tensor, got {type(mask).__name__}")
    if tuple(mask.shape) != shape:
        raise ValueError(f"mask must have shape {_shape(shape)}, got shape {_shape(tuple(mask.shape))}")
    if mask.device != device:
        raise ValueError(f"mask must be on the device of seq ({device}), got {mask.device}")
    return mask if mask.dtype == torch.bool else mask != 0


class SDIMAttention(FixedDtypeBuffers):
    """SDIM's user-interest block on SimHash signatures (Cao et al., CIKM 2022).

    The ``bits``-bit signatures of the target and of every behaviour are cut
    into ``G = bits / tau`` groups of ``tau`` bits; per group, the values of
    the behaviours whose code equals the target's are summed and
    L2-normalised, and the ``G`` vectors are averaged. Training
    (:meth:`forward`) hashes ``seq`` on each call, like ETA; gradients reach
    ``values`` (and ``seq`` through them), never the codes. Serving
    (:meth:`summarize`, :meth:`forward_from_buckets`) summarises each user
    once and then costs ``O(d G)`` per candidate, whatever ``L``.

    Parameters
    ----------
    dim : int
        Embedding dimension of targets and behaviours (hashed).
    bits : int
        Signature length ``m``, ``1..1024``.
    tau : int
        Bits per group, ``1..16``, dividing ``bits``.
    seed : int, default 0
        Seed of :func:`etaretrieval.hyperplanes`.

    Attributes
    ----------
    planes : torch.Tensor
        ``(dim, bits)`` float32 buffer (fixed, saved in the ``state_dict``).

    Examples
    --------
    >>> import torch
    >>> from etaretrieval.torch import SDIMAttention
    >>> _ = torch.manual_seed(0)
    >>> sdim = SDIMAttention(dim=16, bits=64, tau=4)
    >>> seq = torch.randn(2, 50, 16, requires_grad=True)
    >>> out = sdim(seq[:, 7], seq)
    >>> out.shape, out.requires_grad
    (torch.Size([2, 16]), True)
    >>> with torch.no_grad():
    ...     buckets = sdim.summarize(seq[:1])              # one user, any number of candidates
    ...     served = sdim.forward_from_buckets(seq[0, :5], buckets[0])
    >>> torch.allclose(served, sdim(seq[0, :5], seq[:1].expand(5, -1, -1)), atol=1e-6)
    True
    """

    planes: torch.Tensor

    _fixed_dtype = ("planes",)

    def __init__(self, dim: int, bits: int, tau: int, seed: int = 0) -> None:
        super().__init__()
        planes = torch.from_numpy(hyperplanes(dim, bits, seed))
        self.tau = sdim.check_tau(tau)
        sdim.check_groups((planes.shape[1] + 63) // 64, self.tau, planes.shape[1])
        self.register_buffer("planes", planes)

    @property
    def dim(self) -> int:
        """Embedding dimension."""
        return self.planes.shape[0]

    @property
    def bits(self) -> int:
        """Signature length in bits."""
        return self.planes.shape[1]

    @property
    def groups(self) -> int:
        """Number of groups ``G = bits / tau``."""
        return self.bits // self.tau

    def extra_repr(self) -> str:
        return f"dim={self.dim}, bits={self.bits}, tau={self.tau}"

    def _sequence(
        self, seq: torch.Tensor, mask: Optional[torch.Tensor], values: Optional[torch.Tensor]
    ) -> tuple[torch.Tensor, Optional[torch.Tensor], torch.Tensor]:
        _float_tensor("seq", seq, 3, f"(B, L, {self.dim})", None)
        if seq.shape[-1] != self.dim:
            raise ValueError(f"seq must have shape (B, L, {self.dim}), got shape {_shape(tuple(seq.shape))}")
        batch, length = seq.shape[:2]
        vals = seq if values is None else _float_tensor("values", values, 3, "(B, L, d)", seq.device)
        if vals.shape[:2] != seq.shape[:2]:
            raise ValueError(f"values must have shape ({batch}, {length}, d), got shape {_shape(tuple(vals.shape))}")
        return _ops.pack_signatures(seq, self.planes), _valid(mask, (batch, length), seq.device), vals

    def _query(self, target: torch.Tensor, batch: Optional[int], device: torch.device) -> torch.Tensor:
        _float_tensor("target", target, 2, f"(B, {self.dim})", device)
        if target.shape[1] != self.dim or (batch is not None and target.shape[0] != batch):
            rows = "B" if batch is None else str(batch)
            raise ValueError(f"target must have shape ({rows}, {self.dim}), got shape {_shape(tuple(target.shape))}")
        return _ops.pack_signatures(target, self.planes)

    def forward(
        self,
        target: torch.Tensor,
        seq: torch.Tensor,
        mask: Optional[torch.Tensor] = None,
        *,
        values: Optional[torch.Tensor] = None,
    ) -> torch.Tensor:
        """SDIM user-interest vectors.

        Parameters
        ----------
        target : torch.Tensor
            ``(B, dim)`` float32/float64 target embeddings (hashed).
        seq : torch.Tensor
            ``(B, L, dim)`` behaviour embeddings (hashed), oldest to newest;
            or a ``torch.nested`` jagged ``(B, j, dim)`` tensor (ragged rows,
            computed on its flat values by ``sdim_group_sums_ragged``, no
            ``(B, L_max)`` tensor built).
        mask : torch.Tensor, optional
            ``(B, L)`` valid positions: bool, or numeric with non-zero valid.
            With a jagged ``seq``: jagged ``(B, j)`` with its offsets.
        values : torch.Tensor, optional
            ``(B, L, d)`` vectors summed at the matching positions (default
            ``seq``; e.g. ``seq`` plus a time embedding); jagged ``(B, j, d)``
            with the offsets of a jagged ``seq``.

        Returns
        -------
        torch.Tensor
            ``(B, d)``; differentiable w.r.t. ``values`` (or ``seq``). A
            jagged ``seq`` gives the padded rows' result up to float rounding.
        """
        if is_jagged(seq):
            flat, offsets, valid, vals = self._jagged(seq, mask, values)
            query = self._query(target, offsets.shape[0] - 1, flat.device)
            keys = _ops.pack_signatures(flat, self.planes)
            sums = torch.ops.etaretrieval.sdim_group_sums_ragged(query, keys, vals, self.tau, self.bits, offsets, valid)
            return normalise_mean(sums)
        keys, valid, vals = self._sequence(seq, mask, values)
        query = self._query(target, seq.shape[0], seq.device)
        sums = torch.ops.etaretrieval.sdim_group_sums(query, keys, vals, self.tau, self.bits, None, valid)
        return normalise_mean(sums)

    def _jagged(
        self, seq: torch.Tensor, mask: Optional[torch.Tensor], values: Optional[torch.Tensor]
    ) -> tuple[torch.Tensor, torch.Tensor, Optional[torch.Tensor], torch.Tensor]:
        """Check a jagged ``seq`` with its ``mask`` and ``values``; return the flat ``(seq, offsets, mask, values)``."""
        flat, offsets = parts("seq", seq)
        total = flat.shape[0]
        _float_tensor("seq", flat, 2, f"(B, j, {self.dim}) (jagged)", None)
        if flat.shape[1] != self.dim:
            raise ValueError(f"seq must have shape (B, j, {self.dim}), got shape (B, j, {flat.shape[1]})")
        vals = flat
        if values is not None:
            vals = _float_tensor("values", aligned("values", values, offsets, total, "seq"), 2,
                                 "(B, j, d) (jagged like seq)", flat.device)
        return flat, offsets, flat_mask(mask, offsets, total, "seq"), vals

    def summarize(
        self, seq: torch.Tensor, mask: Optional[torch.Tensor] = None, values: Optional[torch.Tensor] = None
    ) -> torch.Tensor:
        """The target-independent bucket summary of each sequence (serving; not differentiable).

        Parameters
        ----------
        seq, mask, values
            As in :meth:`forward` (padded, or jagged: summed on the flat
            values with torch operations, equal to the padded rows' summary
            up to float rounding).

        Returns
        -------
        torch.Tensor
            ``(B, G, 2**tau, d)``; ``buckets[b]`` serves any number of
            candidates of user ``b`` through :meth:`forward_from_buckets`.
        """
        if is_jagged(seq):
            flat, offsets, valid, vals = self._jagged(seq, mask, values)
            sdim.check_bucket_size(self.groups, self.tau, vals.shape[1])
            keys = _ops.pack_signatures(flat.detach(), self.planes)
            with torch.no_grad():
                return ragged_buckets(keys, vals, self.tau, self.groups, offsets, valid)
        keys, valid, vals = self._sequence(seq, mask, values)
        return torch.ops.etaretrieval.sdim_buckets(keys, vals.detach(), self.tau, self.bits, None, valid)

    def forward_from_buckets(self, target: torch.Tensor, buckets: torch.Tensor) -> torch.Tensor:
        """SDIM vectors of targets from :meth:`summarize`'s buckets, ``O(d G)`` each (serving).

        Parameters
        ----------
        target : torch.Tensor
            ``(B, dim)`` candidate target embeddings.
        buckets : torch.Tensor
            ``(G, 2**tau, d)`` one user's summary shared by every target, or
            ``(B, G, 2**tau, d)`` one per target.

        Returns
        -------
        torch.Tensor
            ``(B, d)``, equal to :meth:`forward` on the summarised sequences
            up to float rounding.
        """
        query = self._query(target, None, buckets.device)
        return torch.ops.etaretrieval.sdim_from_buckets(query, buckets)


# ----------------------------------------------------------------------------- CUDA kernels


def _sums_cuda(
    query: torch.Tensor,
    keys: torch.Tensor,
    values: torch.Tensor,
    tau: int,
    bits: int,
    lengths: Optional[torch.Tensor] = None,
    mask: Optional[torch.Tensor] = None,
) -> torch.Tensor:
    from ..cuda import sdim as device

    out = torch.empty(check_sums(query, keys, values, tau, bits, lengths, mask), dtype=values.dtype,
                      device=values.device)
    with torch.cuda.device(query.device):
        device.group_sums_into(query.detach(), keys.detach(), values.detach(), tau, out,
                               lengths=_bits(lengths), mask=_bits(mask), stream=_stream(out))
    return out


def _backward_cuda(
    query: torch.Tensor,
    keys: torch.Tensor,
    grad: torch.Tensor,
    tau: int,
    bits: int,
    lengths: Optional[torch.Tensor] = None,
    mask: Optional[torch.Tensor] = None,
) -> torch.Tensor:
    from ..cuda import sdim as device

    out = torch.empty(check_backward(query, keys, grad, tau, bits, lengths, mask), dtype=grad.dtype,
                      device=grad.device)
    with torch.cuda.device(query.device):
        device.group_sums_backward_into(query.detach(), keys.detach(), grad.detach(), tau, out,
                                        lengths=_bits(lengths), mask=_bits(mask), stream=_stream(out))
    return out


def _buckets_cuda(
    keys: torch.Tensor,
    values: torch.Tensor,
    tau: int,
    bits: int,
    lengths: Optional[torch.Tensor] = None,
    mask: Optional[torch.Tensor] = None,
) -> torch.Tensor:
    from ..cuda import sdim as device

    shape = check_buckets(keys, values, tau, bits, lengths, mask)
    out = torch.empty(shape, dtype=values.dtype, device=values.device)
    rows = out if len(shape) == 4 else out.unsqueeze(0)  # the launcher writes (B, G, 2**tau, d)
    with torch.cuda.device(keys.device):
        device.buckets_into(keys.detach(), values.detach(), tau, rows, lengths=_bits(lengths), mask=_bits(mask),
                            stream=_stream(out))
    return out


def _from_buckets_cuda(query: torch.Tensor, buckets: torch.Tensor) -> torch.Tensor:
    from ..cuda import sdim as device

    batch, d, tau = check_from_buckets(query, buckets)
    out = torch.empty((batch, d), dtype=buckets.dtype, device=buckets.device)
    with torch.cuda.device(query.device):
        device.from_buckets_into(query.detach(), buckets.detach(), tau, out, stream=_stream(out))
    return out


def _sums_ragged_cuda(
    query: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, tau: int, bits: int, offsets: torch.Tensor,
    mask: Optional[torch.Tensor] = None,
) -> torch.Tensor:
    from ..cuda import ragged as device

    batch, groups, _ = check_sums_ragged(query, keys, values, tau, bits, offsets, mask)
    starts, lens = ragged.as_offsets(offsets.detach().cpu().numpy(), batch, keys.shape[0], "keys")
    m = _ops.bool_mask(mask)
    with torch.cuda.device(query.device):  # launched on torch's current stream
        out = device.sdim_group_sums(_device(query), _device(keys), _device(values), tau, groups, starts, lens,
                                     None if m is None else _device(m))
    return cast(torch.Tensor, out)


def _buckets_ragged_cuda(
    keys: torch.Tensor, values: torch.Tensor, tau: int, bits: int, offsets: torch.Tensor,
    mask: Optional[torch.Tensor] = None,
) -> torch.Tensor:
    from ..cuda import ragged as device

    batch, groups, _, _ = check_buckets_ragged(keys, values, tau, bits, offsets, mask)
    starts, lens = ragged.as_offsets(offsets.detach().cpu().numpy(), batch, keys.shape[0], "keys")
    m = _ops.bool_mask(mask)
    with torch.cuda.device(keys.device):  # launched on torch's current stream
        out = device.sdim_buckets(_device(keys), _device(values), tau, groups, starts, lens,
                                  None if m is None else _device(m))
    return cast(torch.Tensor, out)


_CUDA_KERNELS = {
    "sdim_group_sums_ragged": _sums_ragged_cuda,
    "sdim_buckets_ragged": _buckets_ragged_cuda,
    "sdim_group_sums": _sums_cuda,
    "sdim_group_sums_backward": _backward_cuda,
    "sdim_buckets": _buckets_cuda,
    "sdim_from_buckets": _from_buckets_cuda,
}

if _FRESH:
    torch.library.register_autograd("etaretrieval::sdim_group_sums", _backward_sums, setup_context=_setup_sums)
    torch.library.register_autograd("etaretrieval::sdim_group_sums_ragged", _backward_sums_ragged,
                                    setup_context=_setup_sums_ragged)
for _name, _fn in _CUDA_KERNELS.items():  # registering again replaces them (as torch/_cuda.py does)
    torch.library.register_kernel(f"etaretrieval::{_name}", "cuda", _fn)
