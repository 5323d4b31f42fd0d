"""make_sequence_ctr: structure of the timestamped histories and where the click signal lives."""

from __future__ import annotations

import numpy as np
import pytest

from etaretrieval.datasets import SequenceSamples, make_sequence_ctr

SMALL = dict(n_users=400, max_len=120, recent=10, n_categories=40, items_per_category=5)


@pytest.fixture(scope="module")
def data() -> SequenceSamples:
    return make_sequence_ctr(**SMALL, seed=3)


def test_structure(data: SequenceSamples) -> None:
    lengths = np.diff(data.offsets)
    assert data.n_users == 400 and data.n_samples == 400 * 8 and data.n_items == 200 and data.n_categories == 40
    assert lengths.min() >= 60 and lengths.max() <= 120
    for name in ("items", "times", "categories", "offsets", "user", "target", "target_time", "target_category", "end"):
        assert getattr(data, name).dtype == np.int64, name
    np.testing.assert_array_equal(data.categories, (data.items - 1) // 5 + 1)  # items grouped by category
    np.testing.assert_array_equal(data.target_category, (data.target - 1) // 5 + 1)
    assert data.items.min() >= 1 and data.items.max() <= 200
    owner = np.repeat(np.arange(400), lengths)
    same_user = owner[1:] == owner[:-1]
    assert (np.diff(data.times)[same_user] > 0).all()  # strictly increasing within a user
    np.testing.assert_array_equal(data.end, data.offsets[data.user + 1])  # whole history visible
    assert (data.target_time > data.times[data.end - 1]).all()
    test_users = np.unique(data.user[~data.train])
    assert test_users.size == 80 and not np.isin(data.user[data.train], test_users).any()


def test_same_seed_same_data() -> None:
    a = make_sequence_ctr(**SMALL, seed=5)
    b = make_sequence_ctr(**SMALL, seed=np.random.default_rng(5))
    c = make_sequence_ctr(**SMALL, seed=6)
    for name in ("items", "times", "target", "label", "train"):
        np.testing.assert_array_equal(getattr(a, name), getattr(b, name))
    assert not np.array_equal(a.items, c.items)


def test_click_rate_follows_recency_and_long_term_interest() -> None:
    """Clicks depend on where (and when) the target's category was last seen in the history."""
    data = make_sequence_ctr(n_users=3000, max_len=200, recent=10, n_categories=60, items_per_category=3, seed=0)
    rows = np.arange(data.n_samples)
    batch = data.batch(rows, max_len=200)  # left padded: the recent window is the last 10 columns
    seen = (batch.categories == batch.target_category[:, None]) & batch.mask
    in_window = seen[:, -10:].any(1)
    last = np.where(seen, np.arange(200), -1).max(1)
    age = 199 - last  # behaviours newer than the last match
    never = last < 0
    old_only = ~in_window & ~never & (age > 0.5 * batch.lengths)  # last seen in the first half: lapsed
    recent_long = ~in_window & ~never & (age < 40)  # live long-term interest, just before the window
    rate = {name: data.label[m].mean() for name, m in
            (("window", in_window), ("live", recent_long), ("lapsed", old_only), ("never", never))}
    assert rate["window"] > 0.7 and rate["live"] > 0.7
    assert 0.15 < rate["lapsed"] < 0.35 and rate["never"] < 0.1
    # the recent window holds no long-term interest: live interests are missed by it
    assert recent_long.mean() > 0.15 and old_only.mean() > 0.1


@pytest.mark.parametrize("kwargs, match", [
    (dict(recent=60), "recent < min_len"),
    (dict(n_lapsed=4), "n_lapsed"),
    (dict(lapse=(0.6, 0.2)), "lapse"),
    (dict(click_prob=(0.5, 0.5, 0.5)), "click_prob"),
    (dict(test_fraction=1.5), "test_fraction"),
    (dict(n_categories=10), "n_categories"),
    (dict(n_unseen=0), "n_unseen"),
    (dict(n_users=0), "n_users"),
])
def test_bad_arguments(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        make_sequence_ctr(**{**SMALL, **kwargs})
