"""ETA building blocks: retrieval, a signature cache, target attention."""

from __future__ import annotations

import math
import weakref
from typing import Any, Callable, NamedTuple, Optional, Union, cast

import numpy as np
import torch
from torch import nn
from torch.utils.hooks import RemovableHandle

from .._validate import DTypeError, _as_int, _shape, check_k, check_padding_side
from ..simhash import SimHasher, hyperplanes
from . import _ops
from .time import TimeEncoding, gather_positions

__all__ = ["Retrieved", "ETARetriever", "SignatureCache", "TargetAttention", "ETAAttention"]


def _floats(name: str, t: object, ndim: int, what: str, device: Optional[torch.device] = None) -> torch.Tensor:
    """Check a float tensor argument of a module: type, dtype, rank, device."""
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if not t.dtype.is_floating_point:
        raise DTypeError(f"{name} must have a floating-point dtype, got {t.dtype}")
    if t.dim() != ndim:
        raise ValueError(f"{name} must have shape {what}, got shape {_shape(tuple(t.shape))}")
    if device is not None and t.device != device:
        raise ValueError(f"{name} must be on the device of target ({device}), got {t.device}")
    return t


def _bool_mask(mask: object, shape: tuple[int, ...], device: torch.device) -> torch.Tensor:
    """Check a mask argument (bool, or numeric with non-zero = valid); return it as bool."""
    if not isinstance(mask, torch.Tensor):
        raise TypeError(f"mask must be a torch.Tensor, got {type(mask).__name__}")
    if mask.dtype.is_complex:
        raise DTypeError(
            f"mask must have dtype torch.bool or a real numeric dtype (non-zero = valid), got {mask.dtype}"
        )
    if tuple(mask.shape) != shape:
        raise ValueError(f"mask must have shape {_shape(shape)}, got shape {_shape(tuple(mask.shape))}")
    if mask.device != device:
        raise ValueError(f"mask must be on the device of target ({device}), got {mask.device}")
    return _ops.bool_mask(mask)  # type: ignore[return-value]


def _planes(planes: object) -> torch.Tensor:
    """Check existing hyperplanes (a tensor or an array); return them as a tensor of the module's own."""
    if not isinstance(planes, torch.Tensor):
        try:  # a copy: NumPy planes may be read-only (SimHasher.planes), which torch cannot view
            planes = torch.from_numpy(np.array(planes))
        except (TypeError, ValueError, RuntimeError):
            raise TypeError(f"planes must be a torch.Tensor or an array, got {type(planes).__name__}") from None
    if planes.dtype not in (torch.float32, torch.float64):
        raise DTypeError(f"planes must have dtype torch.float32 or torch.float64, got {planes.dtype}")
    if planes.dim() != 2 or planes.shape[0] < 1 or not 1 <= planes.shape[1] <= 64 * 16:
        raise ValueError(
            "planes must have shape (dim, bits) with dim >= 1 and bits in 1..1024, "
            f"got shape {_shape(tuple(planes.shape))}"
        )
    if not bool(torch.isfinite(planes).all()):
        raise ValueError("planes must be finite, got a NaN or an infinity")
    return planes.detach().clone()


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


