"""SequenceSamples.batches: one pass over the rows, padded or ragged, shuffled by seed, and its validation."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from test_samples import _store

from etaretrieval.datasets import RaggedSequenceBatch, SequenceBatch, SequenceSamples


def _numbered(seed: int, n_users: int, per_user: int, samples: int) -> SequenceSamples:
    """Random samples whose ``target_time`` is the sample's index, so a batch says which rows it holds."""
    data = _store(np.random.default_rng(seed), n_users, per_user, samples)
    return dataclasses.replace(data, target_time=np.arange(samples, dtype=np.int64))


def _assert_same_batch(got: SequenceBatch, want: SequenceBatch) -> None:
    for field in dataclasses.fields(SequenceBatch):
        a, b = getattr(got, field.name), getattr(want, field.name)
        if isinstance(b, np.ndarray):
            np.testing.assert_array_equal(a, b, err_msg=field.name)
            assert a.dtype == b.dtype, field.name
        else:
            assert a == b, field.name


@settings(deadline=None, max_examples=60)
@given(st.integers(0, 2**32 - 1), st.integers(1, 5), st.integers(0, 8), st.integers(0, 23), st.integers(1, 9),
       st.booleans(), st.booleans(), st.booleans(), st.one_of(st.none(), st.integers(1, 6)))
