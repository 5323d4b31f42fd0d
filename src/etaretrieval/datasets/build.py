"""Long-sequence CTR samples from an interaction log: time-ordered histories, sampled negatives, per-user split.

Every row of the log is a positive (a click) of its user at its time; its
history is the user's behaviours with a strictly earlier timestamp. Each
positive gets ``negatives`` items sampled with a seed that share its user,
time and history, labelled 0. Each user's last ``test_fraction`` of positives
(by time) are test samples. All of it is vectorised numpy over the whole log:
one stable sort, cumulative sums and fancy indexing.
"""

from __future__ import annotations

from typing import Literal, Optional

import numpy as np
import numpy.typing as npt

from .._validate import _as_int
from .logs import InteractionLog
from .samples import SequenceSamples

__all__ = ["build_samples"]

#: Popularity draws of a negative that hit a forbidden item before it is drawn uniformly among the allowed ones.
_MAX_REDRAWS = 32
#: Positives whose negatives are drawn at once (bounds the sampler's temporaries).
_CHUNK = 1 << 20


def _time_order(log: InteractionLog) -> npt.NDArray[np.int64]:
    """Row order by (user, time), ties in the log's row order."""
    t = log.timestamp
    if len(log):
        lo, hi = int(t.min()), int(t.max())
        span = hi - lo + 1
        if log.n_users * span < 2**62 and max(-lo, hi) < 2**62:  # a composite int64 key: one stable sort, not two
            key = log.user * span
            key += t
            key -= lo
            return np.argsort(key, kind="stable")
    return np.lexsort((t, log.user))


class _Unseen:
    """Each user's items the user never interacted with, sampled uniformly without a per-user set.

    ``keys`` are the sorted unique ``user * (N + 1) + item`` pairs of the log.
    The ``k``-th (0-based) unseen item of user ``u`` is ``k + 1`` plus the
    number of the user's seen items ``s_j`` (ascending, ``j`` 0-based) with
    ``s_j - 1 - j <= k`` (``s_j - 1 - j`` unseen items lie below ``s_j``);
    ``gaps = u * (N + 1) + s_j - 1 - j`` is sorted, so one ``searchsorted``
    counts them for every query at once.
    """

    def __init__(self, log: InteractionLog) -> None:
        stride = log.n_items + 1
        self.stride = stride
        keys = log.user * stride
        keys += log.item
        keys.sort(kind="stable")  # the log's rows are often grouped by user: stable (timsort/radix) sorts runs fast
        new = np.ones(keys.size, dtype=np.bool_)
        np.not_equal(keys[1:], keys[:-1], out=new[1:])
        self.keys = keys[new]
        del keys, new
        owner = self.keys // stride
        self.count = np.bincount(owner, minlength=log.n_users).astype(np.int64)
        self.start = np.cumsum(self.count) - self.count
        rank = np.arange(self.keys.size, dtype=np.int64) - self.start[owner]
        self.gaps = self.keys - 1 - rank

    def contains(self, user: np.ndarray, item: np.ndarray) -> np.ndarray:
        key = user * self.stride + item
        at = np.minimum(np.searchsorted(self.keys, key), self.keys.size - 1)
        return self.keys[at] == key

    def uniform(self, rng: np.random.Generator, user: np.ndarray, positive: np.ndarray) -> npt.NDArray[np.int64]:
        """An unseen item of each user, uniformly; any item but ``positive`` for users who saw them all."""
        n_unseen = (self.stride - 1) - self.count[user]
        k = rng.integers(0, np.maximum(n_unseen, 1), dtype=np.int64)
        out = k + 1 + np.searchsorted(self.gaps, user * self.stride + k, side="right") - self.start[user]
        full = np.flatnonzero(n_unseen == 0)
        if full.size:
            out[full] = _other_than(rng, positive[full], self.stride - 1)
        return out


def _other_than(rng: np.random.Generator, positive: np.ndarray, n_items: int) -> npt.NDArray[np.int64]:
    """Uniform items in ``1..n_items`` other than ``positive``."""
    r = rng.integers(1, n_items, size=positive.shape[0], dtype=np.int64)
    return r + (r >= positive)


