"""Synthetic long-behaviour CTR data whose signal lives in the old part of the sequence.

Each user has a few *long-term interests* (item categories) that fill the old
part of a long behaviour sequence but never the recent window, and a few
*short-term* categories that fill the recent window. A sample pairs the user
with a target item; the click probability is high when the target's category
is one of the user's interests (long- or short-term) and low otherwise. A model
that looks only at the recent window can see half of the signal; a model that
searches the whole sequence (ETA) can see all of it.

Numpy only: usable without torch.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

__all__ = ["LongBehaviorData", "make_long_behavior_ctr", "LONG_TERM", "SHORT_TERM", "OTHER"]

#: Target kinds, the values of :attr:`LongBehaviorData.kind`.
LONG_TERM, SHORT_TERM, OTHER = 0, 1, 2


@dataclass(frozen=True)
class LongBehaviorData:
    """Users' behaviour sequences and (user, target, click) samples.

    Item id ``0`` is padding; items ``1..n_items`` belong to categories
    ``1..n_categories``.

    Attributes
    ----------
    sequences : numpy.ndarray
        ``(n_users, seq_len)`` int64 item ids, oldest to newest; shorter
        histories are padded with ``0`` at the front (the oldest end), so the
        newest behaviour is always at position ``seq_len - 1``.
    item_category : numpy.ndarray
        ``(n_items + 1,)`` int64 category of every item id (``0`` for padding).
    interests : numpy.ndarray
        ``(n_users, n_interests)`` int64 long-term interest categories (only in
        the old part of the sequence).
    recent_interests : numpy.ndarray
        ``(n_users, n_recent)`` int64 short-term categories (only in the recent window).
    user : numpy.ndarray
        ``(n_samples,)`` int64 row of :attr:`sequences` of each sample.
    target : numpy.ndarray
        ``(n_samples,)`` int64 target item ids.
    kind : numpy.ndarray
        ``(n_samples,)`` int64: ``0`` the target's category is a long-term
        interest, ``1`` a short-term one, ``2`` neither.
    label : numpy.ndarray
        ``(n_samples,)`` float32 clicks (0 or 1).
    recent : int
        Length of the recent window (the last ``recent`` positions).
    """

    sequences: npt.NDArray[np.int64]
    item_category: npt.NDArray[np.int64]
    interests: npt.NDArray[np.int64]
    recent_interests: npt.NDArray[np.int64]
    user: npt.NDArray[np.int64]
    target: npt.NDArray[np.int64]
    kind: npt.NDArray[np.int64]
    label: npt.NDArray[np.float32]
    recent: int

    @property
    def n_items(self) -> int:
        """Number of items (ids ``1..n_items``)."""
        return self.item_category.shape[0] - 1

    @property
    def n_categories(self) -> int:
        """Number of categories (ids ``1..n_categories``)."""
        return int(self.item_category.max())

    @property
    def mask(self) -> npt.NDArray[np.bool_]:
        """``(n_users, seq_len)`` bool, true at real (non-padding) behaviours."""
        return self.sequences != 0


def _other_categories(
    rng: np.random.Generator, excluded: np.ndarray, shape: tuple[int, ...], n_categories: int
) -> np.ndarray:
    """Uniform categories in ``1..n_categories`` outside each user's ``excluded`` (``(U, m)``) set.

    ``shape`` starts with ``U``. Draws among the ``n_categories - m`` allowed
    values and skips over the sorted excluded ones.
    """
    skip = np.sort(excluded, axis=1) - 1  # 0-based
    values = rng.integers(0, n_categories - skip.shape[1], size=shape)
    expand = (slice(None),) + (None,) * (len(shape) - 1)
    for j in range(skip.shape[1]):
        values += values >= skip[:, j][expand]
    return values + 1


def _items(rng: np.random.Generator, categories: np.ndarray, items_per_category: int) -> np.ndarray:
    """A uniform item of each category."""
    return (categories - 1) * items_per_category + 1 + rng.integers(0, items_per_category, size=categories.shape)


def make_long_behavior_ctr(
    n_users: int = 2000,
    seq_len: int = 1000,
    *,
    recent: int = 50,
    min_len: int | None = None,
    n_categories: int = 200,
    items_per_category: int = 50,
    n_interests: int = 3,
    n_recent: int = 2,
    interest_rate: float = 0.3,
    recent_rate: float = 0.5,
    samples_per_user: int = 8,
    click_prob: tuple[float, float] = (0.8, 0.1),
    seed: int | np.random.Generator = 0,
) -> LongBehaviorData:
    """Generate long behaviour sequences with long-term interests the recent window misses.

    Per user: ``n_interests + n_recent`` distinct categories are drawn; a
    history length uniform in ``min_len..seq_len``; each behaviour of the old
    part (before the last ``recent`` positions) is from a long-term interest
    with probability ``interest_rate``, each one of the recent window from a
    short-term category with probability ``recent_rate``; all others are from
    categories that are neither (noise). Per sample: the target's category is a
    long-term interest, a short-term one or neither, with equal probability,
    and the click probability is ``click_prob[0]`` for either kind of interest
    and ``click_prob[1]`` otherwise.

    Parameters
    ----------
    n_users : int, default 2000
        Number of users (sequences).
    seq_len : int, default 1000
        Sequence length ``L`` (after padding).
    recent : int, default 50
        Length of the recent window, ``1 <= recent < min_len``.
    min_len : int, optional
        Shortest history; default ``seq_len // 2``.
    n_categories : int, default 200
        Number of item categories, more than ``n_interests + n_recent``.
    items_per_category : int, default 50
        Items in each category.
    n_interests, n_recent : int, default 3 and 2
        Long-term and short-term interest categories per user.
    interest_rate, recent_rate : float, default 0.3 and 0.5
        Share of interest behaviours in the old part and in the recent window.
    samples_per_user : int, default 8
        Targets drawn per user.
    click_prob : (float, float), default (0.8, 0.1)
        Click probability of a target in an interest category, and otherwise.
    seed : int or numpy.random.Generator, default 0
        Seed; the same seed gives the same data.

    Returns
    -------
    LongBehaviorData

    Examples
    --------
    >>> from etaretrieval.datasets import make_long_behavior_ctr
    >>> data = make_long_behavior_ctr(n_users=100, seq_len=200, recent=20, seed=0)
    >>> data.sequences.shape, data.target.shape, data.n_items
    ((100, 200), (800,), 10000)
    >>> window = data.item_category[data.sequences[:, -20:]]
    >>> bool((window[..., None] == data.interests[:, None, :]).any())  # the recent window misses them
    False
    """
    min_len = seq_len // 2 if min_len is None else min_len
    if not 1 <= recent < min_len <= seq_len:
        raise ValueError(f"need 1 <= recent < min_len <= seq_len, got recent={recent}, min_len={min_len}, "
                         f"seq_len={seq_len}")
    if n_interests < 1 or n_recent < 1 or n_categories <= n_interests + n_recent:
        raise ValueError(f"need n_interests >= 1, n_recent >= 1 and n_categories > n_interests + n_recent, got "
                         f"{n_interests}, {n_recent} and {n_categories}")
    for name, value in (("n_users", n_users), ("samples_per_user", samples_per_user),
                        ("items_per_category", items_per_category)):
        if value < 1:
            raise ValueError(f"{name} must be >= 1, got {value}")
    rng = np.random.default_rng(seed)
    chosen = np.argsort(rng.random((n_users, n_categories)), axis=1)[:, : n_interests + n_recent] + 1
    interests, recent_interests = chosen[:, :n_interests], chosen[:, n_interests:]
    rows = np.arange(n_users)[:, None]

    in_window = np.arange(seq_len) >= seq_len - recent
    rate = np.where(in_window, recent_rate, interest_rate)
    own = np.where(
        in_window,
        recent_interests[rows, rng.integers(0, n_recent, size=(n_users, seq_len))],
        interests[rows, rng.integers(0, n_interests, size=(n_users, seq_len))],
    )
    noise = _other_categories(rng, chosen, (n_users, seq_len), n_categories)
    categories = np.where(rng.random((n_users, seq_len)) < rate, own, noise)
    lengths = rng.integers(min_len, seq_len + 1, size=n_users)
    sequences = _items(rng, categories, items_per_category)
    sequences[np.arange(seq_len) < (seq_len - lengths)[:, None]] = 0

    user = np.repeat(np.arange(n_users), samples_per_user)
    kind = rng.integers(0, 3, size=user.shape[0])
    target_cat = np.select(
        [kind == LONG_TERM, kind == SHORT_TERM],
        [interests[user, rng.integers(0, n_interests, size=user.shape[0])],
         recent_interests[user, rng.integers(0, n_recent, size=user.shape[0])]],
        _other_categories(rng, chosen, (n_users, samples_per_user), n_categories).reshape(-1),
    )
    p_click = np.where(kind == OTHER, click_prob[1], click_prob[0])
    label = (rng.random(user.shape[0]) < p_click).astype(np.float32)
    item_category = np.concatenate([[0], np.repeat(np.arange(1, n_categories + 1), items_per_category)])
    return LongBehaviorData(
        sequences=sequences.astype(np.int64),
        item_category=item_category.astype(np.int64),
        interests=interests.astype(np.int64),
        recent_interests=recent_interests.astype(np.int64),
        user=user.astype(np.int64),
        target=_items(rng, target_cat, items_per_category).astype(np.int64),
        kind=kind.astype(np.int64),
        label=label,
        recent=recent,
    )
