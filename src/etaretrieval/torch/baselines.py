"""Interest blocks to compare ETA with: recent window, category match, exact top-K, TWIN, mean pooling.

Every interest block of this package (these, :class:`~etaretrieval.torch.TargetAttention`
as full attention, :class:`~etaretrieval.torch.ETAAttention`) is called the same way::

    block(target, seq, mask, *, seq_time=None, target_time=None, seq_cat=None, target_cat=None) -> (B, d)

with ``target`` ``(B, d)``, ``seq`` ``(B, L, d)`` oldest to newest, ``mask``
``(B, L)`` (bool, or numeric with non-zero = valid; padding may be on either side),
``seq_time`` ``(B, L)`` and ``target_time`` ``(B,)`` integer timestamps, and
``seq_cat`` ``(B, L)`` / ``target_cat`` ``(B,)`` integer categories. A block
uses what it needs and ignores the rest, so a model can swap one for another.

Ragged histories: ``seq`` may be a ``torch.nested`` jagged tensor ``(B, j, d)``
(layout ``torch.jagged``); ``mask``, ``seq_time`` and ``seq_cat`` are then
jagged ``(B, j)`` tensors with the same offsets. The blocks work on the flat values and never build a ``(B, L_max)``
tensor; their results are those of the padded rows (float rounding aside),
the selected positions (counted from each row's start) the same.

The retrieval blocks select ``k`` positions by a score (larger first; equal
scores: the more recent position first), gather them, add the time embedding
of the selected behaviours if built with ``time``, and run
:class:`~etaretrieval.torch.TargetAttention` over them. Selection is not
differentiable; gradients reach the selected embeddings through the gather.
"""

from __future__ import annotations

import math
from typing import Optional

import torch
from torch import nn

from .._validate import _shape, check_k
from . import _ops
from ._checks import _ints
from ._jagged import flat_mask, is_jagged, parts
from ._jagged_blocks import History, history
from .attention import TargetAttention
from .sdim import SDIMAttention
from .time import TimeEncoding

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
    """The ``k`` eligible positions of largest score; equal scores: the larger position (more recent) first.

    A position is eligible where ``mask`` is true and its score is above
    ``-inf``.

    Parameters
    ----------
    score : torch.Tensor
        ``(B, L)`` scores (any real dtype, no NaN), or a ``torch.nested``
        jagged ``(B, j)`` tensor of them (ragged rows: sorted on the flat
        values, no ``(B, L_max)`` tensor built).
    mask : torch.Tensor or None
        ``(B, L)`` bool, true at eligible positions (``None``: all); with a
        jagged ``score``, a jagged ``(B, j)`` bool tensor with its offsets.
    k : int
        Positions to keep, ``>= 0``.

    Returns
    -------
    index : torch.Tensor
        ``(B, k)`` int64 positions (from each row's start), best first; ``-1``
        in empty slots (fewer than ``k`` eligible positions).
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
    >>> rows = torch.nested.nested_tensor_from_jagged(torch.tensor([1.0, 3.0, 3.0, 7.0]), torch.tensor([0, 3, 3, 4]))
    >>> select_top(rows, None, 2)[0].tolist()
    [[2, 1], [-1, -1], [0, -1]]
    """
    if is_jagged(score):
        values, offsets = parts("score", score)
        _, rows, positions = _ops.ragged_rows(offsets, values.shape[0])
        return _select(values, History(values, rows, positions, flat_mask(mask, offsets, values.shape[0], "score"),
                                       offsets), k)
    batch, length = score.shape
    take = min(k, length)
    eligible = score > float("-inf")
    if mask is not None:
        eligible = eligible & mask
    # a stable descending sort of the reversed rows puts equal scores newest first
    order = torch.sort(score.masked_fill(~eligible, float("-inf")).flip(1), dim=1, descending=True,
                       stable=True).indices[:, :take]
    index = (length - 1) - order
    valid = eligible.gather(1, index)
    index = torch.where(valid, index, -1)
    if take < k:
        index = torch.cat([index, index.new_full((batch, k - take), -1)], dim=1)
        valid = torch.cat([valid, valid.new_zeros((batch, k - take))], dim=1)
    return index, valid


