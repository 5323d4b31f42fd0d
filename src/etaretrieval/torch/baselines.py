"""Interest blocks to compare ETA with: recent window, category match, exact top-K, TWIN, mean pooling.

Every interest block of this package (these, :class:`~etaretrieval.torch.TargetAttention`
as full attention, :class:`~etaretrieval.torch.ETAAttention`) is called the same way::

    block(target, seq, mask, *, seq_time=None, target_time=None, seq_cat=None, target_cat=None) -> (B, d)

with ``target`` ``(B, d)``, ``seq`` ``(B, L, d)`` oldest to newest, ``mask``
``(B, L)`` (bool, or numeric with non-zero = valid; padding may be on either side),
``seq_time`` ``(B, L)`` and ``target_time`` ``(B,)`` integer timestamps, and
``seq_cat`` ``(B, L)`` / ``target_cat`` ``(B,)`` integer categories. A block
uses what it needs and ignores the rest, so a model can swap one for another.

The retrieval blocks select ``k`` positions by a score (larger first; equal
scores: the more recent position first), gather them, add the time embedding
of the selected behaviours if built with ``time``, and run
:class:`~etaretrieval.torch.TargetAttention` over them. Selection is not
differentiable; gradients reach the selected embeddings through the gather.
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import nn

from .._validate import _shape, check_k
from . import _ops
from ._checks import _bool_mask, _floats, _ints
from .attention import TargetAttention
from .sdim import SDIMAttention
from .time import TimeEncoding, gather_positions

__all__ = [
    "RetrievalAttention",
    "RecentWindowAttention",
    "CategoryMatchAttention",
    "InnerProductTopKAttention",
    "TWINAttention",
    "MeanPooling",
    "SDIMBlock",
    "select_top",
]


def select_top(score: torch.Tensor, mask: Optional[torch.Tensor], k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The ``k`` valid positions of largest score; equal scores: the larger position (more recent) first.

    Parameters
    ----------
    score : torch.Tensor
        ``(B, L)`` scores (any real dtype, no NaN).
    mask : torch.Tensor or None
        ``(B, L)`` bool, true at eligible positions (``None``: all).
    k : int
        Positions to keep, ``>= 0``.

    Returns
    -------
    index : torch.Tensor
        ``(B, k)`` int64 positions, best first; ``-1`` in empty slots (fewer
        than ``k`` eligible positions).
    valid : torch.Tensor
        ``(B, k)`` bool, true where a slot holds a position.

    Examples
    --------
    >>> import torch
    >>> from etaretrieval.torch import select_top
    >>> score = torch.tensor([[1.0, 3.0, 3.0, 2.0, 5.0]])
    >>> mask = torch.tensor([[True, True, True, True, False]])
    >>> index, valid = select_top(score, mask, 3)
    >>> index.tolist(), valid.tolist()
    ([[2, 1, 3]], [[True, True, True]])
    >>> select_top(score, mask, 6)[0].tolist()
    [[2, 1, 3, 0, -1, -1]]
    """
    batch, length = score.shape
    take = min(k, length)
    if mask is not None:
        score = score.masked_fill(~mask, float("-inf"))
    # a stable descending sort of the reversed rows puts equal scores newest first
    order = torch.sort(score.flip(1), dim=1, descending=True, stable=True).indices[:, :take]
    index = (length - 1) - order
    valid = index.new_ones(index.shape, dtype=torch.bool) if mask is None else mask.gather(1, index)
    index = torch.where(valid, index, -1)
    if take < k:
        index = torch.cat([index, index.new_full((batch, k - take), -1)], dim=1)
        valid = torch.cat([valid, valid.new_zeros((batch, k - take))], dim=1)
    return index, valid


