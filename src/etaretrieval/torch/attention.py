"""Target attention, plain and over the positions that ETA retrieves."""

from __future__ import annotations

import math
from typing import Any, Optional, cast

import torch
from torch import nn

from .._validate import _as_int, _shape, check_k, check_padding_side
from . import _jagged, _ops
from ._checks import _bool_mask, _floats, _ints
from ._planes import fold
from .cache import SignatureCache
from .retriever import ETARetriever, Retrieved
from .time import TimeEncoding, gather_positions

__all__ = ["TargetAttention", "ETAAttention"]


class TargetAttention(nn.Module):
    """Multi-head attention of one target over a set of items -> one interest vector.

    ``softmax(q k^T / sqrt(d / heads))`` per head with the query from the
    target and keys/values from the items, masked positions excluded; a row
    with no valid item gets zero attention weights (output = the output
    projection's bias), never NaN. Over a whole behaviour sequence this is the
    *full attention* interest block; it takes the arguments of every interest
    block (see ``etaretrieval.torch.baselines``) and ignores categories.

    Parameters
    ----------
    dim : int
        Embedding dimension ``d``, divisible by ``heads``.
    heads : int
        Number of attention heads.
    time : TimeEncoding, optional
        If given, the embedding of each item's interval bucket (from
        ``seq_time`` and ``target_time``, or from positions when they are not
        passed) is added to the items before the key and value projections.

    Examples
    --------
    >>> import torch
    >>> from etaretrieval.torch import TargetAttention, TimeEncoding
    >>> attn = TargetAttention(16, heads=4)
    >>> mask = torch.tensor([[True, True, False], [False, False, False]])
    >>> out = attn(torch.randn(2, 16), torch.randn(2, 3, 16), mask)
    >>> out.shape, bool(out.isfinite().all())
    (torch.Size([2, 16]), True)
    >>> timed = TargetAttention(16, heads=4, time=TimeEncoding(16))
    >>> times = torch.tensor([[5, 9, 0], [0, 0, 0]])
    >>> timed(torch.randn(2, 16), torch.randn(2, 3, 16), mask, seq_time=times, target_time=torch.tensor([10, 10])).shape
    torch.Size([2, 16])
    """

    def __init__(self, dim: int, heads: int, *, time: Optional[TimeEncoding] = None) -> None:
        super().__init__()
        if heads < 1 or dim % heads:
            raise ValueError(f"heads must be >= 1 and divide dim = {dim}, got heads = {heads}")
        if time is not None and not isinstance(time, TimeEncoding):
            raise TypeError(f"time must be a TimeEncoding or None, got {type(time).__name__}")
        self.heads = heads
        self.query = nn.Linear(dim, dim)
        self.key = nn.Linear(dim, dim)
        self.value = nn.Linear(dim, dim)
        self.out = nn.Linear(dim, dim)
        with torch.no_grad():  # start as plain attention over the embeddings themselves (identity projections)
            for proj in (self.query, self.key, self.value, self.out):
                proj.weight.copy_(torch.eye(dim))
                proj.bias.zero_()
        self.time = time

    def forward(
        self,
        target: torch.Tensor,
        items: torch.Tensor,
        mask: Optional[torch.Tensor] = None,
        *,
        seq_time: Optional[torch.Tensor] = None,
        target_time: Optional[torch.Tensor] = None,
        seq_cat: Optional[torch.Tensor] = None,
        target_cat: Optional[torch.Tensor] = None,
    ) -> torch.Tensor:
        """Attend from ``target`` ``(B, d)`` over ``items`` ``(B, T, d)``.

        Parameters
        ----------
        target : torch.Tensor
            ``(B, d)`` queries.
        items : torch.Tensor
            ``(B, T, d)`` keys and values (a behaviour sequence: oldest to
            newest), or a ``torch.nested`` jagged tensor ``(B, j, d)`` of
            ragged rows: then the scores are computed on its flat values, the
            softmax runs within each row and the weighted sum per row, with
            no ``(B, L_max)`` block (an empty row gives zero weights, as a
            fully masked padded row does).
        mask : torch.Tensor, optional
            ``(B, T)`` valid items: bool, or numeric with non-zero = valid.
            With jagged ``items``: ``None`` (every item is valid) or a jagged
            ``(B, j)`` mask with the items' offsets; a dense mask is refused.
        seq_time, target_time : torch.Tensor, optional
            ``(B, T)`` and ``(B,)`` integer timestamps of the items and of the
            request; used by ``time`` only. With jagged ``items``,
            ``seq_time`` is a jagged ``(B, j)`` integer tensor with their offsets.
        seq_cat, target_cat : torch.Tensor, optional
            Ignored (the common interest-block arguments).

        Returns
        -------
        torch.Tensor
            ``(B, d)``.
        """
        d = self.query.in_features
        _floats("target", target, 2, f"(B, {d})")
        if _jagged.is_jagged(items):
            return self._forward_jagged(target, items, mask, seq_time, target_time)
        _floats("items", items, 3, f"(B, T, {d})", target.device)
        batch, length, _ = items.shape
        if target.shape[1] != d or items.shape[0] != target.shape[0] or items.shape[2] != d:
            raise ValueError(
                f"target and items must have shapes (B, {d}) and (B, T, {d}), "
                f"got {_shape(tuple(target.shape))} and {_shape(tuple(items.shape))}"
            )
        if mask is not None:
            mask = _bool_mask(mask, (batch, length), target.device)
        if self.time is not None:
            items = items + self.time(mask, seq_time, target_time, shape=(batch, length)).to(items.dtype)
        return self.attend(target, items, mask)

    def _forward_jagged(
        self,
        target: torch.Tensor,
        items: torch.Tensor,
        mask: Optional[torch.Tensor],
        seq_time: Optional[torch.Tensor],
        target_time: Optional[torch.Tensor],
    ) -> torch.Tensor:
        """:meth:`forward` over a jagged ``items`` ``(B, j, d)``: on its flat values, no padded block."""
        d, batch = self.query.in_features, target.shape[0]
        if target.shape[1] != d:
            raise ValueError(f"target must have shape (B, {d}), got shape {_shape(tuple(target.shape))}")
        values, offsets = _jagged.floats("items", items, batch, d, target.device)
        total = values.shape[0]
        valid = _jagged.flat_mask(mask, offsets, total, "items")
        rows = _jagged.row_index(offsets, total)
        if self.time is not None:
            flat_time = None if seq_time is None else _jagged.ints("seq_time", seq_time, offsets, total, "items")
            interval = self.time.flat_intervals(offsets, rows, valid, flat_time, target_time)
            values = values + self.time.embed(interval).to(values.dtype)
        return self.attend_flat(target, values, rows, valid)

    def attend_flat(
        self, target: torch.Tensor, values: torch.Tensor, rows: torch.Tensor, valid: Optional[torch.Tensor]
    ) -> torch.Tensor:
        """The attention over ragged rows on checked arguments: flat ``values`` ``(T, d)`` of rows ``rows`` ``(T,)``.

        Scores on the flat values, a softmax within each row, a weighted sum
        per row: :meth:`attend` of the padded rows, without a ``(B, L_max)``
        block. ``rows`` is ``B`` for values of no row (left out); ``valid``
        ``(T,)`` bool or ``None``.
        """
        batch, d = target.shape
        h = self.heads
        q = self.query(target).view(batch, h, d // h)
        q = torch.cat([q, q.new_zeros(1, h, d // h)]).index_select(0, rows)  # each value's (of no row: zeros)
        k = self.key(values).view(-1, h, d // h)
        v = self.value(values).view(-1, h, d // h)
        weights = _jagged.segment_softmax((q * k).sum(-1) / math.sqrt(d // h), rows, batch, valid)
        pooled = _jagged.segment_sum(weights.unsqueeze(-1) * v, rows, batch)
        return self.out(pooled.reshape(batch, d))

    def logits(self, target: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        """``(B, heads, T)`` attention logits ``q k^T / sqrt(d / heads)`` on checked arguments (no mask, no time)."""
        batch, length, d = items.shape
        h = self.heads
        q = self.query(target).view(batch, h, d // h)
        k = self.key(items).view(batch, length, h, d // h)
        return torch.einsum("bhe,bthe->bht", q, k) / math.sqrt(d // h)

    def attend(self, target: torch.Tensor, items: torch.Tensor, mask: Optional[torch.Tensor]) -> torch.Tensor:
        """The attention itself on checked arguments, without time information."""
        batch, length, d = items.shape
        h = self.heads
        v = self.value(items).view(batch, length, h, d // h)
        scores = self.logits(target, items)
        if mask is None:
            weights = torch.softmax(scores, dim=-1)
        else:
            keep = mask.unsqueeze(1)
            weights = torch.softmax(scores.masked_fill(~keep, torch.finfo(scores.dtype).min), dim=-1) * keep
        return self.out(torch.einsum("bht,bthe->bhe", weights, v).reshape(batch, d))


class ETAAttention(nn.Module):
    """ETA: retrieve the ``k`` nearest behaviours, then multi-head target attention over them.

    The long-sequence user-interest block of an ETA CTR model: cost
    ``O(L * bits)`` hashing plus ``O(k * d)`` attention per target, instead of
    ``O(L * d)`` attention over the whole sequence. Retrieval runs on the
    item embeddings (``hash_space="embedding"``, the paper's) or in the
    attention's own space (``"attention"``); time information (``time``) is
    added to the retrieved behaviours only, as in the paper.

    Parameters
    ----------
    dim : int
        Embedding dimension ``d``, divisible by ``heads``.
    bits : int
        Signature length, ``1..1024``.
    k : int
        Behaviours attended to per target.
    heads : int
        Number of attention heads.
    seed : int, default 0
        Seed of the retriever's hyperplanes.
    time : TimeEncoding, optional
        If given, the embedding of each retrieved behaviour's interval bucket
        (from ``seq_time`` and ``target_time``, or from positions when they
        are not passed) is added to it before the attention's key and value
        projections.
    candidates : int, optional
        Recency re-ranking: retrieve the ``candidates >= k`` nearest
        behaviours by Hamming distance, then attend over the ``k`` most recent
        of them (largest positions). Default: the ``k`` nearest, whose ties
        (equal distance) are already broken newest first by the top-K.
    hash_space : {"embedding", "attention"}, default "embedding"
        What is hashed. ``"embedding"``: the target and behaviour embeddings,
        with the retriever's planes ``R``. ``"attention"``: the target as the
        attention's projected query ``W_q t + b_q`` and each behaviour as its
        projected key ``W_k e + b_k`` (without time information, which
        depends on the request), with the same planes, so the Hamming
        distance approximates the angle behind the attention's own logits.
        The projections fold into the planes,
        ``sign(R^T (W e + b)) = sign((W^T R)^T e + R^T b)``: affine planes
        ``(dim + 1, bits)`` whose last row is the offset ``R^T b``, passed as
        the ``offset`` of :func:`~etaretrieval.torch.pack_signatures` (the rows
        hashed are the embeddings themselves, not copied; the signatures have
        the same shape). The folded planes
        follow the attention's weights as they train; a
        :class:`SignatureCache` built from this block (``hasher=block``)
        hashes with them and is stale after they change, until refreshed.

    Attributes
    ----------
    retriever : ETARetriever
        Retrieves ``candidates`` (default ``k``) behaviours.
    attention : TargetAttention
    time : TimeEncoding or None

    Examples
    --------
    >>> import torch
    >>> from etaretrieval.torch import ETAAttention, TimeEncoding
    >>> eta = ETAAttention(dim=16, bits=64, k=8, heads=2)
    >>> seq = torch.randn(4, 1000, 16)
    >>> mask = torch.rand(4, 1000) < 0.9
    >>> eta(torch.randn(4, 16), seq, mask).shape
    torch.Size([4, 16])
    >>> timed = ETAAttention(dim=16, bits=64, k=8, heads=2, time=TimeEncoding(16), candidates=32)
    >>> times = torch.arange(1000).expand(4, -1)
    >>> timed(torch.randn(4, 16), seq, mask, seq_time=times, target_time=torch.full((4,), 1000)).shape
    torch.Size([4, 16])
    """

    def __init__(
        self,
        dim: int,
        bits: int,
        k: int,
        heads: int,
        seed: int = 0,
        *,
        time: Optional[TimeEncoding] = None,
        candidates: Optional[int] = None,
        hash_space: str = "embedding",
    ) -> None:
        super().__init__()
        if hash_space not in ("embedding", "attention"):
            raise ValueError(f"hash_space must be 'embedding' or 'attention', got {hash_space!r}")
        self.hash_space = hash_space
        self.k = check_k(k)
        if candidates is not None and _as_int("candidates", candidates) < self.k:
            raise ValueError(f"candidates must be >= k = {self.k}, got {candidates}")
        if time is not None and not isinstance(time, TimeEncoding):
            raise TypeError(f"time must be a TimeEncoding or None, got {type(time).__name__}")
        self.candidates = candidates
        self.retriever = ETARetriever(dim, bits, self.k if candidates is None else candidates, seed)
        self.attention = TargetAttention(dim, heads)
        self.time = time

    @classmethod
    def from_planes(cls, planes: Any, k: int, heads: int, *, hash_space: str = "embedding") -> ETAAttention:
        """An ETA block whose retriever hashes with existing hyperplanes (see :meth:`ETARetriever.from_planes`).

        Parameters
        ----------
        planes : torch.Tensor or array_like
            ``(dim, bits)`` float32/float64 hyperplanes.
        k : int
            Behaviours attended to per target.
        heads : int
            Number of attention heads, dividing ``dim``.
        hash_space : {"embedding", "attention"}, default "embedding"
            As in the constructor.

        Returns
        -------
        ETAAttention

        Examples
        --------
        >>> import torch
        >>> from etaretrieval.torch import ETAAttention
        >>> eta = ETAAttention.from_planes(torch.randn(16, 64), k=8, heads=2)
        >>> eta(torch.randn(4, 16), torch.randn(4, 100, 16)).shape
        torch.Size([4, 16])
        """
        retriever = ETARetriever.from_planes(planes, k)
        module = cls(retriever.dim, retriever.bits, k, heads, hash_space=hash_space)
        module.retriever = retriever
        return module

    def extra_repr(self) -> str:
        return f"hash_space={self.hash_space!r}" if self.hash_space != "embedding" else ""

    def query_planes(self) -> torch.Tensor:
        """The planes the target is hashed with: the retriever's, or affine with the query projection folded in."""
        planes = self.retriever.planes
        return planes if self.hash_space == "embedding" else fold(planes, self.attention.query)

    def key_planes(self) -> torch.Tensor:
        """The planes the behaviours are hashed with (what a :class:`SignatureCache` of this block hashes with).

        Returns
        -------
        torch.Tensor
            The retriever's ``(dim, bits)`` planes (``hash_space="embedding"``),
            or the ``(dim + 1, bits)`` affine planes ``[W_k^T R; b_k^T R]``
            (``"attention"``).
        """
        planes = self.retriever.planes
        return planes if self.hash_space == "embedding" else fold(planes, self.attention.key)

    def retrieve(
        self,
        target: torch.Tensor,
        seq: Optional[torch.Tensor] = None,
        mask: Optional[torch.Tensor] = None,
        **kwargs: Any,
    ) -> Retrieved:
        """The behaviours the block attends over: ``(values, index, mask)``, each with ``k`` slots.

        ``target``, ``seq``, ``mask`` and the keywords ``seq_ids``,
        ``items``, ``cache``, ``lengths``, ``padding_side`` are as in
        :meth:`ETARetriever.forward`; the common interest-block keywords
        (``seq_time``, ``target_time``, ``seq_cat``, ``target_cat``) are
        accepted and ignored. Hashes in the block's ``hash_space``. With ``candidates``, the ``k`` most recent of
        the retrieved candidates, newest first; otherwise the retriever's
        ``k`` nearest, nearest first. ``values`` are the embeddings without
        time information.

        Returns
        -------
        Retrieved

        Examples
        --------
        >>> import torch
        >>> from etaretrieval.torch import ETAAttention
        >>> eta = ETAAttention(dim=16, bits=64, k=4, heads=2, candidates=16)
        >>> seq = torch.randn(2, 100, 16)
        >>> found = eta.retrieve(seq[:, 3], seq)
        >>> found.index.shape, bool((found.index[:, :-1] > found.index[:, 1:]).all())  # newest first
        (torch.Size([2, 4]), True)
        """
        for name in ("seq_time", "target_time", "seq_cat", "target_cat"):
            kwargs.pop(name, None)
        if self.hash_space == "attention":
            kwargs.update(query_planes=self.query_planes(), key_planes=self.key_planes())
        values, index, valid = self.retriever(target, seq, mask, **kwargs)
        if self.candidates is not None:  # keep the k most recent candidates, newest first
            newest = torch.where(valid, index, -1).topk(min(self.k, index.shape[1]), dim=1).indices
            values, index, valid = gather_positions(values, newest), index.gather(1, newest), valid.gather(1, newest)
        return Retrieved(values, index, valid)

    def forward(
        self,
        target: torch.Tensor,
        seq: Optional[torch.Tensor] = None,
        mask: Optional[torch.Tensor] = None,
        *,
        seq_ids: Optional[torch.Tensor] = None,
        items: Optional[torch.Tensor] = None,
        cache: Optional[SignatureCache] = None,
        lengths: Optional[torch.Tensor] = None,
        padding_side: str = "right",
        seq_time: Optional[torch.Tensor] = None,
        target_time: Optional[torch.Tensor] = None,
        seq_cat: Optional[torch.Tensor] = None,
        target_cat: Optional[torch.Tensor] = None,
    ) -> torch.Tensor:
        """User-interest vector ``(B, d)``.

        ``target``, ``seq``, ``mask``, ``seq_ids``, ``items``, ``cache``,
        ``lengths`` and ``padding_side`` are as in
        :meth:`ETARetriever.forward` (``seq`` / ``seq_ids`` may be
        ``torch.nested`` jagged tensors: ragged histories, no ``(B, L_max)``
        block); ``seq_time`` ``(B, L)`` (jagged ``(B, j)`` with a jagged
        history, with its offsets) and ``target_time`` ``(B,)`` integer
        timestamps feed ``time``; ``seq_cat`` and ``target_cat`` are ignored
        (the common interest-block arguments).
        """
        values, index, valid = self.retrieve(
            target, seq, mask, seq_ids=seq_ids, items=items, cache=cache, lengths=lengths, padding_side=padding_side
        )
        if self.time is not None:
            if _jagged.is_jagged(seq) or _jagged.is_jagged(seq_ids):
                interval = self._jagged_intervals(index, seq, mask, seq_ids, seq_time, target_time)
            else:
                length = seq.shape[1] if seq is not None else seq_ids.shape[1]  # type: ignore[union-attr]
                valid_seq = _valid_positions(mask, lengths, padding_side, index.shape[0], length, index.device)
                interval = self.time.intervals(valid_seq, seq_time, target_time, shape=(index.shape[0], length))
                interval = gather_positions(interval, index)
            values = values + self.time.embed(interval).to(values.dtype) * valid.unsqueeze(-1).to(values.dtype)
        return self.attention.attend(target, values, valid)

    def _jagged_intervals(
        self,
        index: torch.Tensor,
        seq: Optional[torch.Tensor],
        mask: Optional[torch.Tensor],
        seq_ids: Optional[torch.Tensor],
        seq_time: Optional[torch.Tensor],
        target_time: Optional[torch.Tensor],
    ) -> torch.Tensor:
        """``(B, k)`` intervals of the retrieved positions ``index`` of a jagged history (checked by the retriever)."""
        of = "seq" if seq is not None else "seq_ids"
        values, offsets = _jagged.parts(of, seq if seq is not None else seq_ids)
        total, flat = values.shape[0], _jagged.flat_index(offsets, index)
        if (seq_time is None) != (target_time is None):
            raise ValueError("pass seq_time and target_time together (or neither, for position distances)")
        if seq_time is None:  # computed at the retrieved values only
            return _jagged.newer_at(offsets, flat, _jagged.flat_mask(mask, offsets, total, of))
        stamps = _jagged.ints("seq_time", seq_time, offsets, total, of)
        when = _ints("target_time", target_time, (index.shape[0],), index.device)
        return when.to(torch.int64).unsqueeze(1) - _jagged.take(stamps, flat).to(torch.int64)


def _valid_positions(
    mask: Optional[torch.Tensor],
    lengths: Optional[torch.Tensor],
    padding_side: str,
    batch: int,
    length: int,
    device: torch.device,
) -> Optional[torch.Tensor]:
    """The ``(B, L)`` bool valid positions given by a mask (any numeric dtype) or by lengths, or None (all)."""
    if mask is not None:
        return cast(torch.Tensor, _ops.bool_mask(mask)).expand(batch, length)
    if lengths is None:
        return None
    col = torch.arange(length, device=device)
    n = lengths.to(device=device, dtype=torch.int64).unsqueeze(1)
    return col >= length - n if check_padding_side(padding_side) == "left" else col < n
