"""ETA retrieval: SimHash the target and the behaviour sequence, keep the ``k`` nearest positions."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, NamedTuple, Optional, cast

import torch

from .. import ragged
from .._validate import DTypeError, NonFiniteError, _shape, check_k, check_padding_side
from ..simhash import hyperplanes
from . import _jagged, _ops
from ._buffers import FixedDtypeBuffers
from ._checks import _bool_mask, _floats, _planes
from ._planes import hash_rows, is_affine

if TYPE_CHECKING:
    from .cache import SignatureCache

__all__ = ["Retrieved", "ETARetriever"]


class Retrieved(NamedTuple):
    """What :class:`ETARetriever` returns for ``B`` targets and ``k`` slots.

    Attributes
    ----------
    values : torch.Tensor
        ``(B, k, d)`` the retrieved embeddings, nearest first; zeros in empty slots.
    index : torch.Tensor
        ``(B, k)`` int64 positions in the sequence; ``-1`` in empty slots.
    mask : torch.Tensor
        ``(B, k)`` bool, true where a slot holds an item.

    Examples
    --------
    >>> import torch
    >>> from etaretrieval.torch import ETARetriever
    >>> retriever = ETARetriever(dim=8, bits=64, k=3)
    >>> values, index, mask = retriever(torch.randn(2, 8), torch.randn(2, 2, 8))
    >>> values.shape, index[:, 2].tolist(), mask[:, 2].tolist()  # only 2 behaviours: slot 2 is empty
    (torch.Size([2, 3, 8]), [-1, -1], [False, False])
    """

    values: torch.Tensor
    index: torch.Tensor
    mask: torch.Tensor


class ETARetriever(FixedDtypeBuffers):
    """ETA's retrieval step: SimHash both sides, keep the ``k`` nearest behaviours.

    Four ways to give the sequence (``target`` is always ``(B, d)`` embeddings):

    * ``forward(target, seq, mask)``: hash the ``(B, L, d)`` embeddings ``seq``
      on every call, so the signatures follow the embeddings as they train
      (ETA's end-to-end property);
    * ``forward(target, seq, mask, seq_ids=ids)``: the same, hashing each
      distinct id of the batch once (``seq`` must be the embeddings of ``ids``);
      pays off when ``d * bits`` is large. ``torch.unique`` gives this path a
      data-dependent shape, so ``torch.compile(fullgraph=True)`` needs
      ``torch._dynamo.config.capture_dynamic_output_shape_ops = True``;
    * ``forward(target, mask=mask, seq_ids=ids, items=table)``: ``seq[b, l]`` is
      ``table[ids[b, l]]`` for an ``(N, d)`` table of current embeddings; every
      row of ``table`` is hashed and the values are read for the ``k``
      retrieved ids only, so no ``B x L x d`` tensor is ever built (training
      when ``N`` is not far above ``B * L``);
    * ``forward(target, mask=mask, seq_ids=ids, cache=cache)``: look the
      signatures up in a :class:`SignatureCache` (serving); the values are read
      from ``cache.embedding`` for the retrieved ids (or from ``seq`` if given).

    Ragged histories: ``seq`` ``(B, j, d)`` and ``seq_ids`` ``(B, j)`` may be
    ``torch.nested`` jagged tensors (both, when both are given, with the same
    offsets; ``mask`` then ``None`` or jagged too). The ragged operators run
    on their flat values and the ``k`` retrieved rows are gathered into the
    dense ``(B, k, d)`` result; no ``(B, L_max)`` tensor is built. Positions
    count from each row's start; everything else is as for padded rows, and
    equal to them on the same rows.

    Parameters
    ----------
    dim : int
        Embedding dimension ``d``.
    bits : int
        Signature length, ``1..1024``.
    k : int
        Behaviours kept per target, ``>= 0``.
    seed : int, default 0
        Seed of :func:`etaretrieval.hyperplanes`.

    Attributes
    ----------
    planes : torch.Tensor
        ``(dim, bits)`` float32 buffer (fixed, saved in the ``state_dict``).

    Examples
    --------
    >>> import torch
    >>> from etaretrieval.torch import ETARetriever
    >>> _ = torch.manual_seed(0)
    >>> retriever = ETARetriever(dim=16, bits=64, k=4)
    >>> seq = torch.randn(2, 50, 16, requires_grad=True)
    >>> out = retriever(seq[:, 7], seq)
    >>> out.values.shape, out.index[:, 0].tolist(), out.values.requires_grad
    (torch.Size([2, 4, 16]), [7, 7], True)
    """

    planes: torch.Tensor

    _fixed_dtype = ("planes",)

    def __init__(self, dim: int, bits: int, k: int, seed: int = 0) -> None:
        super().__init__()
        self.k = check_k(k)
        self.register_buffer("planes", torch.from_numpy(hyperplanes(dim, bits, seed)))

    @classmethod
    def from_planes(cls, planes: Any, k: int) -> ETARetriever:
        """A retriever hashing with existing hyperplanes (e.g. those of a model that already has them).

        Parameters
        ----------
        planes : torch.Tensor or array_like
            ``(dim, bits)`` float32/float64 finite hyperplanes, ``bits`` in
            ``1..1024``; copied into the :attr:`planes` buffer (same dtype and device).
        k : int
            Behaviours kept per target, ``>= 0``.

        Returns
        -------
        ETARetriever

        Examples
        --------
        >>> import etaretrieval as er
        >>> from etaretrieval.torch import ETARetriever
        >>> hasher = er.SimHasher(16, 64, seed=3)
        >>> retriever = ETARetriever.from_planes(hasher.planes, k=4)
        >>> retriever
        ETARetriever(dim=16, bits=64, k=4)
        """
        p = _planes(planes)
        module = cls(p.shape[0], p.shape[1], k)
        module.planes = p
        return module

    @property
    def dim(self) -> int:
        """Embedding dimension."""
        return self.planes.shape[0]

    def key_planes(self) -> torch.Tensor:
        """The planes the behaviours are hashed with: :attr:`planes` (what a :class:`SignatureCache` hashes with)."""
        return self.planes

    @property
    def bits(self) -> int:
        """Signature length in bits."""
        return self.planes.shape[1]

    def extra_repr(self) -> str:
        return f"dim={self.dim}, bits={self.bits}, k={self.k}"

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
        query_planes: Optional[torch.Tensor] = None,
        key_planes: Optional[torch.Tensor] = None,
    ) -> Retrieved:
        """Retrieve the ``k`` behaviours nearest to each target.

        Parameters
        ----------
        target : torch.Tensor
            ``(B, d)`` float32/float64 target embeddings.
        seq : torch.Tensor, optional
            ``(B, L, d)`` behaviour embeddings, oldest to newest, or a jagged
            ``(B, j, d)`` nested tensor. Required unless ``items`` or ``cache``
            is given.
        mask : torch.Tensor, optional
            ``(B, L)`` valid (non-padding) positions: bool, or numeric with
            non-zero = valid (the attention-mask convention). With a jagged
            history: ``None`` or a jagged ``(B, j)`` mask with its offsets.
        seq_ids : torch.Tensor, optional
            ``(B, L)`` integer item ids of the behaviours (or a jagged
            ``(B, j)`` tensor of them); needed by ``items`` and ``cache``.
        items : torch.Tensor, optional
            ``(N, d)`` float32/float64 embeddings of every id (instead of ``seq``).
        cache : SignatureCache, optional
            Signatures of every id, built with the same planes.
        lengths : torch.Tensor, optional
            ``(B,)`` integer numbers of valid positions per row, instead of
            ``mask`` (padded rows only).
        padding_side : {"right", "left"}, default "right"
            Where the padding of rows given by ``lengths`` lies: valid
            positions ``[0, lengths[b])`` (``"right"``) or the last
            ``lengths[b]`` (``"left"``, front-padded sequences).
        query_planes, key_planes : torch.Tensor, optional
            Planes to hash the target / the behaviours with instead of
            :attr:`planes` (same ``bits``): ``(dim, bits)``, or affine
            ``(dim + 1, bits)`` whose last row is an offset (see
            :class:`ETAAttention`'s ``hash_space="attention"``). A ``cache``
            must have been hashed with ``key_planes``.

        Returns
        -------
        Retrieved
            ``(values, index, mask)``; ``values`` is differentiable w.r.t.
            ``seq`` (or ``items``, or ``cache.embedding``), with gradient on the
            retrieved rows only.

        Raises
        ------
        ValueError
            A NaN or an infinity in ``target``, or in ``seq`` at a valid
            position (naming its row and position); values at masked or
            padded positions are never used and not checked. A jagged
            ``seq_ids``, ``mask`` (or ``seq``) whose offsets differ from the
            history's, named; ``lengths`` or ``padding_side="left"`` with a
            jagged history.
        """
        query_planes = self.planes if query_planes is None else self._side_planes("query_planes", query_planes)
        key_planes = self.planes if key_planes is None else self._side_planes("key_planes", key_planes)
        if _jagged.is_jagged(seq) or _jagged.is_jagged(seq_ids):
            return self._forward_jagged(
                target, seq, mask, seq_ids, items, cache, lengths, padding_side, query_planes, key_planes)
        length = self._check(target, seq, mask, seq_ids, items, cache, lengths, padding_side, key_planes)
        mask = None if mask is None else _ops.bool_mask(mask)
        query = hash_rows(target, query_planes, name="target")
        if seq_ids is None:
            index = self._from_seq(query, cast(torch.Tensor, seq), mask, lengths, padding_side, length, key_planes)
        elif cache is not None:
            index = self._from_cache(query, seq_ids, cache, mask, lengths, padding_side)
        elif items is not None:
            index = self._from_items(query, seq_ids, items, mask, lengths, padding_side, length, key_planes)
        else:
            index = self._from_seq_ids(
                query, cast(torch.Tensor, seq), seq_ids, mask, lengths, padding_side, length, key_planes)
        valid = index >= 0
        safe = index.clamp(min=0)
        if length == 0:  # nothing to gather from: every slot is empty
            values = target.new_zeros(target.shape[0], self.k, self.dim)
        elif seq is not None:
            values = seq.gather(1, safe.unsqueeze(-1).expand(-1, -1, seq.shape[-1]))
        else:  # empty slots read id 0, not the id at position 0 (possibly a masked padding id)
            ids = torch.where(valid, cast(torch.Tensor, seq_ids).gather(1, safe), 0)
            values = _rows(items, ids) if items is not None else cast("SignatureCache", cache).embedding(ids)
        return Retrieved(values * valid.unsqueeze(-1).to(values.dtype), index, valid)

    def _forward_jagged(
        self, target: torch.Tensor, seq: Optional[torch.Tensor], mask: Optional[torch.Tensor],
        seq_ids: Optional[torch.Tensor], items: Optional[torch.Tensor], cache: Optional[SignatureCache],
        lengths: Optional[torch.Tensor], padding_side: str, query_planes: torch.Tensor, key_planes: torch.Tensor,
    ) -> Retrieved:
        """:meth:`forward` over a jagged history: the ragged ops on the flat values, ``(B, k)`` gathered from them."""
        seq_v, ids_v, offsets, valid = self._check_jagged(
            target, seq, mask, seq_ids, items, cache, lengths, padding_side, key_planes)
        total = (seq_v if seq_v is not None else cast(torch.Tensor, ids_v)).shape[0]
        query = hash_rows(target, query_planes, name="target")
        if ids_v is None:
            try:
                index = self._from_seq(
                    query, cast(torch.Tensor, seq_v), valid, None, "right", total, key_planes, offsets)
            except NonFiniteError as err:  # named by the flat value: name its row and position
                raise _jagged.nonfinite_at("seq", err, offsets) from None
        elif cache is not None:
            index = self._from_cache(query, ids_v, cache, valid, None, "right", offsets)
        elif items is not None:
            index = self._from_items(query, ids_v, items, valid, None, "right", total, key_planes, offsets)
        else:
            index = self._from_seq_ids(
                query, cast(torch.Tensor, seq_v), ids_v, valid, None, "right", total, key_planes, offsets)
        found = index >= 0
        flat = _jagged.flat_index(offsets, index)
        if seq_v is not None:
            values = _jagged.take(seq_v, flat)
        else:  # empty slots read id 0, as in the padded form
            ids = _jagged.take(cast(torch.Tensor, ids_v), flat)
            values = _rows(items, ids) if items is not None else cast("SignatureCache", cache).embedding(ids)
        return Retrieved(values * found.unsqueeze(-1).to(values.dtype), index, found)

    def _side_planes(self, name: str, planes: torch.Tensor) -> torch.Tensor:
        """Check planes given for one side: ``(dim, bits)`` or affine ``(dim + 1, bits)``, on the module's device."""
        if not isinstance(planes, torch.Tensor) or planes.dtype not in (torch.float32, torch.float64):
            raise TypeError(f"{name} must be a float32/float64 torch.Tensor, got "
                            f"{getattr(planes, 'dtype', type(planes).__name__)}")
        if planes.dim() != 2 or planes.shape[0] not in (self.dim, self.dim + 1) or planes.shape[1] != self.bits:
            raise ValueError(f"{name} must have shape ({self.dim}, {self.bits}) or ({self.dim + 1}, {self.bits}) "
                             f"(affine), got shape {_shape(tuple(planes.shape))}")
        if planes.device != self.planes.device:
            raise ValueError(f"{name} must be on the device of the module ({self.planes.device}), got {planes.device}")
        return planes.detach()

    def _from_seq(
        self, query: torch.Tensor, seq: torch.Tensor, mask: Optional[torch.Tensor], lengths: Optional[torch.Tensor],
        padding_side: str, length: int, planes: torch.Tensor, offsets: Optional[torch.Tensor] = None,
    ) -> torch.Tensor:
        """Mode ``seq``: hash every valid position of the sequence (the flat values with ``offsets``), then top-K."""
        keys = hash_rows(seq, planes, True, self._valid(mask, lengths, padding_side, length), name="seq")
        index, _ = _ops.topk_hamming(query, keys, self.k, lengths, mask, padding_side, offsets=offsets)
        return index

    def _lookup(
        self, query: torch.Tensor, ids: torch.Tensor, table: torch.Tensor, mask: Optional[torch.Tensor],
        lengths: Optional[torch.Tensor], padding_side: str, offsets: Optional[torch.Tensor] = None,
    ) -> torch.Tensor:
        """The fused top-K of the id modes: ``ids`` into the signature ``table`` (flat ids with ``offsets``)."""
        index, _ = _ops.topk_hamming_lookup(query, ids, table, self.k, lengths, mask, None, padding_side,
                                            offsets=offsets)
        return index

    def _from_cache(
        self, query: torch.Tensor, seq_ids: torch.Tensor, cache: SignatureCache, mask: Optional[torch.Tensor],
        lengths: Optional[torch.Tensor], padding_side: str, offsets: Optional[torch.Tensor] = None,
    ) -> torch.Tensor:
        """Mode ``seq_ids`` + ``cache``: the ids looked up in the cached signature table (nothing hashed)."""
        return self._lookup(query, seq_ids, cache.signatures, mask, lengths, padding_side, offsets)

    def _from_items(
        self, query: torch.Tensor, seq_ids: torch.Tensor, items: torch.Tensor, mask: Optional[torch.Tensor],
        lengths: Optional[torch.Tensor], padding_side: str, length: int, planes: torch.Tensor,
        offsets: Optional[torch.Tensor] = None,
    ) -> torch.Tensor:
        """Mode ``seq_ids`` + ``items``: hash every item row, checking those a valid position refers to."""
        used = self._used_rows(seq_ids, self._valid(mask, lengths, padding_side, length), items.shape[0])
        table = hash_rows(items, planes, True, used, name="items")
        return self._lookup(query, seq_ids, table, mask, lengths, padding_side, offsets)

    def _from_seq_ids(
        self, query: torch.Tensor, seq: torch.Tensor, seq_ids: torch.Tensor, mask: Optional[torch.Tensor],
        lengths: Optional[torch.Tensor], padding_side: str, length: int, planes: torch.Tensor,
        offsets: Optional[torch.Tensor] = None,
    ) -> torch.Tensor:
        """Mode ``seq`` + ``seq_ids``: hash each distinct id of the sequence once."""
        ids, table = self._distinct(seq, seq_ids, self._valid(mask, lengths, padding_side, length), planes)
        return self._lookup(query, ids, table, mask, lengths, padding_side, offsets)

    @staticmethod
    def _valid(
        mask: Optional[torch.Tensor], lengths: Optional[torch.Tensor], padding_side: str, length: int
    ) -> Optional[torch.Tensor]:
        """``(B, L)`` bool valid positions, or ``None`` (all); out-of-range ``lengths`` are left to the top-K op."""
        if lengths is None:
            return mask
        pos = torch.arange(length, device=lengths.device)
        n = lengths.unsqueeze(1).to(torch.int64)  # L - n in int64 (uint8 lengths would wrap)
        return pos >= length - n if padding_side == "left" else pos < n

    @staticmethod
    def _used_rows(ids: torch.Tensor, valid: Optional[torch.Tensor], nrows: int) -> Optional[torch.Tensor]:
        """``(nrows,)`` bool: the rows of ``items`` some valid position refers to (``None``: all positions are valid).

        Out-of-range ids are clamped here; the top-K op reports them.
        """
        if valid is None or nrows == 0:
            return None if valid is None else torch.zeros(0, dtype=torch.bool, device=ids.device)
        where = ids.clamp(0, nrows - 1).reshape(-1).to(torch.int64)
        used = torch.zeros(nrows, dtype=torch.uint8, device=ids.device)
        return used.scatter_reduce(0, where, valid.reshape(-1).to(torch.uint8), "amax").bool()

    def _distinct(
        self, seq: torch.Tensor, seq_ids: torch.Tensor, valid: Optional[torch.Tensor], planes: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``(inverse, table)``: signatures of each distinct id and where each id is.

        Each id is hashed from its first valid occurrence (its first one if it
        occurs at invalid positions only, which are not checked for NaN / inf).
        ``seq`` ``(B, L, d)`` with ``seq_ids`` ``(B, L)``, or flat ``(T, d)`` with ``(T,)``.
        """
        length, numel = seq_ids.shape[-1], seq_ids.numel()
        distinct, inverse = torch.unique(seq_ids, return_inverse=True)
        flat = torch.arange(numel, device=seq_ids.device)
        if valid is not None:
            flat = flat + numel * (~valid).reshape(-1)  # invalid occurrences rank after every valid one
        first = torch.full_like(distinct, 2 * numel, dtype=torch.int64)
        first = first.scatter_reduce(0, inverse.reshape(-1), flat, "amin")
        used = None if valid is None else first < numel
        first = first % numel
        rows = seq[first] if seq_ids.dim() == 1 else seq[first // length, first % length]
        return inverse, hash_rows(rows, planes, True, used)

    def _check_sources(
        self,
        target: torch.Tensor,
        seq: Optional[torch.Tensor],
        seq_ids: Optional[torch.Tensor],
        items: Optional[torch.Tensor],
        cache: Optional[SignatureCache],
        key_planes: Optional[torch.Tensor],
    ) -> tuple[int, torch.device]:
        """Check ``target``, which of ``seq`` / ``items`` / ``cache`` is given, and the last two; ``(B, device)``."""
        d = self.dim
        _floats("target", target, 2, f"(B, {d})")
        if target.shape[1] != d:
            raise ValueError(f"target must have shape (B, {d}), got shape {_shape(tuple(target.shape))}")
        if target.device != self.planes.device:
            raise ValueError(f"target must be on the device of the module ({self.planes.device}), got {target.device}")
        batch, device = target.shape[0], target.device
        if seq is None and items is None and cache is None:
            raise ValueError("pass seq (the behaviour embeddings), or seq_ids with items or a cache")
        if items is not None and (seq is not None or cache is not None):
            raise ValueError("pass items alone, not together with seq or cache")
        if seq_ids is None and (items is not None or cache is not None):
            raise ValueError("items and cache need seq_ids: the behaviours are looked up by item id")
        if cache is not None:
            planes = self.planes if key_planes is None else key_planes
            if not all(hasattr(cache, name) for name in ("signatures", "planes", "embedding", "check")):
                raise TypeError(f"cache must be a SignatureCache, got {type(cache).__name__}")
            if cache.planes.shape != planes.shape:
                affine = " (affine: hash_space='attention')" if is_affine(planes, d) else ""
                raise ValueError(
                    f"cache must be built with planes of shape {_shape(tuple(planes.shape))}{affine} like this "
                    f"module's, got {_shape(tuple(cache.planes.shape))}"
                )
            if cache.signatures.device != device:
                raise ValueError(
                    f"cache signatures are on {cache.signatures.device}, target on {device}: after moving the "
                    "embedding, call cache.refresh() (it rehashes on the embedding's device)"
                )
            cache.check(planes)
        if items is not None:
            _floats("items", items, 2, f"(N, {d})", device)
            if items.shape[1] != d:
                raise ValueError(f"items must have shape (N, {d}), got shape {_shape(tuple(items.shape))}")
        return batch, device

    def _check_jagged(
        self,
        target: torch.Tensor,
        seq: Optional[torch.Tensor],
        mask: Optional[torch.Tensor],
        seq_ids: Optional[torch.Tensor],
        items: Optional[torch.Tensor],
        cache: Optional[SignatureCache],
        lengths: Optional[torch.Tensor],
        padding_side: str,
        key_planes: Optional[torch.Tensor],
    ) -> tuple[Optional[torch.Tensor], Optional[torch.Tensor], torch.Tensor, Optional[torch.Tensor]]:
        """Check the arguments of :meth:`forward` with a jagged history: ``(seq values, ids values, offsets, mask)``.

        The values are flat, ``(T, d)`` and ``(T,)``; the mask flat ``(T,)`` bool or ``None``.
        """
        batch, device = self._check_sources(target, seq, seq_ids, items, cache, key_planes)
        ragged.check_offsets_alone(lengths, padding_side)
        for name, t in (("seq", seq), ("seq_ids", seq_ids)):
            if t is not None and not _jagged.is_jagged(t):
                raise ValueError(f"{name} must be a jagged tensor like the other of seq and seq_ids, got a dense "
                                 f"tensor of shape {_shape(tuple(t.shape))}")
        seq_v = ids_v = None
        if seq is not None:
            seq_v, offsets = _jagged.floats("seq", seq, batch, self.dim, device)
        if seq_ids is not None:
            if seq_v is not None:
                ids_v = _jagged.ints("seq_ids", seq_ids, offsets, seq_v.shape[0], "seq")
            else:
                ids_v, offsets = _jagged.parts("seq_ids", seq_ids)
                if not _ops.is_integer(ids_v.dtype):
                    raise DTypeError(f"seq_ids must have an integer dtype, got {ids_v.dtype}")
                if ids_v.dim() != 1 or offsets.shape[0] != batch + 1:
                    raise ValueError(f"seq_ids must have shape ({batch}, j) (a jagged tensor), got "
                                     f"{offsets.shape[0] - 1} rows, values of shape {_shape(tuple(ids_v.shape))}")
                if ids_v.device != device:
                    raise ValueError(f"seq_ids must be on the device of target ({device}), got {ids_v.device}")
        total = (seq_v if seq_v is not None else cast(torch.Tensor, ids_v)).shape[0]
        valid = _jagged.flat_mask(mask, offsets, total, "seq" if seq is not None else "seq_ids")
        return seq_v, ids_v, offsets, valid

    def _check(
        self,
        target: torch.Tensor,
        seq: Optional[torch.Tensor],
        mask: Optional[torch.Tensor],
        seq_ids: Optional[torch.Tensor],
        items: Optional[torch.Tensor],
        cache: Optional[SignatureCache],
        lengths: Optional[torch.Tensor] = None,
        padding_side: str = "right",
        key_planes: Optional[torch.Tensor] = None,
    ) -> int:
        """Check the arguments of :meth:`forward`; return the sequence length ``L``."""
        d = self.dim
        batch, device = self._check_sources(target, seq, seq_ids, items, cache, key_planes)
        length = -1
        if seq is not None:
            _floats("seq", seq, 3, f"(B, L, {d})", device)
            if seq.shape[0] != batch or seq.shape[2] != d:
                raise ValueError(f"seq must have shape ({batch}, L, {d}), got shape {_shape(tuple(seq.shape))}")
            length = seq.shape[1]
        if seq_ids is not None:
            if not isinstance(seq_ids, torch.Tensor):
                raise TypeError(f"seq_ids must be a torch.Tensor, got {type(seq_ids).__name__}")
            if not _ops.is_integer(seq_ids.dtype):
                raise DTypeError(f"seq_ids must have an integer dtype, got {seq_ids.dtype}")
            if seq_ids.dim() != 2 or seq_ids.shape[0] != batch or length not in (-1, seq_ids.shape[1]):
                want = f"({batch}, L)" if length < 0 else _shape((batch, length))
                raise ValueError(f"seq_ids must have shape {want}, got shape {_shape(tuple(seq_ids.shape))}")
            if seq_ids.device != device:
                raise ValueError(f"seq_ids must be on the device of target ({device}), got {seq_ids.device}")
            length = seq_ids.shape[1]
        if mask is not None:
            _bool_mask(mask, (batch, length), device)
        check_padding_side(padding_side)
        if lengths is not None:
            if mask is not None:
                raise ValueError("pass either lengths or mask, not both")
            if not isinstance(lengths, torch.Tensor):
                raise TypeError(f"lengths must be a torch.Tensor, got {type(lengths).__name__}")
            if not _ops.is_integer(lengths.dtype) or tuple(lengths.shape) != (batch,):
                raise ValueError(
                    f"lengths must be an integer tensor of shape {_shape((batch,))}, "
                    f"got {lengths.dtype} of shape {_shape(tuple(lengths.shape))}"
                )
            if lengths.device != device:
                raise ValueError(f"lengths must be on the device of target ({device}), got {lengths.device}")
        return length


def _rows(items: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """``items[ids]`` ``(*ids.shape, d)`` through ``index_select`` (several times faster than advanced indexing)."""
    return items.index_select(0, ids.reshape(-1)).view(*ids.shape, items.shape[1])
