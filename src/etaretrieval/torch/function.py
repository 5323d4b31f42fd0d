"""The retrieval step as a :class:`torch.autograd.Function`."""

from __future__ import annotations

from typing import Any, Optional, cast

import torch

from . import _ops

__all__ = ["HammingTopK"]


def _used(seq: torch.Tensor, mask: Optional[torch.Tensor]) -> Optional[torch.Tensor]:
    """The rows of ``seq`` that some valid position reads, for the non-finite check (``None``: all of them).

    Masks of a shape the top-K op rejects give ``None`` here: that op names them.
    """
    if mask is None:
        return None
    rows = tuple(seq.shape[:-1])
    m = _ops.bool_mask(mask)
    if seq.dim() == 3 and tuple(m.shape) in (rows, rows[1:]):
        return m.expand(rows)
    if seq.dim() == 2 and m.dim() in (1, 2) and m.shape[-1] == rows[0]:
        return m if m.dim() == 1 else m.any(dim=0)
    return None


class HammingTopK(torch.autograd.Function):
    """SimHash + Hamming top-K of a sequence for each target; not differentiable.

    ``HammingTopK.apply(target, seq, planes, k, mask)`` hashes ``target``
    ``(B, d)`` and ``seq`` ``(B, L, d)`` (or ``(L, d)`` shared by every row)
    with ``planes`` ``(d, bits)`` and returns ``(index, dist)``, both ``(B, k)``
    and marked non-differentiable, in the order of
    :func:`etaretrieval.topk_hamming` (``-1`` past the valid positions). ``mask``
    is ``None`` or the ``(B, L)`` / ``(L,)`` valid positions (bool, or numeric
    with non-zero = valid); NaN or inf embeddings at invalid positions are
    ignored.

    Ragged histories: ``HammingTopK.apply(target, seq, planes, k, mask,
    offsets)`` with ``seq`` the flat ``(T, d)`` embeddings of every row,
    ``offsets`` their ``(B + 1,)`` row offsets and ``mask`` ``None`` or flat
    ``(T,)``; or ``seq`` a ``torch.nested`` jagged tensor ``(B, j, d)`` (its
    values and offsets are used in place, ``offsets`` left out). Positions
    then count from each row's start, e.g. for
    ``values[offsets[:-1, None] + index.clamp(min=0)]``.

    Selecting items is a discrete step with no gradient; the gradient reaches
    the retrieved embeddings through the gather that follows, e.g.
    ``seq.gather(1, index.clamp(min=0)[..., None].expand(-1, -1, d))``.

    Examples
    --------
    >>> import torch
    >>> from etaretrieval.torch import HammingTopK
    >>> gen = torch.Generator().manual_seed(0)
    >>> planes = torch.randn(8, 64, generator=gen)
    >>> seq = torch.randn(2, 10, 8, generator=gen, requires_grad=True)
    >>> index, dist = HammingTopK.apply(seq[:, 3], seq, planes, 4, None)
    >>> index[:, 0].tolist(), dist[:, 0].tolist(), index.requires_grad
    ([3, 3], [0, 0], False)
    >>> flat, offsets = seq.detach().reshape(20, 8), torch.tensor([0, 10, 20])
    >>> torch.equal(HammingTopK.apply(seq[:, 3], flat, planes, 4, None, offsets)[0], index)
    True
    """

    @staticmethod
    def forward(
        target: torch.Tensor, seq: torch.Tensor, planes: torch.Tensor, k: int, mask: Optional[torch.Tensor],
        offsets: Optional[torch.Tensor] = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        seq, offsets = _ops.jagged("seq", seq, offsets)
        if mask is not None and mask.is_nested:
            mask = mask.values()
        if offsets is not None and seq.dim() != 2:
            raise ValueError(
                f"seq must have shape (T, d) with offsets (the flat embeddings of every row), got {tuple(seq.shape)}"
            )
        query = cast(torch.Tensor, _ops.pack_signatures(target, planes))
        keys = cast(torch.Tensor, _ops.pack_signatures(seq, planes, True, _used(seq, mask)))
        return _ops.topk_hamming(query, keys, k, None, mask, offsets=offsets)

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple[Any, ...], output: tuple[torch.Tensor, torch.Tensor]) -> None:
        ctx.mark_non_differentiable(*output)

    @staticmethod
    def backward(ctx: Any, *grads: Any) -> tuple[None, ...]:
        # Part of the Function protocol only: both outputs are non-differentiable.
        return None, None, None, None, None, None