def _select(score: torch.Tensor, seq: History, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`select_top` of per-behaviour scores in the layout of ``seq`` (``seq.mask``: eligible positions).

    Flat values: one stable sort by score (descending, the later flat index
    first among equals, i.e. the newer position of a row), one stable sort by
    row, then each value's rank in its row; the first ``k`` of each row land
    in its ``(B, k)`` slots. Ineligible values sort after every row.
    """
    if seq.offsets is None:
        return select_top(score, seq.mask, k)
    batch, total = seq.batch, score.shape[0]
    eligible = score > float("-inf")
    if seq.mask is not None:
        eligible = eligible & seq.mask
    key = torch.where(eligible, seq.rows, batch)
    order = (total - 1) - torch.sort(score.flip(0), descending=True, stable=True).indices
    order = order[torch.sort(key[order], stable=True).indices]
    row = key[order]
    rank = torch.arange(total, device=score.device) - torch.searchsorted(row, row)  # position among its row's
    slot = torch.where((row < batch) & (rank < k), row * k + rank, batch * k)  # slot batch * k: dropped
    index = seq.positions.new_full((batch * k + 1,), -1).scatter(0, slot, seq.positions[order])[:-1]
    index = index.view(batch, k)
    return index, index >= 0


class RetrievalAttention(nn.Module):
    """Base of the blocks that select ``k`` behaviours by a score, then run target attention over them.

    Subclasses define :meth:`score`; selection follows :func:`select_top`.
    Padded and jagged histories go through the same :meth:`score`, which
    gets the behaviours as a ``History`` (``etaretrieval.torch._jagged_blocks``):
    ``seq.items`` the embeddings, ``(B, L, d)`` padded or the flat ``(T, d)``
    values of a jagged ``seq``; ``seq.rows`` and ``seq.positions`` each
    behaviour's row and position in it (``(B, L)`` or ``(T,)`` int64); and
    ``seq.per_row(x)`` a per-row ``(B, ...)`` tensor at each behaviour.

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
    ...     def score(self, target, seq, seq_cat, target_cat):
    ...         return -seq.positions.to(torch.float64)
    >>> block = Oldest(16, k=4, heads=2)
    >>> block(torch.randn(3, 16), torch.randn(3, 10, 16)).shape
    torch.Size([3, 16])
    >>> jagged = torch.nested.nested_tensor_from_jagged(torch.randn(12, 16), torch.tensor([0, 2, 2, 12]))
    >>> block.select(torch.randn(3, 16), jagged)[0].tolist()
    [[0, 1, -1, -1], [-1, -1, -1, -1], [0, 1, 2, 3]]
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
        self, target: torch.Tensor, seq: History, seq_cat: Optional[torch.Tensor], target_cat: Optional[torch.Tensor]
    ) -> torch.Tensor:
        """Selection scores per behaviour, ``(B, L)`` or ``(T,)`` (larger is kept first); ``-inf`` excludes one.

        ``target`` ``(B, d)`` and ``seq.items`` are detached; ``seq_cat`` is
        checked and in the layout of ``seq`` (``None`` if not given),
        ``target_cat`` as passed.
        """
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
        return self._choose(target, history(self.dim, target, seq, mask), seq_cat, target_cat)

    def _choose(
        self, target: torch.Tensor, seq: History, seq_cat: Optional[torch.Tensor], target_cat: Optional[torch.Tensor]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """:meth:`select` on a checked history."""
        with torch.no_grad():
            cats = None if seq_cat is None else seq.align("seq_cat", seq_cat)
            score = self.score(target.detach(), seq._replace(items=seq.items.detach()), cats, target_cat)
            return _select(score, seq, self.k)

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
        checked = history(self.dim, target, seq, mask)
        index, valid = self._choose(target, checked, seq_cat, target_cat)
        keep = valid.unsqueeze(-1).to(checked.items.dtype)
        values = checked.gather(checked.items, index) * keep
        if self.time is not None:
            interval = checked.gather(checked.intervals(self.time, seq_time, target_time), index)
            values = values + self.time.embed(interval).to(values.dtype) * keep
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
        self, target: torch.Tensor, seq: History, seq_cat: Optional[torch.Tensor], target_cat: Optional[torch.Tensor]
    ) -> torch.Tensor:
        """Positions: the newest scores highest."""
        return seq.positions.to(torch.float64)