def _check_seq(
    dim: int, target: torch.Tensor, seq: torch.Tensor, mask: Optional[torch.Tensor]
) -> Optional[torch.Tensor]:
    """Check the common arguments; return the mask as bool (numeric masks: non-zero = valid)."""
    _floats("target", target, 2, f"(B, {dim})")
    _floats("seq", seq, 3, f"(B, L, {dim})", target.device)
    if target.shape[1] != dim or seq.shape[0] != target.shape[0] or seq.shape[2] != dim:
        raise ValueError(
            f"target and seq must have shapes (B, {dim}) and (B, L, {dim}), "
            f"got {_shape(tuple(target.shape))} and {_shape(tuple(seq.shape))}"
        )
    return None if mask is None else _bool_mask(mask, tuple(seq.shape[:2]), target.device)


class RetrievalAttention(nn.Module):
    """Base of the blocks that select ``k`` behaviours by a score, then run target attention over them.

    Subclasses define :meth:`score`; selection follows :func:`select_top`.

    Parameters
    ----------
    dim : int
        Embedding dimension ``d``, divisible by ``heads``.
    k : int
        Behaviours selected per target, ``>= 0``.
    heads : int
        Attention heads.
    time : TimeEncoding, optional
        Adds the interval embedding of each selected behaviour to it.

    Examples
    --------
    >>> import torch
    >>> from etaretrieval.torch import RetrievalAttention
    >>> class Oldest(RetrievalAttention):  # the k oldest behaviours
    ...     def score(self, target, seq, mask, seq_cat, target_cat):
    ...         return -torch.arange(seq.shape[1], dtype=torch.float32).expand(seq.shape[0], -1)
    >>> Oldest(16, k=4, heads=2)(torch.randn(3, 16), torch.randn(3, 10, 16)).shape
    torch.Size([3, 16])
    """

    def __init__(self, dim: int, k: int, heads: int, *, time: Optional[TimeEncoding] = None) -> None:
        super().__init__()
        if time is not None and not isinstance(time, TimeEncoding):
            raise TypeError(f"time must be a TimeEncoding or None, got {type(time).__name__}")
        self.k = check_k(k)
        self.attention = TargetAttention(dim, heads)
        self.time = time

    @property
    def dim(self) -> int:
        """Embedding dimension."""
        return self.attention.query.in_features

    def extra_repr(self) -> str:
        return f"k={self.k}"

    def score(
        self,
        target: torch.Tensor,
        seq: torch.Tensor,
        mask: Optional[torch.Tensor],
        seq_cat: Optional[torch.Tensor],
        target_cat: Optional[torch.Tensor],
    ) -> torch.Tensor:
        """``(B, L)`` selection scores (larger is kept first); ``-inf`` excludes a position."""
        raise NotImplementedError

    def select(
        self,
        target: torch.Tensor,
        seq: torch.Tensor,
        mask: Optional[torch.Tensor] = None,
        *,
        seq_cat: Optional[torch.Tensor] = None,
        target_cat: Optional[torch.Tensor] = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``(index, valid)``, both ``(B, k)``: the selected positions (``-1`` in empty slots), best first."""
        mask = _check_seq(self.dim, target, seq, mask)
        with torch.no_grad():
            score = self.score(target.detach(), seq.detach(), mask, seq_cat, target_cat)
            eligible = score > float("-inf")
            return select_top(score, eligible if mask is None else eligible & mask, self.k)

    def forward(
        self,
        target: torch.Tensor,
        seq: torch.Tensor,
        mask: Optional[torch.Tensor] = None,
        *,
        seq_time: Optional[torch.Tensor] = None,
        target_time: Optional[torch.Tensor] = None,
        seq_cat: Optional[torch.Tensor] = None,
        target_cat: Optional[torch.Tensor] = None,
    ) -> torch.Tensor:
        """User-interest vector ``(B, d)`` (the arguments of every interest block, see the module docs)."""
        index, valid = self.select(target, seq, mask, seq_cat=seq_cat, target_cat=target_cat)
        mask = None if mask is None else _ops.bool_mask(mask)
        keep = valid.unsqueeze(-1).to(seq.dtype)
        values = gather_positions(seq, index) * keep
        if self.time is not None:
            interval = self.time.intervals(mask, seq_time, target_time, shape=(seq.shape[0], seq.shape[1]))
            values = values + self.time.embed(gather_positions(interval, index)).to(seq.dtype) * keep
        return self.attention.attend(target, values, valid)


class RecentWindowAttention(RetrievalAttention):
    """DIN on the recent window: target attention over the last ``k`` valid behaviours.

    Examples
    --------
    >>> import torch
    >>> from etaretrieval.torch import RecentWindowAttention
    >>> block = RecentWindowAttention(16, k=2, heads=2)
    >>> mask = torch.tensor([[False, True, True, True], [True, True, False, False]])
    >>> block.select(torch.randn(2, 16), torch.randn(2, 4, 16), mask)[0].tolist()
    [[3, 2], [1, 0]]
    """

    def score(
        self,
        target: torch.Tensor,
        seq: torch.Tensor,
        mask: Optional[torch.Tensor],
        seq_cat: Optional[torch.Tensor],
        target_cat: Optional[torch.Tensor],
    ) -> torch.Tensor:
        """Positions: the newest scores highest."""
        return torch.arange(seq.shape[1], device=seq.device, dtype=torch.float64).expand(seq.shape[0], -1)


class CategoryMatchAttention(RetrievalAttention):
    """SIM (hard search): the ``k`` most recent behaviours of the target's category.

    Needs ``seq_cat`` ``(B, L)`` and ``target_cat`` ``(B,)``.

    Examples
    --------
    >>> import torch
    >>> from etaretrieval.torch import CategoryMatchAttention
    >>> block = CategoryMatchAttention(16, k=2, heads=2)
    >>> cats = torch.tensor([[7, 3, 7, 7, 5]])
    >>> block.select(torch.randn(1, 16), torch.randn(1, 5, 16), seq_cat=cats, target_cat=torch.tensor([7]))[0].tolist()
    [[3, 2]]
    """

    def score(
        self,
        target: torch.Tensor,
        seq: torch.Tensor,
        mask: Optional[torch.Tensor],
        seq_cat: Optional[torch.Tensor],
        target_cat: Optional[torch.Tensor],
    ) -> torch.Tensor:
        """Positions where the category matches the target's, ``-inf`` elsewhere."""
        batch, length = seq.shape[:2]
        seq_cat = _ints("seq_cat", seq_cat, (batch, length), seq.device)
        target_cat = _ints("target_cat", target_cat, (batch,), seq.device)
        position = torch.arange(length, device=seq.device, dtype=torch.float64).expand(batch, -1)
        return position.masked_fill(seq_cat != target_cat.unsqueeze(1), float("-inf"))


class InnerProductTopKAttention(RetrievalAttention):
    """SIM soft search, exact: the ``k`` behaviours of largest inner product with the target.

    The upper bound of what an approximate retrieval (ETA's SimHash) can
    find; costs ``O(L * d)`` per target plus a sort.

    Examples
    --------
    >>> import torch
    >>> from etaretrieval.torch import InnerProductTopKAttention
    >>> block = InnerProductTopKAttention(2, k=2, heads=1)
    >>> seq = torch.tensor([[[1.0, 0.0], [3.0, 0.0], [2.0, 0.0], [3.0, 0.0]]])
    >>> block.select(torch.tensor([[1.0, 0.0]]), seq)[0].tolist()  # equal products: newer first
    [[3, 1]]
    """

    def score(
        self,
        target: torch.Tensor,
        seq: torch.Tensor,
        mask: Optional[torch.Tensor],
        seq_cat: Optional[torch.Tensor],
        target_cat: Optional[torch.Tensor],
    ) -> torch.Tensor:
        """Inner products ``<target, seq[:, l]>``."""
        return torch.einsum("bd,bld->bl", target, seq)


class TWINAttention(RetrievalAttention):
    """TWIN-style retrieval: the ``k`` behaviours its own attention scores highest, then attention over them.

    The selection score of a behaviour is the block's exact target-attention
    logit over the whole history, summed over heads: ``sum_h q_h . k_h /
    sqrt(d / heads)`` with the query from the target and the key from the
    behaviour (plus its time embedding when built with ``time``), the same
    projections that then attend over the ``k`` selected behaviours (TWIN,
    arXiv 2302.02352: one attention for retrieval and scoring). It is the
    retrieval-quality upper bound of ETA's SimHash retrieval: what the
    attention would pick itself, at ``O(L * d)`` per target (the keys of the
    whole history, as in full attention) plus a sort. Selection is not
    differentiable; gradients reach the selected behaviours and the attention
    through the attention over them.

    Examples
    --------
    >>> import torch
    >>> from etaretrieval.torch import TWINAttention
    >>> block = TWINAttention(2, k=2, heads=1)  # identity projections at the start: logits are inner products
    >>> seq = torch.tensor([[[1.0, 0.0], [3.0, 0.0], [2.0, 0.0], [3.0, 0.0]]])
    >>> block.select(torch.tensor([[1.0, 0.0]]), seq)[0].tolist()  # equal logits: newer first
    [[3, 1]]
    >>> block(torch.tensor([[1.0, 0.0]]), seq).shape
    torch.Size([1, 2])
    """

    def score(
        self,
        target: torch.Tensor,
        seq: torch.Tensor,
        mask: Optional[torch.Tensor],
        seq_cat: Optional[torch.Tensor],
        target_cat: Optional[torch.Tensor],
    ) -> torch.Tensor:
        """Attention logits summed over heads ``(B, L)`` (``seq`` with the time embeddings already added)."""
        return self.attention.logits(target, seq).sum(dim=1)

    def forward(
        self,
        target: torch.Tensor,
        seq: torch.Tensor,
        mask: Optional[torch.Tensor] = None,
        *,
        seq_time: Optional[torch.Tensor] = None,
        target_time: Optional[torch.Tensor] = None,
        seq_cat: Optional[torch.Tensor] = None,
        target_cat: Optional[torch.Tensor] = None,
    ) -> torch.Tensor:
        """User-interest vector ``(B, d)`` (the arguments of every interest block, see the module docs)."""
        items = self._with_time(target, seq, mask, seq_time, target_time)
        index, valid = self.select(target, items, mask)
        return self.attention.attend(target, gather_positions(items, index) * valid.unsqueeze(-1).to(items.dtype),
                                     valid)

    def retrieve(
        self,
        target: torch.Tensor,
        seq: torch.Tensor,
        mask: Optional[torch.Tensor] = None,
        *,
        seq_time: Optional[torch.Tensor] = None,
        target_time: Optional[torch.Tensor] = None,
        seq_cat: Optional[torch.Tensor] = None,
        target_cat: Optional[torch.Tensor] = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``(index, valid)``, both ``(B, k)``: the positions :meth:`forward` attends over, best first.

        Unlike :meth:`~etaretrieval.torch.RetrievalAttention.select` (scores of
        the given ``seq`` as it is), the scores include the time embeddings, as
        in :meth:`forward`.
        """
        return self.select(target, self._with_time(target, seq, mask, seq_time, target_time), mask)

    def _with_time(
        self,
        target: torch.Tensor,
        seq: torch.Tensor,
        mask: Optional[torch.Tensor],
        seq_time: Optional[torch.Tensor],
        target_time: Optional[torch.Tensor],
    ) -> torch.Tensor:
        """``seq`` plus every behaviour's time embedding (``seq`` itself without ``time``), arguments checked."""
        checked = _check_seq(self.dim, target, seq, mask)
        if self.time is None:
            return seq
        return seq + self.time(checked, seq_time, target_time, shape=(seq.shape[0], seq.shape[1])).to(seq.dtype)


class MeanPooling(nn.Module):
    """The mean of the valid behaviour embeddings (plus their time embeddings if ``time`` is given).

    Rows without a valid behaviour give zeros. Ignores the target and the categories.

    Parameters
    ----------
    dim : int
        Embedding dimension ``d``.
    time : TimeEncoding, optional
        Adds each behaviour's interval embedding before averaging.

    Examples
    --------
    >>> import torch
    >>> from etaretrieval.torch import MeanPooling
    >>> seq = torch.tensor([[[1.0, 2.0], [3.0, 4.0], [9.0, 9.0]]])
    >>> MeanPooling(2)(torch.zeros(1, 2), seq, torch.tensor([[True, True, False]])).tolist()
    [[2.0, 3.0]]
    """

    def __init__(self, dim: int, *, time: Optional[TimeEncoding] = None) -> None:
        super().__init__()
        if time is not None and not isinstance(time, TimeEncoding):
            raise TypeError(f"time must be a TimeEncoding or None, got {type(time).__name__}")
        self.dim = dim
        self.time = time

    def extra_repr(self) -> str:
        return f"dim={self.dim}"

    def forward(
        self,
        target: torch.Tensor,
        seq: torch.Tensor,
        mask: Optional[torch.Tensor] = None,
        *,
        seq_time: Optional[torch.Tensor] = None,
        target_time: Optional[torch.Tensor] = None,
        seq_cat: Optional[torch.Tensor] = None,
        target_cat: Optional[torch.Tensor] = None,
    ) -> torch.Tensor:
        """Masked mean ``(B, d)`` (the arguments of every interest block, see the module docs)."""
        mask = _check_seq(self.dim, target, seq, mask)
        if self.time is not None:
            seq = seq + self.time(mask, seq_time, target_time, shape=(seq.shape[0], seq.shape[1])).to(seq.dtype)
        if mask is None:
            return seq.mean(dim=1) if seq.shape[1] else seq.new_zeros(seq.shape[0], seq.shape[2])
        weight = mask.to(seq.dtype)
        return torch.einsum("bl,bld->bd", weight, seq) / weight.sum(dim=1, keepdim=True).clamp(min=1)


class SDIMBlock(nn.Module):
    """SDIM as an interest block: :class:`~etaretrieval.torch.SDIMAttention` with optional time information.

    Hashes the behaviour embeddings (as SDIM does) and sums, per matching
    group, their values: the embeddings themselves, plus the interval
    embedding of each behaviour when built with ``time``.

    Parameters
    ----------
    dim : int
        Embedding dimension ``d``.
    bits : int
        Signature length ``m``.
    tau : int
        Bits per group (dividing ``bits``).
    seed : int, default 0
        Seed of the hyperplanes.
    time : TimeEncoding, optional
        Adds each behaviour's interval embedding to the summed values.

    Attributes
    ----------
    sdim : SDIMAttention

    Examples
    --------
    >>> import torch
    >>> from etaretrieval.torch import SDIMBlock, TimeEncoding
    >>> block = SDIMBlock(16, bits=64, tau=4, time=TimeEncoding(16))
    >>> times = torch.arange(100).expand(3, -1)
    >>> block(torch.randn(3, 16), torch.randn(3, 100, 16), seq_time=times, target_time=torch.full((3,), 100)).shape
    torch.Size([3, 16])
    """

    def __init__(self, dim: int, bits: int, tau: int, seed: int = 0, *, time: Optional[TimeEncoding] = None) -> None:
        super().__init__()
        if time is not None and not isinstance(time, TimeEncoding):
            raise TypeError(f"time must be a TimeEncoding or None, got {type(time).__name__}")
        self.sdim = SDIMAttention(dim, bits, tau, seed)
        self.time = time

    def forward(
        self,
        target: torch.Tensor,
        seq: torch.Tensor,
        mask: Optional[torch.Tensor] = None,
        *,
        seq_time: Optional[torch.Tensor] = None,
        target_time: Optional[torch.Tensor] = None,
        seq_cat: Optional[torch.Tensor] = None,
        target_cat: Optional[torch.Tensor] = None,
    ) -> torch.Tensor:
        """User-interest vector ``(B, d)`` (the arguments of every interest block, see the module docs)."""
        mask = _check_seq(self.sdim.dim, target, seq, mask)
        values = seq
        if self.time is not None:
            values = seq + self.time(mask, seq_time, target_time, shape=(seq.shape[0], seq.shape[1])).to(seq.dtype)
        # hash detached embeddings: the codes get no gradient, the values do
        return self.sdim(target.detach(), seq.detach(), mask, values=values)
