"""A reference long+short CTR model with swappable interest blocks."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Optional

import torch
from torch import nn

from .._validate import DTypeError, _shape
from . import _jagged, _ops
from ._checks import _bool_mask, _ints
from .attention import ETAAttention
from .baselines import RecentWindowAttention
from .time import TimeEncoding, gather_positions

__all__ = ["ETAModel"]


class ETAModel(nn.Module):
    """Click-through-rate model: embeddings, a short-term and a long-term interest block, an MLP.

    Each behaviour and the target are embedded as the item embedding
    concatenated with the category embedding (when ``n_categories > 0``);
    the short-term block (default: target attention over the last ``recent``
    behaviours) and the long-term block (default: ETA over the whole history,
    with time information) each give a ``(B, dim)`` interest vector; the MLP
    reads ``[target, short, long, target * short, target * long]`` and gives a
    logit. Both blocks are any interest block (same call, see
    ``etaretrieval.torch.baselines``), so comparing retrieval methods is
    one model with one block changed.

    Only the behaviours a block reads are embedded. A
    :class:`RecentWindowAttention` short-term block (the default) is called
    with its ``k`` newest valid behaviours (left-padded, oldest first) rather
    than the whole history: same result. An :class:`ETAAttention` long-term
    block, when every item's embedding is known from its id (no categories,
    or ``item_categories`` given) and the table is not much larger than the
    batch (``n_items + 1 <= 2 B L``), gets the ids and the
    ``(n_items + 1, dim)`` table of item embeddings: each call hashes the
    table (``n_items`` rows instead of ``B x L``), looks the signatures up by
    id and reads the embeddings of the ``k`` retrieved behaviours only, so
    neither the forward nor the backward pass touches a ``B x L x dim``
    tensor. Other blocks, and ETA with a larger table, get the embedded
    history (for serving with a large catalogue, look signatures up in a
    :class:`SignatureCache` instead, see :class:`ETAAttention`).

    Parameters
    ----------
    n_items : int
        Item ids are ``0..n_items`` (``0`` is padding).
    dim : int, default 32
        Width ``d`` of a behaviour embedding (and of the interest vectors).
    n_categories : int, default 0
        Category ids ``0..n_categories``; ``0`` means the model uses no
        categories. With categories, ``dim // 2`` of the width is the
        category embedding.
    short, long : torch.nn.Module, optional
        Interest blocks. Defaults: ``RecentWindowAttention(dim, recent, heads)``
        and ``ETAAttention(dim, bits, k, heads, seed, time=TimeEncoding(dim))``.
    recent, k, bits, heads, seed : int
        Sizes of the default blocks (defaults 16, 64, 64, 2, 0). ``k = 64``
        follows the rule of :doc:`/user_guide/choosing` (at least 64, and
        about 4 % of the median history above 1,600 behaviours), read off the
        study's k / cost / quality frontier.
    hidden : sequence of int, default (128, 64)
        Widths of the MLP's hidden layers.
    item_categories : torch.Tensor, optional
        ``(n_items + 1,)`` integer category of every item id (``0`` for the
        padding id), when an item's category never changes (the
        ``categories`` passed to :meth:`forward` must agree with it): lets an
        :class:`ETAAttention` long-term block look behaviours up by id (see
        above). Without it a model with categories hashes the embedded
        history.
    hash_space : {"embedding", "attention"}, default "embedding"
        What the default long-term ETA block hashes (see
        :class:`ETAAttention`): the embeddings, or the attention's projected
        query and keys (the projections folded into the planes, also when the
        item table is hashed by id). Ignored when ``long`` is given.

    Attributes
    ----------
    item_categories : torch.Tensor or None
        ``(n_items + 1,)`` int64 buffer, as given; not saved in the
        ``state_dict`` (it is configuration, like the sizes).

    Examples
    --------
    >>> import torch
    >>> from etaretrieval.torch import ETAModel
    >>> model = ETAModel(n_items=100, dim=16, n_categories=5)
    >>> history = torch.randint(1, 101, (4, 300))
    >>> logits = model(history, torch.randint(1, 101, (4,)), history != 0,
    ...                categories=torch.randint(1, 6, (4, 300)), target_category=torch.randint(1, 6, (4,)),
    ...                times=torch.arange(300).expand(4, -1), target_time=torch.full((4,), 300))
    >>> logits.shape
    torch.Size([4])

    Ragged histories as ``torch.nested`` jagged tensors sharing one offsets tensor:

    >>> offsets = torch.tensor([0, 120, 120, 300, 420])  # row 1 is empty
    >>> jagged = lambda values: torch.nested.nested_tensor_from_jagged(values, offsets)
    >>> model(jagged(torch.randint(1, 101, (420,))), torch.randint(1, 101, (4,)),
    ...       categories=jagged(torch.randint(1, 6, (420,))), target_category=torch.randint(1, 6, (4,)),
    ...       times=jagged(torch.arange(420)), target_time=torch.full((4,), 420)).shape
    torch.Size([4])
    """

    def __init__(
        self,
        n_items: int,
        dim: int = 32,
        *,
        n_categories: int = 0,
        short: Optional[nn.Module] = None,
        long: Optional[nn.Module] = None,
        recent: int = 16,
        k: int = 64,
        bits: int = 64,
        heads: int = 2,
        seed: int = 0,
        hidden: Sequence[int] = (128, 64),
        item_categories: Optional[torch.Tensor] = None,
        hash_space: str = "embedding",
    ) -> None:
        super().__init__()
        if n_items < 1 or n_categories < 0:
            raise ValueError(f"need n_items >= 1 and n_categories >= 0, got {n_items} and {n_categories}")
        cat_dim = dim // 2 if n_categories else 0
        if dim - cat_dim < 1:
            raise ValueError(f"dim must be >= 2 with categories, got {dim}")
        self.dim = dim
        self.items = nn.Embedding(n_items + 1, dim - cat_dim, padding_idx=0)
        self.categories = nn.Embedding(n_categories + 1, cat_dim, padding_idx=0) if n_categories else None
        self.register_buffer("item_categories", _item_categories(item_categories, n_items, n_categories),
                             persistent=False)
        self.short = RecentWindowAttention(dim, recent, heads) if short is None else short
        self.long = ETAAttention(dim, bits, k, heads, seed, time=TimeEncoding(dim),
                                 hash_space=hash_space) if long is None else long
        layers: list[nn.Module] = []
        width = 5 * dim
        for h in hidden:
            layers += [nn.Linear(width, h), nn.ReLU()]
            width = h
        self.mlp = nn.Sequential(*layers, nn.Linear(width, 1))

    item_categories: Optional[torch.Tensor]

    def embed(self, ids: torch.Tensor, categories: Optional[torch.Tensor]) -> torch.Tensor:
        """Embeddings ``(..., dim)`` of item ids (and their categories)."""
        if self.categories is None:
            return self.items(ids)
        if categories is None:
            raise ValueError("this model embeds categories: pass categories and target_category")
        return torch.cat([self.items(ids), self.categories(categories)], dim=-1)

    def item_table(self) -> Optional[torch.Tensor]:
        """``(n_items + 1, dim)`` embeddings of every item id, or ``None`` if its category is not known.

        Row ``i`` equals ``embed(i, category of i)``; differentiable w.r.t.
        the embedding weights except the padding rows (id ``0``, category
        ``0``), like :meth:`embed`.
        """
        weight = self.items.weight
        if self.item_categories is None and self.categories is not None:
            return None
        weight = torch.cat([weight[:1].detach(), weight[1:]])  # the padding row gets no gradient, as in nn.Embedding
        if self.categories is None:
            return weight
        return torch.cat([weight, self.categories(self.item_categories)], dim=-1)

    def forward(
        self,
        history: torch.Tensor,
        target: torch.Tensor,
        mask: Optional[torch.Tensor] = None,
        *,
        times: Optional[torch.Tensor] = None,
        target_time: Optional[torch.Tensor] = None,
        categories: Optional[torch.Tensor] = None,
        target_category: Optional[torch.Tensor] = None,
    ) -> torch.Tensor:
        """Click logits ``(B,)``.

        Parameters
        ----------
        history : torch.Tensor
            ``(B, L)`` int64 item ids, oldest to newest, padded on either
            side; or a ``torch.nested`` jagged ``(B, j)`` integer tensor of
            ragged rows (see Notes).
        target : torch.Tensor
            ``(B,)`` int64 target item ids.
        mask : torch.Tensor, optional
            ``(B, L)`` bool, true at real behaviours; default ``history != 0``
            (also for a jagged history, whose mask is jagged ``(B, j)``).
        times, target_time : torch.Tensor, optional
            ``(B, L)`` behaviour timestamps and ``(B,)`` request times, for
            blocks with time information (without them such blocks use
            position distances).
        categories, target_category : torch.Tensor, optional
            ``(B, L)`` and ``(B,)`` category ids; required when
            ``n_categories > 0``.

        Returns
        -------
        torch.Tensor
            ``(B,)`` logits.

        Notes
        -----
        With a jagged ``history``, ``times``, ``categories`` (and ``mask``)
        are jagged tensors with its offsets (best made from one offsets
        tensor, e.g. ``torch.nested.nested_tensor_from_jagged(values,
        offsets)`` for each). No ``(B, L_max)`` tensor is built: the default
        short-term block reads the newest ``recent`` behaviours of each row
        into ``(B, recent)``, an :class:`ETAAttention` long-term block
        retrieves from the flat values, other blocks get jagged tensors. The
        logits (and gradients) are those of the padded rows, to float
        rounding; ``torch.compile(fullgraph=True)`` traces this path.
        """
        if _jagged.is_jagged(history):
            return self._forward_jagged(history, target, mask, times, target_time, categories, target_category)
        if not isinstance(history, torch.Tensor) or history.dim() != 2 or not _ops.is_integer(history.dtype):
            got = f"shape {_shape(tuple(history.shape))}, dtype {history.dtype}" if isinstance(history, torch.Tensor) \
                else type(history).__name__
            raise ValueError(f"history must be a (B, L) integer torch.Tensor, got {got}")
        batch, length = history.shape
        for name, t, shape in (("target", target, (batch,)), ("times", times, (batch, length)),
                               ("target_time", target_time, (batch,)), ("categories", categories, (batch, length)),
                               ("target_category", target_category, (batch,))):
            if t is not None or name == "target":
                _ints(name, t, shape, history.device)
        if mask is None:
            mask = history != 0
        valid = _bool_mask(mask, (batch, length), history.device)
        query = self.embed(target, target_category)
        context = {"seq_time": times, "target_time": target_time, "seq_cat": categories, "target_cat": target_category}
        seq: Optional[torch.Tensor] = None
        if isinstance(self.short, RecentWindowAttention):  # only the window is embedded: the same result
            take = min(self.short.k, length)
            position = torch.arange(length, device=history.device).expand(batch, -1)
            index = torch.where(valid, position, -1).topk(take, dim=1).indices.flip(1)  # positions are distinct
            filled = valid.gather(1, index)

            def pick(x: Optional[torch.Tensor]) -> Optional[torch.Tensor]:
                return None if x is None else torch.where(filled, gather_positions(x, index), 0)

            short = self._window(query, pick, filled, history, times, target_time, categories, target_category)
        else:
            seq = self.embed(history, categories)
            short = self.short(query, seq, mask, **context)
        table = None
        if isinstance(self.long, ETAAttention) and self.items.num_embeddings <= 2 * history.numel():
            table = self.item_table()
        if table is not None:  # ETA by id: the table is hashed, k embeddings per row are read
            long = self.long(query, None, mask, seq_ids=history, items=table, **context)
        else:
            long = self.long(query, self.embed(history, categories) if seq is None else seq, mask, **context)
        return self.mlp(torch.cat([query, short, long, query * short, query * long], dim=-1)).squeeze(-1)

    def _forward_jagged(
        self,
        history: torch.Tensor,
        target: torch.Tensor,
        mask: Optional[torch.Tensor],
        times: Optional[torch.Tensor],
        target_time: Optional[torch.Tensor],
        categories: Optional[torch.Tensor],
        target_category: Optional[torch.Tensor],
    ) -> torch.Tensor:
        """:meth:`forward` over a jagged ``history``: the blocks get jagged tensors, the window ``(B, recent)``."""
        ids, offsets = _jagged.parts("history", history)
        if not _ops.is_integer(ids.dtype) or ids.dim() != 1:
            raise ValueError(f"history must be a (B, j) integer jagged tensor, got dtype {ids.dtype}, "
                             f"{offsets.shape[0] - 1} rows, values of shape {_shape(tuple(ids.shape))}")
        batch, total, device = offsets.shape[0] - 1, ids.shape[0], ids.device
        for name, t in (("target", target), ("target_time", target_time), ("target_category", target_category)):
            if t is not None or name == "target":
                _ints(name, t, (batch,), device)
        flat_times = None if times is None else _jagged.ints("times", times, offsets, total, "history")
        flat_cats = None if categories is None else _jagged.ints("categories", categories, offsets, total, "history")
        valid = _jagged.flat_mask(mask, offsets, total, "history")
        if valid is None:
            valid = ids != 0

        def nested(values: Optional[torch.Tensor]) -> Optional[torch.Tensor]:  # the history's rows, its offsets
            return None if values is None else torch.nested.nested_tensor_from_jagged(values, offsets)

        query = self.embed(target, target_category)
        valid_nt = mask if mask is not None else nested(valid)  # the given jagged tensors are passed on as they are
        context = {"seq_time": times, "target_time": target_time, "seq_cat": categories, "target_cat": target_category}
        seq: Optional[torch.Tensor] = None
        if isinstance(self.short, RecentWindowAttention):  # the newest valid behaviours, gathered into (B, recent)
            index, filled = _jagged.newest(offsets, self.short.k, valid, _jagged.row_index(offsets, total))

            def pick(x: Optional[torch.Tensor]) -> Optional[torch.Tensor]:
                return None if x is None else _jagged.take(x, index)

            short = self._window(query, pick, filled, ids, flat_times, target_time, flat_cats, target_category)
        else:
            seq = nested(self.embed(ids, flat_cats))
            short = self.short(query, seq, valid_nt, **context)
        table = None
        if isinstance(self.long, ETAAttention) and self.items.num_embeddings <= 2 * total:
            table = self.item_table()
        if table is not None:
            long = self.long(query, None, valid_nt, seq_ids=history, items=table, **context)
        else:
            long = self.long(query, nested(self.embed(ids, flat_cats)) if seq is None else seq, valid_nt, **context)
        return self.mlp(torch.cat([query, short, long, query * short, query * long], dim=-1)).squeeze(-1)

    def _window(
        self,
        query: torch.Tensor,
        pick: Callable[[Optional[torch.Tensor]], Optional[torch.Tensor]],
        filled: torch.Tensor,
        history: torch.Tensor,
        times: Optional[torch.Tensor],
        target_time: Optional[torch.Tensor],
        categories: Optional[torch.Tensor],
        target_category: Optional[torch.Tensor],
    ) -> torch.Tensor:
        """The short-term block over its newest valid behaviours: ``pick`` reads them (``filled`` slots) from each."""
        block = self.short
        assert isinstance(block, RecentWindowAttention)
        ids, cats = pick(history), pick(categories)
        assert ids is not None
        return block(query, self.embed(ids, cats), filled, seq_time=pick(times), target_time=target_time,
                     seq_cat=cats, target_cat=target_category)


def _item_categories(table: Optional[torch.Tensor], n_items: int, n_categories: int) -> Optional[torch.Tensor]:
    """Check ``ETAModel``'s ``item_categories``; returned as int64."""
    if table is None:
        return None
    if not isinstance(table, torch.Tensor):
        raise TypeError(f"item_categories must be a torch.Tensor, got {type(table).__name__}")
    if not _ops.is_integer(table.dtype):
        raise DTypeError(f"item_categories must have an integer dtype, got {table.dtype}")
    if tuple(table.shape) != (n_items + 1,):
        raise ValueError(f"item_categories must have shape ({n_items + 1},), got shape {_shape(tuple(table.shape))}")
    if not n_categories:
        raise ValueError("item_categories needs n_categories > 0")
    table = table.to(torch.int64)
    if table.numel() and not (0 <= int(table.min()) and int(table.max()) <= n_categories):
        raise ValueError(f"item_categories must lie in [0, {n_categories}], got range "
                         f"[{int(table.min())}, {int(table.max())}]")
    return table
