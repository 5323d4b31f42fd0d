"""A signature table of an embedding, kept fresh as training updates it (the serving path of ETA)."""

from __future__ import annotations

import weakref
from typing import Any, Callable, Optional, Protocol, Union, cast

import torch
from torch import nn
from torch.utils.hooks import RemovableHandle

from .._validate import DTypeError, _shape
from ..simhash import SimHasher
from . import _jagged, _ops
from ._buffers import FixedDtypeBuffers
from ._planes import hash_rows

__all__ = ["SignatureCache"]


class PlaneSource(Protocol):
    """What a cache hashes with: a module whose ``key_planes()`` are the planes of its behaviour side.

    :class:`~etaretrieval.torch.ETARetriever` (its :attr:`planes`) and
    :class:`~etaretrieval.torch.ETAAttention` (its retriever's planes, or,
    with ``hash_space="attention"``, the affine planes with the attention's
    key projection folded in) are plane sources.
    """

    def key_planes(self) -> torch.Tensor: ...


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
            "hasher or seed, or the module's planes were loaded or changed since, as an attention-space "
            "block's do whenever its key projection is updated): build it with this module, or call "
            "cache.refresh() (cache.attach(optimizer) does after every step)"
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


class SignatureCache(FixedDtypeBuffers):
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
    hasher : ETARetriever, ETAAttention or etaretrieval.SimHasher
        Where the hyperplanes come from; use the retriever (or the ETA block)
        that will query the cache, or a ``SimHasher`` with the same ``dim``,
        ``bits`` and ``seed``. An ``ETAAttention`` with
        ``hash_space="attention"`` gives affine planes ``(dim + 1, bits)``
        with its key projection folded in: they change as the attention
        trains, so the cache is stale (refused) after such a change until
        :meth:`refresh` (or :meth:`attach`'s hook) rehashes.

    Attributes
    ----------
    signatures : torch.Tensor
        ``(N, W)`` int64 buffer, row ``i`` the signature of ``embedding.weight[i]``.
    planes : torch.Tensor
        ``(dim, bits)`` buffer (``(dim + 1, bits)``, affine, for an attention-space
        hasher): the planes :attr:`signatures` were hashed with.

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
    hasher: Union[PlaneSource, SimHasher]

    _fixed_dtype = ("planes",)

    def __init__(self, embedding: nn.Embedding, hasher: Union[PlaneSource, SimHasher]) -> None:
        super().__init__()
        if not isinstance(embedding, nn.Embedding):
            raise TypeError(f"embedding must be a torch.nn.Embedding, got {type(embedding).__name__}")
        if not isinstance(hasher, SimHasher) and not callable(getattr(hasher, "key_planes", None)):
            raise TypeError("hasher must be an ETARetriever or an etaretrieval.SimHasher (or an ETAAttention), "
                            f"got {type(hasher).__name__}")
        # Referenced, not registered: the model owns them (and saves their weights once).
        object.__setattr__(self, "embedding", embedding)
        object.__setattr__(self, "hasher", hasher)
        fixed = torch.tensor(hasher.planes) if isinstance(hasher, SimHasher) else None
        object.__setattr__(self, "_fixed_planes", fixed)
        planes = self._hasher_planes()
        affine = getattr(hasher, "hash_space", "embedding") == "attention"  # planes with the offset row
        if planes.shape[0] - affine != embedding.embedding_dim:
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
        if self._fixed_planes is not None:
            return cast(torch.Tensor, self._fixed_planes)
        return cast(PlaneSource, self.hasher).key_planes()

    def _mark_fresh(self) -> None:
        weight = self.embedding.weight
        self._stamp.fill_(_version(weight))
        object.__setattr__(self, "_hashed_weight", weight)  # a reference: never registered as a parameter here
        self._adopt_load = False

    def _pack(self, rows: torch.Tensor) -> torch.Tensor:
        return hash_rows(rows, self._hasher_planes().to(rows.device), True)

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
            Ids of the rows that changed, any shape (or a ``torch.nested``
            jagged tensor of them, e.g. a batch's histories); duplicates are fine.
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
        if _jagged.is_jagged(rows):
            rows = _jagged.parts("rows", rows)[0]
        r = torch.as_tensor(rows, device=weight.device)
        n = weight.shape[0]
        if r.numel():  # (an empty list is float to torch)
            if not _ops.is_integer(r.dtype):
                raise DTypeError(f"rows must have an integer dtype, got {r.dtype}")
            r = r.reshape(-1).to(torch.int64)
            out = (r < 0) | (r >= n)
            if bool(out.any()):
                raise IndexError(f"rows must lie in [0, {n}), got row {int(r[out][0])}")
        # new planes (loaded, or an attention-space hasher's projection trained) or a resized table: every row changes
        if not self.hashed_with(self._hasher_planes()) or self.signatures.shape[0] != n:
            self.refresh()
            return
        if r.numel() == 0:  # nothing changed
            self._mark_fresh()
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