def _sample_negatives(
    rng: np.random.Generator,
    log: InteractionLog,
    unseen: Optional[_Unseen],
    user: npt.NDArray[np.int64],
    positive: npt.NDArray[np.int64],
    negatives: int,
    sampling: str,
) -> npt.NDArray[np.int64]:
    """``(P, negatives)`` items: never the positive, never (``unseen``) an item of the user unless all are."""
    user, positive = np.repeat(user, negatives), np.repeat(positive, negatives)

    def uniform(u: np.ndarray, p: np.ndarray) -> npt.NDArray[np.int64]:
        return _other_than(rng, p, log.n_items) if unseen is None else unseen.uniform(rng, u, p)

    if sampling == "uniform":
        out = uniform(user, positive)
    else:
        def bad(rows: np.ndarray) -> np.ndarray:
            hit = out[rows] == positive[rows]
            return hit if unseen is None else hit | unseen.contains(user[rows], out[rows])

        out = log.item[rng.integers(0, len(log), size=user.size)]
        redo = np.flatnonzero(bad(np.arange(out.size)))
        for _ in range(_MAX_REDRAWS):
            if not redo.size:
                break
            out[redo] = log.item[rng.integers(0, len(log), size=redo.size)]
            redo = redo[bad(redo)]
        out[redo] = uniform(user[redo], positive[redo])
    return out.reshape(-1, negatives)