class ETARetriever(nn.Module):
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
    ) -> Retrieved:
        """Retrieve the ``k`` behaviours nearest to each target.

        Parameters
        ----------
        target : torch.Tensor
            ``(B, d)`` float32/float64 target embeddings.
        seq : torch.Tensor, optional
            ``(B, L, d)`` behaviour embeddings, oldest to newest. Required
            unless ``items`` or ``cache`` is given.
        mask : torch.Tensor, optional
            ``(B, L)`` valid (non-padding) positions: bool, or numeric with
            non-zero = valid (the attention-mask convention).
        seq_ids : torch.Tensor, optional
            ``(B, L)`` integer item ids of the behaviours; needed by ``items``
            and ``cache``.
        items : torch.Tensor, optional
            ``(N, d)`` float32/float64 embeddings of every id (instead of ``seq``).
        cache : SignatureCache, optional
            Signatures of every id, built with the same planes.
        lengths : torch.Tensor, optional
            ``(B,)`` integer numbers of valid positions per row, instead of ``mask``.
        padding_side : {"right", "left"}, default "right"
            Where the padding of rows given by ``lengths`` lies: valid
            positions ``[0, lengths[b])`` (``"right"``) or the last
            ``lengths[b]`` (``"left"``, front-padded sequences).

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
            padded positions are never used and not checked.
        """
        length = self._check(target, seq, mask, seq_ids, items, cache, lengths, padding_side)
        mask = None if mask is None else _ops.bool_mask(mask)
        query = _ops.pack_signatures(target, self.planes)
        if seq_ids is None:
            keys = _ops.pack_signatures(seq, self.planes, True, self._valid(mask, lengths, padding_side, length))
            index, _ = _ops.topk_hamming(query, keys, self.k, lengths, mask, padding_side)
        else:
            if cache is not None:
                ids, table = seq_ids, cache.signatures
            elif items is not None:
                used = self._used_rows(seq_ids, self._valid(mask, lengths, padding_side, length), items.shape[0])
                ids, table = seq_ids, _ops.pack_signatures(items, self.planes, True, used)
            else:
                ids, table = self._distinct(seq, seq_ids, self._valid(mask, lengths, padding_side, length))
            index, _ = _ops.topk_hamming_lookup(query, ids, table, self.k, lengths, mask, None, padding_side)
        valid = index >= 0
        safe = index.clamp(min=0)
        if length == 0:  # nothing to gather from: every slot is empty
            values = target.new_zeros(target.shape[0], self.k, self.dim)
        elif seq is not None:
            values = seq.gather(1, safe.unsqueeze(-1).expand(-1, -1, seq.shape[-1]))
        else:  # empty slots read id 0, not the id at position 0 (possibly a masked padding id)
            ids = torch.where(valid, seq_ids.gather(1, safe), 0)
            values = items[ids] if items is not None else cache.embedding(ids)
        return Retrieved(values * valid.unsqueeze(-1).to(values.dtype), index, valid)

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
        self, seq: torch.Tensor, seq_ids: torch.Tensor, valid: Optional[torch.Tensor]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``(inverse, table)``: signatures of each distinct id and where each id is.

        Each id is hashed from its first valid occurrence (its first one if it
        occurs at invalid positions only, which are not checked for NaN / inf).
        """
        length, numel = seq_ids.shape[1], seq_ids.numel()
        distinct, inverse = torch.unique(seq_ids, return_inverse=True)
        flat = torch.arange(numel, device=seq_ids.device)
        if valid is not None:
            flat = flat + numel * (~valid).reshape(-1)  # invalid occurrences rank after every valid one
        first = torch.full_like(distinct, 2 * numel, dtype=torch.int64)
        first = first.scatter_reduce(0, inverse.reshape(-1), flat, "amin")
        used = None if valid is None else first < numel
        first = first % numel
        return inverse, _ops.pack_signatures(seq[first // length, first % length], self.planes, True, used)

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
    ) -> int:
        """Check the arguments of :meth:`forward`; return the sequence length ``L``."""
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
            if not isinstance(cache, SignatureCache):
                raise TypeError(f"cache must be a SignatureCache, got {type(cache).__name__}")
            if cache.planes.shape != self.planes.shape:
                raise ValueError(
                    f"cache must be built with planes of shape {_shape(tuple(self.planes.shape))} like this "
                    f"module's, got {_shape(tuple(cache.planes.shape))}"
                )
            if cache.signatures.device != device:
                raise ValueError(
                    f"cache signatures are on {cache.signatures.device}, target on {device}: after moving the "
                    "embedding, call cache.refresh() (it rehashes on the embedding's device)"
                )
            cache.check(self.planes)
        if items is not None:
            _floats("items", items, 2, f"(N, {d})", device)
            if items.shape[1] != d:
                raise ValueError(f"items must have shape (N, {d}), got shape {_shape(tuple(items.shape))}")
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


def _version(weight: torch.Tensor) -> int:
    """The in-place version counter of ``weight`` (bumped by every in-place write, optimizer steps included)."""
    try:
        return int(weight._version)
    except RuntimeError:  # inference tensors keep no counter: they cannot change in place either
        return 0


def _check_cache_impl(weight: torch.Tensor, stamp: torch.Tensor, hashed: torch.Tensor, planes: torch.Tensor) -> None:
    if hashed.shape != planes.shape or not torch.equal(planes.detach().to(hashed.device), hashed):
        raise ValueError(
            "cache holds signatures hashed with other planes than this module's (built with another "
            "hasher or seed, or the module's planes were loaded or changed since): build it with this "
            "module, or call cache.refresh()"
        )
    now, then = _version(weight), int(stamp)
    if now != then:
        raise ValueError(
            "cache is stale: embedding.weight changed since the cache last hashed it (in-place version "
            f"{now}, hashed at {then}); call cache.refresh(rows) after changing rows, or cache.attach(optimizer) "
            "to refresh after every optimizer step"
        )
    stamp.fill_(then)  # the op is declared to write stamp so that compiled graphs keep it: write what was there


def _check_cache_fake(weight: torch.Tensor, stamp: torch.Tensor, hashed: torch.Tensor, planes: torch.Tensor) -> None:
    return None


# Registered once per process (a reload finds it in the dispatcher). It "mutates" the CPU stamp so that
# torch.compile keeps the check in the graph (a side-effect-free op without outputs would be dropped) and
# runs it on every call, reading the live version counter of the weight.
_check_cache: Callable[..., None]
if hasattr(torch.ops.etaretrieval, "check_signature_cache"):
    _check_cache = torch.ops.etaretrieval.check_signature_cache
else:
    _check_cache = torch.library.custom_op(
        "etaretrieval::check_signature_cache", _check_cache_impl, mutates_args=("stamp",)
    )
    _check_cache.register_fake(_check_cache_fake)


class SignatureCache(nn.Module):
    """Signatures of every row of an :class:`torch.nn.Embedding`, kept in step with it.

    The serving path of :class:`ETARetriever` looks signatures up here by item
    id instead of hashing the sequence. After the embedding changes, call
    :meth:`refresh` (all rows, or only those that changed), or let
    :meth:`attach` do it after every optimizer step. A retriever refuses a
    stale cache (``ValueError``), eagerly and under ``torch.compile``: the
    cache records the in-place version counter of ``embedding.weight`` when it
    hashes, and every lookup compares it with the live counter.

    The cache is an ``nn.Module`` whose buffers are the table
    (:attr:`signatures`) and the planes that made it (:attr:`planes`): make
    it a submodule of the model (``model.cache = SignatureCache(...)``) and
    the model's ``state_dict`` saves and loads the table, ``.to(device)``
    moves it and ``torch.export`` takes it as a buffer of the exported
    program. The embedding and the hasher are referenced, not registered as
    submodules, so their weights are not saved twice.

    Parameters
    ----------
    embedding : torch.nn.Embedding
        The item table (held by reference).
    hasher : ETARetriever or etaretrieval.SimHasher
        Where the hyperplanes come from; use the retriever that will query the
        cache (or a ``SimHasher`` with the same ``dim``, ``bits`` and ``seed``).

    Attributes
    ----------
    signatures : torch.Tensor
        ``(N, W)`` int64 buffer, row ``i`` the signature of ``embedding.weight[i]``.
    planes : torch.Tensor
        ``(dim, bits)`` buffer: the planes :attr:`signatures` were hashed with.

    Examples
    --------
    >>> import torch
    >>> from etaretrieval.torch import ETARetriever, SignatureCache
    >>> emb = torch.nn.Embedding(100, 16)
    >>> retriever = ETARetriever(16, bits=64, k=8)
    >>> cache = SignatureCache(emb, retriever)
    >>> ids = torch.randint(0, 100, (4, 30))
    >>> served = retriever(emb(ids[:, 0]), seq_ids=ids, cache=cache)
    >>> fresh = retriever(emb(ids[:, 0]), emb(ids))
    >>> torch.equal(served.index, fresh.index)
    True
    >>> sorted(cache.state_dict())
    ['planes', 'signatures']
    """

    signatures: torch.Tensor
    planes: torch.Tensor
    embedding: nn.Embedding
    hasher: Union[ETARetriever, SimHasher]

    def __init__(self, embedding: nn.Embedding, hasher: Union[ETARetriever, SimHasher]) -> None:
        super().__init__()
        if not isinstance(embedding, nn.Embedding):
            raise TypeError(f"embedding must be a torch.nn.Embedding, got {type(embedding).__name__}")
        if not isinstance(hasher, (ETARetriever, SimHasher)):
            raise TypeError(f"hasher must be an ETARetriever or an etaretrieval.SimHasher, got {type(hasher).__name__}")
        # Referenced, not registered: the model owns them (and saves their weights once).
        object.__setattr__(self, "embedding", embedding)
        object.__setattr__(self, "hasher", hasher)
        fixed = torch.tensor(hasher.planes) if isinstance(hasher, SimHasher) else None
        object.__setattr__(self, "_fixed_planes", fixed)
        planes = self._hasher_planes()
        if planes.shape[0] != embedding.embedding_dim:
            raise ValueError(
                f"hasher must have dim = {embedding.embedding_dim} (the embedding's), got dim {planes.shape[0]}"
            )
        self._seen: Optional[torch.Tensor] = None  # weights last hashed, kept once attach() is used
        self._stamp = torch.zeros((), dtype=torch.int64)  # weight version at the last hash (CPU, not a buffer)
        self._hashed_weight: Optional[torch.Tensor] = None  # the weight tensor hashed (replacing it makes stale)
        self._adopt_load = False  # state_dict loaded: take the weights loaded with it as hashed
        self.register_buffer("planes", planes.detach().clone())
        self.register_buffer("signatures", self._pack(embedding.weight))
        self._mark_fresh()
        embedding.register_load_state_dict_post_hook(_AdoptLoadedWeights(self))

    def embedding_changed(self) -> bool:
        """Whether ``embedding.weight`` changed (in place, or was replaced) since the cache last hashed it.

        Returns
        -------
        bool
            True until :meth:`refresh` (or the hook of :meth:`attach`) runs;
            a retriever refuses the cache meanwhile. Writes through
            ``weight.data`` escape the version counter and are not seen.
        """
        weight = self.embedding.weight
        return self._hashed_weight is not weight or _version(weight) != int(self._stamp)

    def _hasher_planes(self) -> torch.Tensor:
        return cast(torch.Tensor, self.hasher.planes if self._fixed_planes is None else self._fixed_planes)

    def _mark_fresh(self) -> None:
        weight = self.embedding.weight
        self._stamp.fill_(_version(weight))
        object.__setattr__(self, "_hashed_weight", weight)  # a reference: never registered as a parameter here
        self._adopt_load = False

    def _pack(self, rows: torch.Tensor) -> torch.Tensor:
        return cast(torch.Tensor, _ops.pack_signatures(rows.detach(), self._hasher_planes().to(rows.device)))

    def check(self, planes: torch.Tensor) -> None:
        """Raise unless the cache is fresh and hashed with ``planes`` (what a retriever calls).

        Under ``torch.compile`` the check is an operator of the graph, run on
        every call. Under ``torch.export`` it is left out: the exported
        program reads the table as it was at export time (a version counter
        does not survive saving); see :doc:`/user_guide/scaling`.

        Parameters
        ----------
        planes : torch.Tensor
            ``(dim, bits)`` hyperplanes of the querying module.

        Raises
        ------
        ValueError
            Other planes, or weights changed since the last refresh.
        """
        if torch.compiler.is_exporting():
            return
        if not torch.compiler.is_compiling():
            self._adopt_load = False  # used since loading: later loads of the embedding alone make it stale
            if self._hashed_weight is not self.embedding.weight:
                raise ValueError(
                    "cache is stale: embedding.weight was replaced by another tensor since the cache last "
                    "hashed it; call cache.refresh()"
                )
        _check_cache(self.embedding.weight, self._stamp, self.planes, planes)

    def hashed_with(self, planes: torch.Tensor) -> bool:
        """Whether :attr:`signatures` were hashed with ``planes`` (e.g. a retriever's).

        Parameters
        ----------
        planes : torch.Tensor
            ``(dim, bits)`` hyperplanes, on any device.

        Returns
        -------
        bool
            False after :attr:`hasher`'s planes changed (``load_state_dict``)
            until :meth:`refresh` rehashes every row.
        """
        return planes.shape == self.planes.shape and torch.equal(planes.detach().to(self.planes.device), self.planes)

    def refresh(self, rows: Any = None) -> None:
        """Rehash every row (``rows=None``) or only the given row ids.

        Parameters
        ----------
        rows : torch.Tensor or array_like of int, optional
            Ids of the rows that changed, any shape; duplicates are fine.
            After a row refresh the cache counts as fresh: the rows not
            given are taken to be unchanged.

        Raises
        ------
        IndexError
            A row id outside ``[0, N)``.

        Notes
        -----
        If the hasher's planes changed since the last full refresh (e.g. the
        retriever's ``load_state_dict``), every row is rehashed.
        """
        weight = self.embedding.weight.detach()
        if rows is None:
            planes = self._hasher_planes().detach()
            signatures = self._pack(weight)
            with torch.no_grad():  # in place where possible: holders of the buffer (an exported program) see it
                if self.planes.shape == planes.shape and self.planes.device == planes.device:
                    self.planes.copy_(planes)
                else:
                    self.planes = planes.clone()
                if self.signatures.shape == signatures.shape and self.signatures.device == signatures.device:
                    self.signatures.copy_(signatures)
                else:
                    self.signatures = signatures
            if self._seen is not None:
                self._seen = weight.clone()
            self._mark_fresh()
            return
        r = torch.as_tensor(rows, device=weight.device)
        if r.numel() == 0:  # nothing changed (an empty list is float to torch)
            self._mark_fresh()
            return
        if not _ops.is_integer(r.dtype):
            raise DTypeError(f"rows must have an integer dtype, got {r.dtype}")
        r = r.reshape(-1).to(torch.int64)
        n = weight.shape[0]
        out = (r < 0) | (r >= n)
        if bool(out.any()):
            raise IndexError(f"rows must lie in [0, {n}), got row {int(r[out][0])}")
        if not self.hashed_with(self._hasher_planes()) or self.signatures.shape[0] != n:
            self.refresh()  # new planes (or a resized table): every row changes
            return
        r = torch.unique(r)
        with torch.no_grad():
            self.signatures[r] = self._pack(weight[r])
        if self._seen is not None:
            self._seen[r] = weight[r]
        self._mark_fresh()

    def attach(self, optimizer: torch.optim.Optimizer) -> RemovableHandle:
        """Keep the cache fresh: after every ``optimizer.step()``, rehash the rows that changed.

        Works with any optimizer (momentum, Adam's moments and weight decay move
        rows the batch did not touch), dense or sparse gradients, and under
        ``DistributedDataParallel`` (the hook runs after the step, on the
        weights that every rank shares): the cache keeps a copy of the weights
        it last hashed (as much memory as the embedding) and, after each step,
        rehashes exactly the rows that differ from it.

        Parameters
        ----------
        optimizer : torch.optim.Optimizer
            An optimizer that updates ``embedding.weight``.

        Returns
        -------
        torch.utils.hooks.RemovableHandle
            ``handle.remove()`` detaches the cache again.
        """
        weight = self.embedding.weight
        if not any(p is weight for group in optimizer.param_groups for p in group["params"]):
            raise ValueError("optimizer must update embedding.weight to keep the cache fresh")
        self._seen = weight.detach().clone()
        self.refresh()
        return optimizer.register_step_post_hook(lambda opt, args, kwargs: self._refresh_changed())

    def _refresh_changed(self) -> None:
        weight = self.embedding.weight.detach()
        assert self._seen is not None
        if (self._seen.shape, self._seen.device, self._seen.dtype) != (weight.shape, weight.device, weight.dtype):
            self.refresh()  # the embedding was resized, moved or converted: rehash every row
            return
        changed = (weight != self._seen).any(dim=1).nonzero().squeeze(1)
        self.refresh(changed)

    def _load_from_state_dict(
        self,
        state_dict: dict[str, Any],
        prefix: str,
        local_metadata: dict[str, Any],
        strict: bool,
        missing_keys: list[str],
        unexpected_keys: list[str],
        error_msgs: list[str],
    ) -> None:
        """Load the table; refuse one of another shape with a message naming the embedding and the planes.

        A ``state_dict`` without the cache's keys (saved before caches were
        saved with the model) loads nothing here and is no error: if it
        changed the embedding, the cache is stale until :meth:`refresh`.
        """
        if prefix + "signatures" not in state_dict and prefix + "planes" not in state_dict:
            return
        want = {
            "signatures": (self.embedding.num_embeddings, (self._hasher_planes().shape[1] + 63) // 64),
            "planes": tuple(self._hasher_planes().shape),
        }
        bad = False
        for name, shape in want.items():
            got = state_dict.get(prefix + name)
            if isinstance(got, torch.Tensor) and tuple(got.shape) != shape:
                error_msgs.append(
                    f"{prefix}{name} has shape {_shape(tuple(got.shape))}, but this SignatureCache needs "
                    f"{_shape(shape)} (embedding {_shape(tuple(self.embedding.weight.shape))}, planes "
                    f"{_shape(tuple(self._hasher_planes().shape))}): the table was made for another embedding "
                    "shape or other planes"
                )
                bad = True
        if bad:
            return
        super()._load_from_state_dict(
            state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
        )
        if prefix + "signatures" in state_dict:  # the table saved with the weights it was hashed from
            self._mark_fresh()
            self._adopt_load = True
            if self._seen is not None:
                self._seen = self.embedding.weight.detach().clone()

    def __getstate__(self) -> dict[str, Any]:
        """Copies (``copy.deepcopy``, pickling) are stale until refreshed: version counters do not travel."""
        state = self.__dict__.copy()
        state["_stamp"] = torch.full((), -1, dtype=torch.int64)  # no weight has version -1
        return state

    def __len__(self) -> int:
        return self.signatures.shape[0]

    def extra_repr(self) -> str:
        return f"rows={len(self)}, bits={self.planes.shape[1]}"


class _AdoptLoadedWeights:
    """Load hook of the embedding: weights loaded after the cache's table (same ``load_state_dict``) are its pair.

    Holds the cache weakly (a dropped cache is not kept alive by its embedding); pickles it strongly.
    """

    def __init__(self, cache: SignatureCache) -> None:
        self.cache: Callable[[], Optional[SignatureCache]] = weakref.ref(cache)

    def __getstate__(self) -> dict[str, Any]:
        return {"cache": self.cache()}

    def __setstate__(self, state: dict[str, Any]) -> None:
        cache = state["cache"]
        self.cache = (lambda: None) if cache is None else weakref.ref(cache)

    def __call__(self, module: nn.Module, incompatible_keys: Any) -> None:
        cache = self.cache()
        if cache is not None and cache._adopt_load:
            cache._mark_fresh()
            cache._adopt_load = True  # the same weights loaded again (a shared key) are still the saved pair
            if cache._seen is not None:
                cache._seen = cache.embedding.weight.detach().clone()


class TargetAttention(nn.Module):
    """Multi-head attention of one target over a set of items -> one interest vector.

    ``softmax(q k^T / sqrt(d / heads))`` per head with the query from the
    target and keys/values from the items, masked positions excluded; a row
    with no valid item gets zero attention weights (output = the output
    projection's bias), never NaN. Over a whole behaviour sequence this is the
    *full attention* interest block; it takes the arguments of every interest
    block (see :mod:`etaretrieval.torch.baselines`) and ignores categories.

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
            ``(B, T, d)`` keys and values (a behaviour sequence: oldest to newest).
        mask : torch.Tensor, optional
            ``(B, T)`` valid items: bool, or numeric with non-zero = valid.
        seq_time, target_time : torch.Tensor, optional
            ``(B, T)`` and ``(B,)`` integer timestamps of the items and of the
            request; used by ``time`` only.
        seq_cat, target_cat : torch.Tensor, optional
            Ignored (the common interest-block arguments).

        Returns
        -------
        torch.Tensor
            ``(B, d)``.
        """
        d = self.query.in_features
        _floats("target", target, 2, f"(B, {d})")
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

    def attend(self, target: torch.Tensor, items: torch.Tensor, mask: Optional[torch.Tensor]) -> torch.Tensor:
        """The attention itself on checked arguments, without time information."""
        batch, length, d = items.shape
        h = self.heads
        q = self.query(target).view(batch, h, d // h)
        k = self.key(items).view(batch, length, h, d // h)
        v = self.value(items).view(batch, length, h, d // h)
        scores = torch.einsum("bhe,bthe->bht", q, k) / math.sqrt(d // h)
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
    ``O(L * d)`` attention over the whole sequence. Retrieval always runs on
    the item embeddings; time information (``time``) is added to the
    retrieved behaviours only, as in the paper.

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
    ) -> None:
        super().__init__()
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
    def from_planes(cls, planes: Any, k: int, heads: int) -> ETAAttention:
        """An ETA block whose retriever hashes with existing hyperplanes (see :meth:`ETARetriever.from_planes`).

        Parameters
        ----------
        planes : torch.Tensor or array_like
            ``(dim, bits)`` float32/float64 hyperplanes.
        k : int
            Behaviours attended to per target.
        heads : int
            Number of attention heads, dividing ``dim``.

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
        module = cls(retriever.dim, retriever.bits, k, heads)
        module.retriever = retriever
        return module

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
        :meth:`ETARetriever.forward`; ``seq_time`` ``(B, L)`` and
        ``target_time`` ``(B,)`` integer timestamps feed ``time``;
        ``seq_cat`` and ``target_cat`` are ignored (the common interest-block
        arguments).
        """
        if seq is not None and seq.requires_grad:
            # retrieve on detached embeddings (autograd would otherwise run a costly backward of the
            # non-differentiable hashing op) and gather the values from the differentiable ones
            _, index, valid = self.retriever(
                target, seq.detach(), mask, seq_ids=seq_ids, lengths=lengths, padding_side=padding_side
            )
            values = gather_positions(seq, index) * valid.unsqueeze(-1).to(seq.dtype)
        else:
            values, index, valid = self.retriever(
                target, seq, mask, seq_ids=seq_ids, items=items, cache=cache, lengths=lengths, padding_side=padding_side
            )
        if self.candidates is not None:  # keep the k most recent candidates, newest first
            newest = torch.where(valid, index, -1).topk(min(self.k, index.shape[1]), dim=1).indices
            values, index, valid = gather_positions(values, newest), index.gather(1, newest), valid.gather(1, newest)
        if self.time is not None:
            length = seq.shape[1] if seq is not None else seq_ids.shape[1]  # type: ignore[union-attr]
            valid_seq = _valid_positions(mask, lengths, padding_side, index.shape[0], length, index.device)
            interval = self.time.intervals(valid_seq, seq_time, target_time, shape=(index.shape[0], length))
            interval = gather_positions(interval, index)
            values = values + self.time.embed(interval).to(values.dtype) * valid.unsqueeze(-1).to(values.dtype)
        return self.attention.attend(target, values, valid)


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
        return _ops.bool_mask(mask).expand(batch, length)
    if lengths is None:
        return None
    col = torch.arange(length, device=device)
    n = lengths.to(device=device, dtype=torch.int64).unsqueeze(1)
    return col >= length - n if check_padding_side(padding_side) == "left" else col < n
