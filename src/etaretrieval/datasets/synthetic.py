"""Synthetic long-behaviour CTR data whose signal lives in the old part of the sequence.

Two generators. :func:`make_sequence_ctr` gives timestamped histories as
:class:`~etaretrieval.datasets.SequenceSamples` (the store real logs use too),
where the recent window, the long-term interests *and* how long ago each was
last engaged all matter. :func:`make_long_behavior_ctr`, the first one, gives
padded arrays without times:

each user has a few *long-term interests* (item categories) that fill the old
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

from .samples import SequenceSamples

__all__ = [
    "LongBehaviorData",
    "make_long_behavior_ctr",
    "make_sequence_ctr",
    "LONG_TERM",
    "SHORT_TERM",
    "OTHER",
    "LAPSED",
]

#: Target kinds, the values of :attr:`LongBehaviorData.kind` (``LAPSED``: only in :func:`make_sequence_ctr`).
LONG_TERM, SHORT_TERM, OTHER, LAPSED = 0, 1, 2, 3


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


def _other_categories_flat(
    rng: np.random.Generator, excluded: np.ndarray, rows: np.ndarray, n_categories: int
) -> np.ndarray:
    """Uniform categories in ``1..n_categories`` outside ``excluded[rows[i]]`` for each ``i`` (flat form)."""
    skip = np.sort(excluded, axis=1) - 1
    values = rng.integers(0, n_categories - skip.shape[1], size=rows.shape[0])
    for j in range(skip.shape[1]):
        values += values >= skip[rows, j]
    return values + 1


def make_sequence_ctr(
    n_users: int = 2000,
    max_len: int = 2000,
    *,
    min_len: int | None = None,
    recent: int = 20,
    n_categories: int = 100,
    items_per_category: int = 20,
    n_interests: int = 4,
    n_lapsed: int = 2,
    n_recent: int = 2,
    n_unseen: int = 4,
    interest_rate: float = 0.3,
    recent_rate: float = 0.5,
    lapse: tuple[float, float] = (0.2, 0.5),
    samples_per_user: int = 8,
    click_prob: tuple[float, float, float, float] = (0.8, 0.8, 0.05, 0.25),
    mean_gap: float = 1800.0,
    test_fraction: float = 0.2,
    seed: int | np.random.Generator = 0,
) -> SequenceSamples:
    """Timestamped long histories where recency, long-term interests and their age all matter.

    Per user: a history length uniform in ``min_len..max_len``; behaviour
    times (seconds) with exponential gaps of mean ``mean_gap``, the request
    one more gap after the last behaviour. The user has ``n_interests``
    long-term categories, ``n_recent`` short-term ones and ``n_unseen``
    categories it never touches, all distinct. Each
    behaviour before the last ``recent`` is, with probability
    ``interest_rate``, from a long-term interest drawn uniformly, provided the
    interest is still alive then: ``n_interests - n_lapsed`` interests stay
    alive to the end, the ``n_lapsed`` others *lapse* at a random point
    between ``lapse[0]`` and ``lapse[1]`` of the history and never come back.
    Each behaviour of the recent window is from a short-term category with
    probability ``recent_rate``. All other behaviours are noise from the
    categories that are none of these.

    Per sample, the target's kind is drawn uniformly: a short-term category
    (``SHORT_TERM``, seen in the recent window), a live long-term one
    (``LONG_TERM``: only in the old part, last seen shortly before the
    window), a lapsed one (``LAPSED``: only long ago) or an unseen one
    (``OTHER``, like a sampled negative), and it is clicked with probability ``click_prob[kind]``.
    Telling a live interest from a lapsed one needs the time (or position) of
    the behaviours; seeing either needs the whole history; seeing short-term
    interests needs the recent window.

    Parameters
    ----------
    n_users : int, default 2000
        Number of users.
    max_len : int, default 2000
        Longest history.
    min_len : int, optional
        Shortest history, ``> recent``; default ``max_len // 2``.
    recent : int, default 20
        Length of the recent window, ``>= 1``.
    n_categories : int, default 100
        Number of categories, more than ``n_interests + n_recent + n_unseen``.
    items_per_category : int, default 20
        Items per category; item ``i`` is in category ``(i - 1) // items_per_category + 1``.
    n_interests : int, default 4
        Long-term interest categories per user.
    n_lapsed : int, default 2
        How many of them lapse, ``0..n_interests - 1``.
    n_recent : int, default 2
        Short-term categories per user.
    n_unseen : int, default 4
        Categories per user that never appear in its history (the ``OTHER`` targets), ``>= 1``.
    interest_rate, recent_rate : float, default 0.3 and 0.5
        Share of interest behaviours in the old part and in the recent window.
    lapse : (float, float), default (0.2, 0.5)
        Range of the point (share of the history) where a lapsed interest stops.
    samples_per_user : int, default 8
        Targets per user, all at the user's request time.
    click_prob : (float, float, float, float), default (0.8, 0.8, 0.05, 0.25)
        Click probability by kind, indexed by ``LONG_TERM`` (live),
        ``SHORT_TERM``, ``OTHER`` and ``LAPSED`` (0, 1, 2, 3).
    mean_gap : float, default 1800.0
        Mean seconds between behaviours.
    test_fraction : float, default 0.2
        Share of users whose samples are test samples (``train`` false).
    seed : int or numpy.random.Generator, default 0
        Seed; the same seed gives the same data.

    Returns
    -------
    SequenceSamples
        Histories with ``times`` and ``categories``; every sample sees its
        user's whole history (``end`` is the user's last behaviour).

    Examples
    --------
    >>> import numpy as np
    >>> from etaretrieval.datasets import make_sequence_ctr
    >>> data = make_sequence_ctr(n_users=50, max_len=300, seed=0)
    >>> data.n_users, data.n_samples, data.n_items, data.n_categories
    (50, 400, 2000, 100)
    >>> batch = data.batch(np.arange(4), max_len=300)
    >>> bool((np.diff(batch.times, axis=1)[batch.mask[:, 1:]] > 0).all())  # times increase
    True
    >>> bool((batch.target_time > batch.times.max(axis=1)).all())
    True
    """
    min_len = max_len // 2 if min_len is None else min_len
    if not 1 <= recent < min_len <= max_len:
        raise ValueError(f"need 1 <= recent < min_len <= max_len, got recent={recent}, min_len={min_len}, "
                         f"max_len={max_len}")
    if n_interests < 1 or n_recent < 1 or n_unseen < 1 or n_categories <= n_interests + n_recent + n_unseen:
        raise ValueError(f"need n_interests, n_recent, n_unseen >= 1 and n_categories > their sum, got "
                         f"{n_interests}, {n_recent}, {n_unseen} and {n_categories}")
    if not 0 <= n_lapsed < n_interests:
        raise ValueError(f"n_lapsed must be in 0..n_interests - 1 = {n_interests - 1}, got {n_lapsed}")
    if not 0 <= lapse[0] <= lapse[1] <= 1:
        raise ValueError(f"lapse must be a range within [0, 1], got {lapse}")
    if len(click_prob) != 4 or not all(0 <= p <= 1 for p in click_prob):
        raise ValueError(f"click_prob must be 4 probabilities, got {click_prob}")
    if not 0 <= test_fraction <= 1 or not mean_gap > 0:
        raise ValueError(f"need 0 <= test_fraction <= 1 and mean_gap > 0, got {test_fraction} and {mean_gap}")
    for name, value in (("n_users", n_users), ("samples_per_user", samples_per_user),
                        ("items_per_category", items_per_category)):
        if value < 1:
            raise ValueError(f"{name} must be >= 1, got {value}")
    rng = np.random.default_rng(seed)
    chosen = np.argsort(rng.random((n_users, n_categories)), axis=1)[:, : n_interests + n_recent + n_unseen] + 1
    interests, recent_interests = chosen[:, :n_interests], chosen[:, n_interests:n_interests + n_recent]
    unseen = chosen[:, n_interests + n_recent:]
    lengths = rng.integers(min_len, max_len + 1, size=n_users)
    offsets = np.concatenate([[0], np.cumsum(lengths)])
    events = int(offsets[-1])
    owner = np.repeat(np.arange(n_users), lengths)
    pos = np.arange(events) - offsets[owner]
    in_window = pos >= (lengths - recent)[owner]

    # long-term interests: interest j of a user is alive before its lapse point (live ones: always)
    lapse_at = np.full((n_users, n_interests), np.iinfo(np.int64).max)
    lapse_at[:, n_interests - n_lapsed:] = (rng.uniform(*lapse, size=(n_users, n_lapsed)) * lengths[:, None]).astype(
        np.int64)
    pick = rng.integers(0, n_interests, size=events)
    alive = pos < lapse_at[owner, pick]
    draw = rng.random(events)
    own = np.where(in_window, draw < recent_rate, (draw < interest_rate) & alive)
    own_cat = np.where(in_window, recent_interests[owner, rng.integers(0, n_recent, size=events)],
                       interests[owner, pick])
    categories = np.where(own, own_cat, _other_categories_flat(rng, chosen, owner, n_categories))
    items = _items(rng, categories, items_per_category)

    gaps = np.ceil(rng.exponential(mean_gap, size=events + n_users)).astype(np.int64) + 1
    clock = np.cumsum(gaps)  # one extra gap per user: its request
    stride = np.arange(events) + owner  # event e is clock position e + (its user's index)
    start = rng.integers(1_500_000_000, 1_600_000_000, size=n_users) - clock[offsets[:-1] + np.arange(n_users)]
    times = clock[stride] + start[owner]
    request = clock[offsets[1:] + np.arange(n_users)] + start

    user = np.repeat(np.arange(n_users), samples_per_user)
    n_samples = user.shape[0]
    kind = rng.choice(np.array([LONG_TERM, SHORT_TERM, LAPSED, OTHER]) if n_lapsed else
                      np.array([LONG_TERM, SHORT_TERM, OTHER]), size=n_samples)
    live = rng.integers(0, n_interests - n_lapsed, size=n_samples)
    lapsed = n_interests - n_lapsed + rng.integers(0, max(n_lapsed, 1), size=n_samples)
    target_cat = np.select(
        [kind == LONG_TERM, kind == SHORT_TERM, kind == LAPSED],
        [interests[user, live], recent_interests[user, rng.integers(0, n_recent, size=n_samples)],
         interests[user, np.minimum(lapsed, n_interests - 1)]],
        unseen[user, rng.integers(0, n_unseen, size=n_samples)],
    )
    p_click = np.asarray(click_prob, dtype=np.float64)[kind]
    label = (rng.random(n_samples) < p_click).astype(np.float32)
    test_users = rng.permutation(n_users)[: int(round(test_fraction * n_users))]
    train = ~np.isin(user, test_users)
    return SequenceSamples(
        items=items.astype(np.int64),
        times=times.astype(np.int64),
        categories=categories.astype(np.int64),
        offsets=offsets.astype(np.int64),
        user=user.astype(np.int64),
        target=_items(rng, target_cat, items_per_category).astype(np.int64),
        target_time=request[user].astype(np.int64),
        target_category=target_cat.astype(np.int64),
        end=offsets[1:][user].astype(np.int64),
        label=label,
        train=train,
        n_items=n_categories * items_per_category,
        n_categories=n_categories,
    )