def build_samples(
    log: InteractionLog,
    *,
    max_len: Optional[int] = None,
    test_fraction: float = 0.2,
    negatives: int = 1,
    sampling: Literal["uniform", "popularity"] = "uniform",
    exclude_seen: bool = True,
    min_history: int = 1,
    seed: int = 0,
) -> SequenceSamples:
    """CTR samples over time-ordered histories from a log: positives, sampled negatives, per-user time split.

    * **Order.** The log's rows are sorted by (user, timestamp) with a stable
      sort: rows of one user with equal timestamps keep the log's row order.
    * **Positives.** Every row is a positive (label 1) of its user at its
      time. Its history is the user's behaviours with a *strictly earlier*
      timestamp (behaviours at the same second never see each other), so
      ``end`` is the first behaviour of the user at the target's time.
      Positives with fewer than ``min_history`` such behaviours are dropped
      (they still appear in later histories).
    * **Negatives.** Each positive gets ``negatives`` items (label 0) with
      the positive's user, time, history and split. ``"uniform"``: uniformly
      among the items the user never interacted with (``exclude_seen``, exact,
      no rejection) or among all items but the positive. ``"popularity"``: an
      item in proportion to its rows in the log, redrawn while it is the
      positive or (``exclude_seen``) an item of the user, at most 32 times,
      then drawn as ``"uniform"``. A user who interacted with every item gets
      negatives among all items but the positive. A negative never equals
      its positive.
    * **Split.** Each user's last ``floor(test_fraction * P_u)`` positives by
      time (``P_u`` the user's kept positives), with their negatives, are
      test samples (``train`` false); the rest train. A user's test samples
      are never earlier than their train samples.

    Samples are ordered by user, then time, each positive followed by its
    negatives.

    Parameters
    ----------
    log : InteractionLog
        The interactions (see :func:`read_log`).
    max_len : int, optional
        Keep only each user's last ``max_len`` behaviours (older ones are
        dropped from histories and give no samples), to bound memory on
        logs with very long users. Default: keep everything; batches choose
        their own history length (:meth:`SequenceSamples.batch`).
    test_fraction : float, default 0.2
        Fraction of each user's positives, the latest, in the test split; in ``[0, 1]``.
    negatives : int, default 1
        Negatives per positive, ``>= 0``.
    sampling : {"uniform", "popularity"}, default "uniform"
        Distribution of the negatives.
    exclude_seen : bool, default True
        Never pick an item the user interacted with (at any time) as a
        negative. Costs one sort of the log's (user, item) pairs.
    min_history : int, default 1
        Fewest history behaviours of a positive, ``>= 0``.
    seed : int, default 0
        Seed of the negative sampling; equal seeds give equal samples.

    Returns
    -------
    SequenceSamples
        Behaviours of every user (CSR, oldest first) and the samples.

    Examples
    --------
    >>> from etaretrieval.datasets import InteractionLog, build_samples
    >>> log = InteractionLog.from_arrays(
    ...     user=[1, 1, 1, 1, 2, 2], item=[5, 6, 7, 8, 5, 9],
    ...     timestamp=[10, 20, 20, 30, 5, 6])
    >>> data = build_samples(log, test_fraction=0.5, negatives=1, seed=0)
    >>> data.items.tolist(), data.offsets.tolist()
    ([1, 2, 3, 4, 1, 5], [0, 4, 6])

    Positives are every other sample, each followed by its negative:

    >>> positive = data.label == 1
    >>> data.target[positive].tolist(), data.history_lengths()[positive].tolist()
    ([2, 3, 4, 5], [1, 1, 3, 1])
    >>> data.train[positive].tolist()
    [True, True, False, True]
    >>> bool((data.target[~positive] != data.target[positive]).all())
    True
    """
    if not isinstance(log, InteractionLog):
        raise TypeError(f"log must be an InteractionLog (see read_log), got {type(log).__name__}")
    if max_len is not None and _as_int("max_len", max_len) < 1:
        raise ValueError(f"max_len must be >= 1 or None, got {max_len}")
    if not 0.0 <= float(test_fraction) <= 1.0:
        raise ValueError(f"test_fraction must be in [0, 1], got {test_fraction}")
    negatives = _as_int("negatives", negatives)
    if negatives < 0:
        raise ValueError(f"negatives must be >= 0, got {negatives}")
    if negatives and log.n_items < 2:
        raise ValueError(f"negatives need at least 2 items to choose from, the log has n_items={log.n_items}")
    if sampling not in ("uniform", "popularity"):
        raise ValueError(f"sampling must be 'uniform' or 'popularity', got {sampling!r}")
    min_history = _as_int("min_history", min_history)
    if min_history < 0:
        raise ValueError(f"min_history must be >= 0, got {min_history}")
    rng = np.random.default_rng(_as_int("seed", seed))

    order = _time_order(log)
    counts = np.bincount(log.user, minlength=log.n_users).astype(np.int64)
    if max_len is not None and (counts > max_len).any():
        user = log.user[order]
        rank = np.arange(order.size, dtype=np.int64) - (np.cumsum(counts) - counts)[user]
        order = order[rank >= (counts - max_len)[user]]
        del user, rank
        counts = np.minimum(counts, max_len)
    offsets = np.zeros(log.n_users + 1, dtype=np.int64)
    np.cumsum(counts, out=offsets[1:])
    items = log.item[order]
    times = log.timestamp[order]
    categories = None if log.category is None else log.category[order]
    del order

    # A behaviour's history ends at the first behaviour of its (user, time) run.
    events = items.shape[0]
    starts = np.ones(events, dtype=np.bool_)
    np.not_equal(times[1:], times[:-1], out=starts[1:])
    starts[offsets[:-1][counts > 0]] = True
    end = np.where(starts, np.arange(events, dtype=np.int64), 0)
    del starts
    np.maximum.accumulate(end, out=end)
    user = np.repeat(np.arange(log.n_users, dtype=np.int64), counts)
    pos = np.flatnonzero(end - offsets[user] >= min_history)
    p_user, p_end = user[pos], end[pos]
    del end, user

    per_user = np.bincount(p_user, minlength=log.n_users).astype(np.int64)
    rank = np.arange(pos.size, dtype=np.int64) - (np.cumsum(per_user) - per_user)[p_user]
    n_test = np.floor(per_user * float(test_fraction) + 1e-9).astype(np.int64)
    p_train = rank < (per_user - n_test)[p_user]
    del rank

    width = 1 + negatives
    target = np.empty((pos.size, width), dtype=np.int64)
    target[:, 0] = items[pos]
    if negatives:
        unseen = _Unseen(log) if exclude_seen else None
        for lo in range(0, pos.size, _CHUNK):  # bounded temporaries
            hi = min(lo + _CHUNK, pos.size)
            target[lo:hi, 1:] = _sample_negatives(rng, log, unseen, p_user[lo:hi], target[lo:hi, 0], negatives,
                                                  sampling)
        del unseen
    target_category = None
    if categories is not None:
        target_category = np.empty((pos.size, width), dtype=np.int64)
        target_category[:, 0] = categories[pos]
        if negatives:
            target_category[:, 1:] = log.item_categories()[target[:, 1:]]
    label = np.zeros((pos.size, width), dtype=np.float32)
    label[:, 0] = 1.0
    target_time = np.repeat(times[pos], width)
    del pos
    user_out = np.repeat(p_user, width)
    del p_user
    end_out = np.repeat(p_end, width)
    del p_end
    return SequenceSamples(
        items=items, times=times, categories=categories, offsets=offsets,
        user=user_out, target=target.ravel(), target_time=target_time,
        target_category=None if target_category is None else target_category.ravel(),
        end=end_out, label=label.ravel(), train=np.repeat(p_train, width),
        n_items=log.n_items, n_categories=log.n_categories,
    )