def test_every_row_once_in_order_or_in_the_seeds_order(seed, n_users, per_user, samples, batch_size, subset,
                                                      shuffle, drop_last, max_len):
    data = _numbered(seed, n_users, per_user, samples)
    rows = np.random.default_rng(seed).permutation(samples)[: samples // 2] if subset else None
    expected = np.arange(samples) if rows is None else rows
    if shuffle:
        expected = np.random.default_rng(seed).permutation(expected)
    kwargs = dict(rows=rows, shuffle=shuffle, seed=seed if shuffle else None, drop_last=drop_last)
    padded = list(data.batches(batch_size, max_len, **kwargs))
    ragged = list(data.batches(batch_size, max_len, ragged=True, **kwargs))

    full, rest = divmod(expected.size, batch_size)
    assert [b.target.shape[0] for b in padded] == [batch_size] * full + ([rest] if rest and not drop_last else [])
    seen = np.concatenate([b.target_time for b in padded] + [np.zeros(0, np.int64)])
    np.testing.assert_array_equal(seen, expected[: seen.size])  # each row once, in order; only a tail is dropped
    assert seen.size == (full * batch_size if drop_last else expected.size)
    assert len(ragged) == len(padded)
    start = 0
    for p, r in zip(padded, ragged):
        assert isinstance(p, SequenceBatch) and isinstance(r, RaggedSequenceBatch)
        chunk = expected[start:start + p.target.shape[0]]
        start += chunk.size
        width = max_len if max_len is not None else max(1, int(data.history_lengths()[chunk].max()))
        _assert_same_batch(p, data.batch(chunk, width))
        _assert_same_batch(r.padded(width), p)
        np.testing.assert_array_equal(r.offsets, data.ragged_batch(chunk, max_len).offsets)
        for b in range(chunk.size):  # the ragged row is the padded row's real behaviours
            row = slice(r.offsets[b], r.offsets[b + 1])
            for name in ("history", "times", "categories"):
                np.testing.assert_array_equal(getattr(r, name)[row], getattr(p, name)[b][p.mask[b]])


def test_the_seed_fixes_the_order_and_a_generator_draws_a_new_one_per_pass():
    data = _numbered(3, 4, 6, 40)

    def order(**kwargs):
        return np.concatenate([b.target_time for b in data.batches(7, 5, ragged=True, shuffle=True, **kwargs)])

    np.testing.assert_array_equal(order(seed=11), order(seed=11))
    assert not np.array_equal(order(seed=11), order(seed=12))
    rng, twin = np.random.default_rng(5), np.random.default_rng(5)
    first, second = order(seed=rng), order(seed=rng)
    assert not np.array_equal(first, second)  # one generator, two epochs: two orders ...
    np.testing.assert_array_equal(first, twin.permutation(40))  # ... those of the generator's seed
    np.testing.assert_array_equal(second, twin.permutation(40))
    np.testing.assert_array_equal(np.sort(first), np.arange(40))


@pytest.mark.parametrize("side", ["left", "right"])
def test_padded_batches_without_max_len_are_as_wide_as_their_longest_row(side):
    data = _numbered(1, 3, 9, 12)
    for batch in data.batches(5, padding_side=side):
        assert batch.padding_side == side
        assert batch.history.shape[1] == max(1, int(batch.lengths.max()))
        rows = batch.target_time
        np.testing.assert_array_equal(batch.lengths, data.history_lengths()[rows])


def test_empty_samples_or_rows_give_no_batch():
    data = _numbered(0, 2, 4, 5)
    empty = dataclasses.replace(data, **{name: getattr(data, name)[:0] for name in
                                         ("user", "target", "target_time", "target_category", "end", "label",
                                          "train")})
    assert empty.n_samples == 0
    for ragged in (False, True):
        assert list(empty.batches(3, ragged=ragged, shuffle=True, seed=0)) == []
        assert list(data.batches(3, 4, rows=np.zeros(0, np.int64), ragged=ragged)) == []
        assert list(data.batches(3, rows=[], ragged=ragged, drop_last=True)) == []
    assert len(list(data.batches(6, drop_last=True))) == 0
    assert len(list(data.batches(6, drop_last=False))) == 1


def test_rows_are_not_modified_and_may_be_read_only():
    data = _numbered(2, 3, 5, 10)
    rows = np.arange(10, dtype=np.int32)[::-1]
    rows.flags.writeable = False
    kept = rows.copy()
    batches = list(data.batches(4, 3, rows=rows, shuffle=True, seed=0))
    np.testing.assert_array_equal(rows, kept)
    assert sorted(np.concatenate([b.target_time for b in batches]).tolist()) == list(range(10))


def test_arguments_are_checked_when_called_and_named():
    data = _numbered(0, 2, 4, 6)
    cases = [
        (dict(batch_size=0), ValueError, "batch_size must be >= 1, got 0"),
        (dict(batch_size=-3), ValueError, "batch_size must be >= 1"),
        (dict(batch_size=2.0), TypeError, "batch_size must be an integer, got float"),
        (dict(batch_size=True), TypeError, "batch_size must be an integer, got bool"),
        (dict(batch_size="4"), TypeError, "batch_size must be an integer, got str"),
        (dict(max_len=0), ValueError, "max_len must be >= 1"),
        (dict(max_len=2.5), ValueError, "max_len must be >= 1"),
        (dict(ragged="yes"), TypeError, "ragged must be a bool, got str"),
        (dict(shuffle=1), TypeError, "shuffle must be a bool, got int"),
        (dict(drop_last=None), TypeError, "drop_last must be a bool"),
        (dict(seed=3), ValueError, "seed .* needs shuffle=True"),
        (dict(shuffle=True, seed="3"), TypeError, "seed must be an int, a numpy.random.Generator or None, got str"),
        (dict(shuffle=True, seed=1.5), TypeError, "seed must be an int"),
        (dict(rows=np.zeros((2, 2), np.int64)), ValueError, r"rows must have shape \(n,\), got shape \(2, 2\)"),
        (dict(rows=[0.0, 1.0]), TypeError, "rows must hold integer sample indices, got dtype float64"),
        (dict(rows=data.train), TypeError, r"np.flatnonzero\(mask\)"),
        (dict(rows=[0, 6]), ValueError, r"rows must hold sample indices in \[0, 6\), got range \[0, 6\]"),
        (dict(rows=[-1, 2]), ValueError, r"rows must hold sample indices in \[0, 6\)"),
        (dict(ragged=True, padding_side="left"), ValueError, "padding_side is for padded batches"),
        (dict(padding_side="middle"), ValueError, "padding_side must be 'left' or 'right'"),
    ]
    for kwargs, error, message in cases:
        kwargs = {"batch_size": 2, **kwargs}
        with pytest.raises(error, match=message):
            data.batches(**kwargs)  # refused at the call, before any batch is asked for
