"""The synthetic long-behaviour CTR generator."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from etaretrieval.datasets import LONG_TERM, OTHER, SHORT_TERM, make_long_behavior_ctr
from etaretrieval.datasets.synthetic import _other_categories

SMALL = dict(n_users=300, seq_len=120, recent=10, n_categories=40, items_per_category=5)


@pytest.fixture(scope="module")
def data():  # type: ignore[no-untyped-def]
    return make_long_behavior_ctr(**SMALL, seed=3)


def test_shapes_and_dtypes(data) -> None:  # type: ignore[no-untyped-def]
    assert data.sequences.shape == (300, 120) and data.sequences.dtype == np.int64
    assert data.item_category.shape == (201,) and data.n_items == 200 and data.n_categories == 40
    assert data.interests.shape == (300, 3) and data.recent_interests.shape == (300, 2)
    n = 300 * 8
    for name in ("user", "target", "kind"):
        assert getattr(data, name).shape == (n,) and getattr(data, name).dtype == np.int64
    assert data.label.shape == (n,) and data.label.dtype == np.float32
    assert set(np.unique(data.label)) == {0.0, 1.0}
    assert data.sequences.min() >= 0 and data.sequences.max() <= 200
    assert data.target.min() >= 1 and data.target.max() <= 200
    # every category holds items_per_category consecutive ids
    np.testing.assert_array_equal(np.bincount(data.item_category)[1:], np.full(40, 5))


def test_same_seed_same_data_other_seed_other_data() -> None:
    a, b = make_long_behavior_ctr(**SMALL, seed=7), make_long_behavior_ctr(**SMALL, seed=np.random.default_rng(7))
    c = make_long_behavior_ctr(**SMALL, seed=8)
    for name in ("sequences", "interests", "target", "label"):
        np.testing.assert_array_equal(getattr(a, name), getattr(b, name))
    assert not np.array_equal(a.sequences, c.sequences)


def test_padding_is_at_the_front_and_histories_long_enough(data) -> None:  # type: ignore[no-untyped-def]
    mask = data.mask
    lengths = mask.sum(1)
    assert lengths.min() >= 60 and lengths.max() <= 120  # min_len defaults to seq_len // 2
    np.testing.assert_array_equal(mask, np.arange(120) >= 120 - lengths[:, None])


def test_long_term_interests_live_only_in_the_old_part(data) -> None:  # type: ignore[no-untyped-def]
    cats = data.item_category[data.sequences]
    is_interest = (cats[..., None] == data.interests[:, None, :]).any(-1)
    is_recent = (cats[..., None] == data.recent_interests[:, None, :]).any(-1)
    assert not is_interest[:, -10:].any()
    assert not is_recent[:, :-10].any()
    # each interest is there, repeatedly (30% of >= 50 old behaviours over 3 interests)
    counts = (cats[:, :, None] == data.interests[:, None, :]).sum(1)
    assert np.median(counts) >= 3 and (counts > 0).mean() > 0.97
    # interests and short-term categories are distinct per user
    both = np.concatenate([data.interests, data.recent_interests], axis=1)
    assert all(len(set(row)) == 5 for row in both)


def test_targets_and_labels_follow_their_kind(data) -> None:  # type: ignore[no-untyped-def]
    cat = data.item_category[data.target]
    in_long = (cat[:, None] == data.interests[data.user]).any(1)
    in_recent = (cat[:, None] == data.recent_interests[data.user]).any(1)
    np.testing.assert_array_equal(in_long, data.kind == LONG_TERM)
    np.testing.assert_array_equal(in_recent, data.kind == SHORT_TERM)
    assert set(np.unique(data.kind)) == {LONG_TERM, SHORT_TERM, OTHER}


def test_click_rates() -> None:
    data = make_long_behavior_ctr(n_users=2000, seq_len=40, recent=5, click_prob=(0.7, 0.2), seed=0)
    interest = data.kind != OTHER
    assert abs(data.label[interest].mean() - 0.7) < 0.02
    assert abs(data.label[~interest].mean() - 0.2) < 0.02


@settings(deadline=None, max_examples=50)
@given(seed=st.integers(0, 2**32 - 1), n_categories=st.integers(2, 12), m=st.integers(1, 5))
def test_other_categories_avoid_the_excluded(seed: int, n_categories: int, m: int) -> None:
    m = min(m, n_categories - 1)
    rng = np.random.default_rng(seed)
    excluded = np.argsort(rng.random((4, n_categories)), axis=1)[:, :m] + 1
    drawn = _other_categories(rng, excluded, (4, 300), n_categories)
    for row in range(4):
        allowed = set(range(1, n_categories + 1)) - set(excluded[row].tolist())
        assert set(drawn[row].tolist()) == allowed  # 300 draws hit every allowed category


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        (dict(recent=0), "1 <= recent < min_len"),
        (dict(recent=60), "1 <= recent < min_len"),
        (dict(min_len=130), "min_len <= seq_len"),
        (dict(n_categories=5), "n_categories > n_interests"),
        (dict(n_interests=0), "n_interests >= 1"),
        (dict(samples_per_user=0), "samples_per_user must be >= 1"),
        (dict(n_users=0), "n_users must be >= 1"),
    ],
)
def test_invalid_parameters(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        make_long_behavior_ctr(**{**SMALL, **kwargs})
