"""The retrieval step as a :class:`torch.autograd.Function`."""

from __future__ import annotations

from typing import Any, Optional

import torch

from . import _ops

__all__ = ["HammingTopK"]


class HammingTopK(torch.autograd.Function):
    """SimHash + Hamming top-K of a sequence for each target; not differentiable.

    ``HammingTopK.apply(target, seq, planes, k, mask)`` hashes ``target``
    ``(B, d)`` and ``seq`` ``(B, L, d)`` (or ``(L, d)`` shared by every row)
    with ``planes`` ``(d, bits)`` and returns ``(index, dist)``, both ``(B, k)``
    and marked non-differentiable, in the order of
    :func:`etaretrieval.topk_hamming` (``-1`` past the valid positions). ``mask``
    is ``None`` or the ``(B, L)`` / ``(L,)`` bool valid positions.

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
    """

    @staticmethod
    def forward(  # type: ignore[override]
        target: torch.Tensor, seq: torch.Tensor, planes: torch.Tensor, k: int, mask: Optional[torch.Tensor]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        query = _ops.pack_signatures(target, planes)
        keys = _ops.pack_signatures(seq, planes)
        return _ops.topk_hamming(query, keys, k, None, mask)

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple[Any, ...], output: tuple[torch.Tensor, torch.Tensor]) -> None:
        ctx.mark_non_differentiable(*output)

    @staticmethod
    def backward(ctx: Any, *grads: Any) -> tuple[None, ...]:
        # Part of the Function protocol only: both outputs are non-differentiable.
        return None, None, None, None, None
