"""Long-sequence CTR samples over time-ordered user histories, and padded or ragged batches of them.

The behaviours of all users are stored once, flat and grouped by user (CSR:
``offsets[u]:offsets[u + 1]``), oldest first; a sample is a (user, target,
time, label) with ``end``, the flat index just past the last behaviour it may
see. A batch gathers the last ``max_len`` visible behaviours of each sample
into padded ``(B, max_len)`` arrays with one vectorised fancy index: memory
stays ``O(behaviours + samples)`` whatever the history length. A ragged batch
gathers them back to back with ``(B + 1,)`` offsets instead (the layout of the
``offsets=`` retrieval functions, Arrow lists and ``torch.nested`` jagged
tensors): no ``(B, L_max)`` block, no padding.

Item id ``0`` is padding; real items are ``1..n_items`` (categories
``1..n_categories``, ``0`` for padding).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Literal, Optional, Union, overload

import numpy as np
import numpy.typing as npt

from .._validate import _as_int

__all__ = ["SequenceSamples", "SequenceBatch", "RaggedSequenceBatch"]


@dataclass(frozen=True)
class SequenceBatch:
    """Padded arrays of ``B`` samples with at most ``L`` history behaviours each.

    Attributes
    ----------
    history : numpy.ndarray
        ``(B, L)`` int64 item ids, oldest to newest, ``0`` at padding.
    times : numpy.ndarray
        ``(B, L)`` int64 behaviour timestamps, ``0`` at padding.
    categories : numpy.ndarray or None
        ``(B, L)`` int64 behaviour categories, ``0`` at padding.
    mask : numpy.ndarray
        ``(B, L)`` bool, true at real behaviours.
    lengths : numpy.ndarray
        ``(B,)`` int64 number of real behaviours per row.
    target, target_time : numpy.ndarray
        ``(B,)`` int64 target item ids and request times.
    target_category : numpy.ndarray or None
        ``(B,)`` int64 target categories.
    label : numpy.ndarray
        ``(B,)`` float32 clicks (0 or 1).
    padding_side : {"left", "right"}
        ``"left"``: the real behaviours are the last ``lengths[b]`` positions
        (newest at ``L - 1``); ``"right"``: the first ``lengths[b]``.
    """

    history: npt.NDArray[np.int64]
    times: npt.NDArray[np.int64]
    categories: Optional[npt.NDArray[np.int64]]
    mask: npt.NDArray[np.bool_]
    lengths: npt.NDArray[np.int64]
    target: npt.NDArray[np.int64]
    target_time: npt.NDArray[np.int64]
    target_category: Optional[npt.NDArray[np.int64]]
    label: npt.NDArray[np.float32]
    padding_side: str


def _check_max_len(max_len: object) -> None:
    if isinstance(max_len, bool) or not isinstance(max_len, (int, np.integer)) or max_len < 1:
        raise ValueError(f"max_len must be >= 1 (an integer), got {max_len!r}")


def _window(
    first: np.ndarray, end: np.ndarray, max_len: int, padding_side: str
) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.bool_], npt.NDArray[np.int64]]:
    """``(flat, mask, lengths)`` of the padded rows holding the last ``max_len`` of flat ``first[b]:end[b]``.

    ``flat`` ``(B, max_len)`` indexes the flat values (0 at padding), ``mask`` marks the real positions.
    """
    _check_max_len(max_len)
    if padding_side not in ("left", "right"):
        raise ValueError(f"padding_side must be 'left' or 'right', got {padding_side!r}")
    start = np.maximum(first, end - max_len)
    lengths = end - start
    col = np.arange(max_len)
    if padding_side == "left":
        flat = end[:, None] - max_len + col
        mask = flat >= start[:, None]
    else:
        flat = start[:, None] + col
        mask = col < lengths[:, None]
    return np.where(mask, flat, 0), mask, lengths


def _gather_padded(values: np.ndarray, flat: np.ndarray, mask: np.ndarray) -> npt.NDArray[np.int64]:
    """``values[flat]`` with 0 where not ``mask``."""
    return np.where(mask, values[flat] if values.size else 0, 0)


@dataclass(frozen=True)
class RaggedSequenceBatch:
    """``B`` samples with their history behaviours back to back: flat values and ``(B + 1,)`` offsets.

    Row ``b``'s behaviours, oldest to newest, are ``history[offsets[b]:offsets[b + 1]]``
    (and the same slices of ``times`` and ``categories``); nothing is padded.

    Attributes
    ----------
    history : numpy.ndarray
        ``(T,)`` int64 item ids of every row, back to back (``T = offsets[-1]``).
    times : numpy.ndarray
        ``(T,)`` int64 behaviour timestamps.
    categories : numpy.ndarray or None
        ``(T,)`` int64 behaviour categories.
    offsets : numpy.ndarray
        ``(B + 1,)`` int64, from 0, non-decreasing: the ``offsets`` argument
        of :func:`etaretrieval.topk_hamming_lookup` and the other ragged functions.
    target, target_time : numpy.ndarray
        ``(B,)`` int64 target item ids and request times.
    target_category : numpy.ndarray or None
        ``(B,)`` int64 target categories.
    label : numpy.ndarray
        ``(B,)`` float32 clicks (0 or 1).
    """

    history: npt.NDArray[np.int64]
    times: npt.NDArray[np.int64]
    categories: Optional[npt.NDArray[np.int64]]
    offsets: npt.NDArray[np.int64]
    target: npt.NDArray[np.int64]
    target_time: npt.NDArray[np.int64]
    target_category: Optional[npt.NDArray[np.int64]]
    label: npt.NDArray[np.float32]

    @property
    def lengths(self) -> npt.NDArray[np.int64]:
        """``(B,)`` int64 number of behaviours of each row."""
        return np.diff(self.offsets)

    def padded(self, max_len: Optional[int] = None, *,
               padding_side: Literal["left", "right"] = "left") -> SequenceBatch:
        """The same rows as a :class:`SequenceBatch` of width ``max_len`` (default: the longest row, at least 1).

        Rows longer than ``max_len`` keep their last ``max_len`` behaviours, as
        :meth:`SequenceSamples.batch` keeps them: ``samples.ragged_batch(rows).padded(L)``
        equals ``samples.batch(rows, L)``.
        """
        lengths = self.lengths
        width = max(1, int(lengths.max()) if lengths.size else 1) if max_len is None else max_len
        flat, mask, kept = _window(self.offsets[:-1], self.offsets[1:], width, padding_side)
        return SequenceBatch(
            history=_gather_padded(self.history, flat, mask), times=_gather_padded(self.times, flat, mask),
            categories=None if self.categories is None else _gather_padded(self.categories, flat, mask),
            mask=mask, lengths=kept, target=self.target,
            target_time=self.target_time, target_category=self.target_category, label=self.label,
            padding_side=padding_side,
        )


def _check_flag(name: str, value: object) -> None:
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{name} must be a bool, got {type(value).__name__} {value!r}")


def _check_batch_size(batch_size: object) -> int:
    size = _as_int("batch_size", batch_size)
    if size < 1:
        raise ValueError(f"batch_size must be >= 1, got {size}")
    return size


def _check_1d(name: str, a: np.ndarray, size: int, what: str) -> None:
    if a.ndim != 1 or a.shape[0] != size:
        raise ValueError(f"{name} must have shape ({what},) = ({size},), got shape {a.shape}")


@dataclass(frozen=True)
class SequenceSamples:
    """CTR samples with long, time-ordered histories, stored flat (CSR) by user.

    Attributes
    ----------
    items : numpy.ndarray
        ``(E,)`` int64 item ids (``1..n_items``) of every behaviour, grouped by
        user, oldest first within a user.
    times : numpy.ndarray
        ``(E,)`` int64 timestamps of the behaviours (any unit; seconds for real logs).
    categories : numpy.ndarray or None
        ``(E,)`` int64 categories of the behaviours, if known.
    offsets : numpy.ndarray
        ``(U + 1,)`` int64: user ``u``'s behaviours are ``items[offsets[u]:offsets[u + 1]]``.
    user : numpy.ndarray
        ``(S,)`` int64 user of each sample.
    target : numpy.ndarray
        ``(S,)`` int64 target item ids.
    target_time : numpy.ndarray
        ``(S,)`` int64 request times.
    target_category : numpy.ndarray or None
        ``(S,)`` int64 target categories, if known.
    end : numpy.ndarray
        ``(S,)`` int64 flat index just past the last behaviour sample ``s`` may
        see: its history is ``items[offsets[user[s]]:end[s]]``.
    label : numpy.ndarray
        ``(S,)`` float32 clicks (0 or 1).
    train : numpy.ndarray
        ``(S,)`` bool, true for training samples (false: test).
    n_items : int
        Number of item ids (``1..n_items``; ``0`` is padding).
    n_categories : int
        Number of categories (``1..n_categories``), ``0`` if unknown.

    Examples
    --------
    >>> import numpy as np
    >>> from etaretrieval.datasets import SequenceSamples
    >>> data = SequenceSamples(
    ...     items=np.array([3, 1, 2, 5]), times=np.array([10, 20, 30, 15]), categories=None,
    ...     offsets=np.array([0, 3, 4]), user=np.array([0, 1]), target=np.array([4, 2]),
    ...     target_time=np.array([40, 16]), target_category=None, end=np.array([3, 4]),
    ...     label=np.array([1, 0], dtype=np.float32), train=np.array([True, False]), n_items=5, n_categories=0)
    >>> batch = data.batch(np.array([0, 1]), max_len=2)
    >>> batch.history.tolist(), batch.lengths.tolist()
    ([[1, 2], [0, 5]], [2, 1])
    """

    items: npt.NDArray[np.int64]
    times: npt.NDArray[np.int64]
    categories: Optional[npt.NDArray[np.int64]]
    offsets: npt.NDArray[np.int64]
    user: npt.NDArray[np.int64]
    target: npt.NDArray[np.int64]
    target_time: npt.NDArray[np.int64]
    target_category: Optional[npt.NDArray[np.int64]]
    end: npt.NDArray[np.int64]
    label: npt.NDArray[np.float32]
    train: npt.NDArray[np.bool_]
    n_items: int
    n_categories: int

    def __post_init__(self) -> None:
        events, samples = self.items.shape[0], self.user.shape[0]
        _check_1d("items", self.items, events, "E")
        _check_1d("times", self.times, events, "E")
        if self.categories is not None:
            _check_1d("categories", self.categories, events, "E")
        if self.offsets.ndim != 1 or self.offsets.shape[0] < 1 or self.offsets[0] != 0 or self.offsets[-1] != events:
            raise ValueError(f"offsets must be a (U + 1,) array from 0 to E = {events}, got {self.offsets!r}")
        if (np.diff(self.offsets) < 0).any():
            raise ValueError("offsets must be non-decreasing")
        for name in ("target", "target_time", "end", "label", "train"):
            _check_1d(name, getattr(self, name), samples, "S")
        if self.target_category is not None:
            _check_1d("target_category", self.target_category, samples, "S")
        if samples and not (0 <= self.user.min() and self.user.max() < self.n_users):
            raise ValueError(f"user must hold users in [0, {self.n_users}), got range "
                             f"[{self.user.min()}, {self.user.max()}]")
        if samples and not ((self.offsets[self.user] <= self.end) & (self.end <= self.offsets[self.user + 1])).all():
            raise ValueError("end must lie within each sample's user's behaviours: "
                             "offsets[user] <= end <= offsets[user + 1]")

    @property
    def n_users(self) -> int:
        """Number of users ``U``."""
        return self.offsets.shape[0] - 1

    @property
    def n_samples(self) -> int:
        """Number of samples ``S``."""
        return self.user.shape[0]

    def item_categories(self) -> Optional[npt.NDArray[np.int64]]:
        """``(n_items + 1,)`` int64 category of every item id, or ``None`` if not one per item.

        ``None`` when the samples have no categories (or ``n_categories`` is
        0) or some item appears with two categories (behaviours or targets);
        items that never appear, and the padding id ``0``, get category ``0``. The argument
        ``item_categories`` of :class:`~etaretrieval.torch.ETAModel`.

        Examples
        --------
        >>> import numpy as np
        >>> from etaretrieval.datasets import make_sequence_ctr
        >>> data = make_sequence_ctr(n_users=4, max_len=50, seed=0)
        >>> table = data.item_categories()
        >>> table.shape == (data.n_items + 1,), bool((table[data.items] == data.categories).all())
        (True, True)
        """
        if self.categories is None or self.target_category is None or not self.n_categories:
            return None
        ids = np.concatenate([self.items, self.target])
        cats = np.concatenate([self.categories, self.target_category])
        real = ids != 0  # the padding id keeps category 0
        ids, cats = ids[real], cats[real]
        table = np.zeros(self.n_items + 1, dtype=np.int64)
        table[ids] = cats
        return table if bool((table[ids] == cats).all()) else None

    def history_lengths(self) -> npt.NDArray[np.int64]:
        """``(S,)`` number of behaviours each sample may see (before truncation to a batch's ``max_len``)."""
        return self.end - self.offsets[self.user]

    def batch(
        self, rows: npt.ArrayLike, max_len: int, *, padding_side: Literal["left", "right"] = "left"
    ) -> SequenceBatch:
        """Padded arrays of the samples ``rows`` with their last ``max_len`` visible behaviours.

        Parameters
        ----------
        rows : array_like
            ``(B,)`` sample indices.
        max_len : int
            History length ``L`` of the batch, ``>= 1``.
        padding_side : {"left", "right"}, default "left"
            Where the padding goes: ``"left"`` keeps the newest behaviour at
            position ``L - 1`` in every row (the recent window is the last
            columns); ``"right"`` makes the real behaviours a prefix.

        Returns
        -------
        SequenceBatch
        """
        rows = np.asarray(rows, dtype=np.int64)
        end = self.end[rows]
        flat, mask, lengths = _window(self.offsets[self.user[rows]], end, max_len, padding_side)
        return SequenceBatch(
            history=_gather_padded(self.items, flat, mask),
            times=_gather_padded(self.times, flat, mask),
            categories=None if self.categories is None else _gather_padded(self.categories, flat, mask),
            mask=mask,
            lengths=lengths,
            target=self.target[rows],
            target_time=self.target_time[rows],
            target_category=None if self.target_category is None else self.target_category[rows],
            label=self.label[rows],
            padding_side=padding_side,
        )

    def ragged_batch(self, rows: npt.ArrayLike, max_len: Optional[int] = None) -> RaggedSequenceBatch:
        """The samples ``rows`` with their visible behaviours back to back (values + offsets), unpadded.

        Parameters
        ----------
        rows : array_like
            ``(B,)`` sample indices.
        max_len : int, optional
            Keep at most the last ``max_len`` behaviours of each row (``>= 1``);
            default: every visible behaviour.

        Returns
        -------
        RaggedSequenceBatch
            ``T`` behaviours in all, the sum of the rows' lengths: memory grows
            with the behaviours, not with ``B x`` the longest row.

        Examples
        --------
        >>> import numpy as np
        >>> from etaretrieval.datasets import SequenceSamples
        >>> data = SequenceSamples(
        ...     items=np.array([3, 1, 2, 5]), times=np.array([10, 20, 30, 15]), categories=None,
        ...     offsets=np.array([0, 3, 4]), user=np.array([0, 1]), target=np.array([4, 2]),
        ...     target_time=np.array([40, 16]), target_category=None, end=np.array([3, 4]),
        ...     label=np.array([1, 0], dtype=np.float32), train=np.array([True, False]), n_items=5, n_categories=0)
        >>> batch = data.ragged_batch([0, 1])
        >>> batch.history.tolist(), batch.offsets.tolist()
        ([3, 1, 2, 5], [0, 3, 4])
        >>> data.ragged_batch([0, 1], max_len=2).history.tolist()
        [1, 2, 5]
        """
        rows = np.asarray(rows, dtype=np.int64)
        if rows.ndim != 1:
            raise ValueError(f"rows must have shape (B,), got shape {rows.shape}")
        end = self.end[rows]
        start = self.offsets[self.user[rows]]
        if max_len is not None:
            _check_max_len(max_len)
            start = np.maximum(start, end - max_len)
        lengths = end - start
        offsets = np.zeros(rows.shape[0] + 1, dtype=np.int64)
        np.cumsum(lengths, out=offsets[1:])
        # flat index of output entry t of row b: start[b] + (t - offsets[b])
        flat = np.repeat(start - offsets[:-1], lengths) + np.arange(offsets[-1], dtype=np.int64)
        return RaggedSequenceBatch(
            history=self.items[flat],
            times=self.times[flat],
            categories=None if self.categories is None else self.categories[flat],
            offsets=offsets,
            target=self.target[rows],
            target_time=self.target_time[rows],
            target_category=None if self.target_category is None else self.target_category[rows],
            label=self.label[rows],
        )

    @overload
    def batches(
        self, batch_size: int, max_len: Optional[int] = ..., *, rows: Optional[npt.ArrayLike] = ...,
        ragged: Literal[False] = ..., shuffle: bool = ..., seed: Union[None, int, np.random.Generator] = ...,
        drop_last: bool = ..., padding_side: Optional[Literal["left", "right"]] = ...,
    ) -> Iterator[SequenceBatch]: ...

    @overload
    def batches(
        self, batch_size: int, max_len: Optional[int] = ..., *, rows: Optional[npt.ArrayLike] = ...,
        ragged: Literal[True], shuffle: bool = ..., seed: Union[None, int, np.random.Generator] = ...,
        drop_last: bool = ..., padding_side: None = ...,
    ) -> Iterator[RaggedSequenceBatch]: ...

    @overload
    def batches(
        self, batch_size: int, max_len: Optional[int] = ..., *, rows: Optional[npt.ArrayLike] = ...,
        ragged: bool, shuffle: bool = ..., seed: Union[None, int, np.random.Generator] = ...,
        drop_last: bool = ..., padding_side: Optional[Literal["left", "right"]] = ...,
    ) -> Iterator[Union[SequenceBatch, RaggedSequenceBatch]]: ...

    def batches(
        self,
        batch_size: int,
        max_len: Optional[int] = None,
        *,
        rows: Optional[npt.ArrayLike] = None,
        ragged: bool = False,
        shuffle: bool = False,
        seed: Union[None, int, np.random.Generator] = None,
        drop_last: bool = False,
        padding_side: Optional[Literal["left", "right"]] = None,
    ) -> Iterator[Union[SequenceBatch, RaggedSequenceBatch]]:
        """One pass over the samples in batches of ``batch_size``, padded (:meth:`batch`) or ragged.

        Every sample of ``rows`` is in exactly one batch (all of them with
        ``drop_last=False``), in the order of ``rows`` or, with ``shuffle``, in
        an order drawn from ``seed``; the last batch holds what is left
        (fewer than ``batch_size`` rows) unless ``drop_last``. The arguments
        are checked and the order is drawn when this is called; each batch is
        gathered only when the iterator reaches it.

        Parameters
        ----------
        batch_size : int
            Samples per batch, ``>= 1``.
        max_len : int, optional
            Keep at most the last ``max_len`` behaviours of each sample (``>= 1``).
            Default: every visible behaviour; a padded batch is then as wide as
            its longest row (at least 1).
        rows : array_like, optional
            ``(n,)`` integer sample indices in ``[0, S)`` to go over, e.g.
            ``np.flatnonzero(samples.train)``; default: every sample, in order.
        ragged : bool, default False
            Yield :class:`RaggedSequenceBatch` (values + offsets) instead of
            :class:`SequenceBatch`; row by row, the two hold the same behaviours.
        shuffle : bool, default False
            Go over ``rows`` in a random order (``numpy.random.Generator.permutation``).
        seed : int or numpy.random.Generator, optional
            The shuffle's seed (``shuffle=True`` only): the same int gives the
            same order; a ``Generator`` is drawn from (one pass per call, so
            passing the same generator every epoch gives a new order each
            epoch, reproducible from the generator's seed). ``None``: fresh
            entropy.
        drop_last : bool, default False
            Leave out the last batch if it holds fewer than ``batch_size`` samples.
        padding_side : {"left", "right"}, optional
            The padding of padded batches (default ``"left"``, see :meth:`batch`);
            refused with ``ragged=True``, whose batches have no padding.

        Yields
        ------
        SequenceBatch or RaggedSequenceBatch
            ``ceil(n / batch_size)`` batches (``floor`` with ``drop_last``);
            none if ``rows`` is empty.

        Raises
        ------
        TypeError
            ``batch_size`` is not an integer, ``ragged``, ``shuffle`` or
            ``drop_last`` not a bool, ``seed`` neither an int nor a Generator,
            ``rows`` not integers.
        ValueError
            ``batch_size < 1``, ``max_len`` not an integer ``>= 1`` (as for
            :meth:`batch`), ``rows`` not 1-D or outside
            ``[0, S)``, ``seed`` without ``shuffle``, ``padding_side`` with
            ``ragged`` or not ``"left"`` / ``"right"``.

        Examples
        --------
        >>> import numpy as np
        >>> from etaretrieval.datasets import make_sequence_ctr
        >>> data = make_sequence_ctr(n_users=4, max_len=50, seed=0)
        >>> train = np.flatnonzero(data.train)
        >>> sizes = [b.target.shape[0] for b in data.batches(64, rows=train)]
        >>> sum(sizes) == train.size, all(s == 64 for s in sizes[:-1])
        (True, True)
        >>> first = next(data.batches(8, 20, ragged=True, shuffle=True, seed=1))
        >>> again = next(data.batches(8, 20, shuffle=True, seed=1))
        >>> bool((first.target == again.target).all()), first.offsets.shape, again.history.shape
        (True, (9,), (8, 20))
        """
        size = _check_batch_size(batch_size)
        if max_len is not None:
            _check_max_len(max_len)
        for name, flag in (("ragged", ragged), ("shuffle", shuffle), ("drop_last", drop_last)):
            _check_flag(name, flag)
        if ragged and padding_side is not None:
            raise ValueError(f"padding_side is for padded batches; ragged=True batches have none, got {padding_side!r}")
        side: Literal["left", "right"] = "left" if padding_side is None else padding_side
        if side not in ("left", "right"):
            raise ValueError(f"padding_side must be 'left' or 'right', got {padding_side!r}")
        order = self._batch_rows(rows)
        if seed is not None and not shuffle:
            raise ValueError(f"seed is the shuffle's seed and needs shuffle=True, got seed={seed!r}")
        if shuffle:
            if isinstance(seed, (bool, np.bool_)) or not isinstance(seed, (type(None), int, np.integer,
                                                                             np.random.Generator)):
                raise TypeError(f"seed must be an int, a numpy.random.Generator or None, got {type(seed).__name__}")
            order = np.random.default_rng(seed).permutation(order)
        stop = order.size - order.size % size if drop_last else order.size
        chunks = (order[i:i + size] for i in range(0, stop, size))
        if ragged:
            return (self.ragged_batch(chunk, max_len) for chunk in chunks)
        if max_len is not None:
            return (self.batch(chunk, max_len, padding_side=side) for chunk in chunks)
        return (self.ragged_batch(chunk).padded(padding_side=side) for chunk in chunks)

    def _batch_rows(self, rows: Optional[npt.ArrayLike]) -> npt.NDArray[np.int64]:
        """``rows`` as ``(n,)`` int64 sample indices checked to lie in ``[0, S)`` (default: every sample)."""
        if rows is None:
            return np.arange(self.n_samples, dtype=np.int64)
        arr = np.asarray(rows)
        if arr.ndim != 1:
            raise ValueError(f"rows must have shape (n,), got shape {arr.shape}")
        if arr.size and not np.issubdtype(arr.dtype, np.integer):
            hint = " (for a boolean mask, pass np.flatnonzero(mask))" if arr.dtype == np.bool_ else ""
            raise TypeError(f"rows must hold integer sample indices, got dtype {arr.dtype}{hint}")
        if arr.size and not (0 <= arr.min() and arr.max() < self.n_samples):
            raise ValueError(f"rows must hold sample indices in [0, {self.n_samples}), got range "
                             f"[{arr.min()}, {arr.max()}]")
        return arr.astype(np.int64)