class CategoryMatchAttention(RetrievalAttention):
    """SIM (hard search): the ``k`` most recent behaviours of the target's category.

    Needs ``seq_cat`` ``(B, L)`` (jagged ``(B, j)`` with a jagged ``seq``) and ``target_cat`` ``(B,)``.

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
        self, target: torch.Tensor, seq: History, seq_cat: Optional[torch.Tensor], target_cat: Optional[torch.Tensor]
    ) -> torch.Tensor:
        """Positions where the category matches the target's, ``-inf`` elsewhere."""
        if seq_cat is None:
            shape = _shape(tuple(seq.rows.shape)) if seq.offsets is None else "(B, j), jagged like seq"
            raise ValueError(f"seq_cat is required here (shape {shape})")
        target_cat = _ints("target_cat", target_cat, (seq.batch,), target.device)
        return seq.positions.to(torch.float64).masked_fill(seq_cat != seq.per_row(target_cat), float("-inf"))


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
        self, target: torch.Tensor, seq: History, seq_cat: Optional[torch.Tensor], target_cat: Optional[torch.Tensor]
    ) -> torch.Tensor:
        """Inner products ``<target, seq[:, l]>``."""
        return (seq.items * seq.per_row(target)).sum(-1)


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
        self, target: torch.Tensor, seq: History, seq_cat: Optional[torch.Tensor], target_cat: Optional[torch.Tensor]
    ) -> torch.Tensor:
        """Attention logits summed over heads (``seq`` with the time embeddings already added).

        The sum over heads of ``q_h . k_h`` is ``q . k``: one product over ``d``.
        """
        attention = self.attention
        scale = math.sqrt(attention.query.in_features // attention.heads)
        return (attention.key(seq.items) * seq.per_row(attention.query(target))).sum(-1) / scale

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
        index, valid = self._choose(target, items, None, None)
        values = items.gather(items.items, index) * valid.unsqueeze(-1).to(items.items.dtype)
        return self.attention.attend(target, values, valid)

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
        return self._choose(target, self._with_time(target, seq, mask, seq_time, target_time), None, None)

    def _with_time(
        self,
        target: torch.Tensor,
        seq: torch.Tensor,
        mask: Optional[torch.Tensor],
        seq_time: Optional[torch.Tensor],
        target_time: Optional[torch.Tensor],
    ) -> History:
        """The checked history, every behaviour with its time embedding added (as it is without ``time``)."""
        checked = history(self.dim, target, seq, mask)
        if self.time is None:
            return checked
        embedded = checked.embed_time(self.time, seq_time, target_time).to(checked.items.dtype)
        return checked._replace(items=checked.items + embedded)


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
    >>> jagged = torch.nested.nested_tensor_from_jagged(torch.tensor([[1.0, 2.0], [3.0, 4.0]]), torch.tensor([0, 0, 2]))
    >>> MeanPooling(2)(torch.zeros(2, 2), jagged).tolist()
    [[0.0, 0.0], [2.0, 3.0]]
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
        checked = history(self.dim, target, seq, mask)
        items = checked.items
        if self.time is not None:
            items = items + checked.embed_time(self.time, seq_time, target_time).to(items.dtype)
        if checked.mask is None:
            weight = torch.ones_like(checked.rows, dtype=items.dtype)
        else:
            weight = checked.mask.to(items.dtype)
        return checked.sum_rows(items * weight.unsqueeze(-1)) / checked.sum_rows(weight).clamp(min=1).unsqueeze(-1)


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
        checked = history(self.sdim.dim, target, seq, mask)
        values = checked.items
        if self.time is not None:
            values = values + checked.embed_time(self.time, seq_time, target_time).to(values.dtype)
        # hash detached embeddings: the codes get no gradient, the values do
        valid = None if checked.mask is None else checked.nested(checked.mask)
        return self.sdim(target.detach(), checked.nested(checked.items.detach()), valid, values=checked.nested(values))
