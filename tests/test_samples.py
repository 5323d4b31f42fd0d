"""SequenceSamples: padded batches against a per-row loop, and validation."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from etaretrieval.datasets import SequenceSamples


def _store(rng: np.random.Generator, n_users: int, per_user: int, samples: int) -> SequenceSamples:
    counts = rng.integers(0, per_user + 1, size=n_users)
    offsets = np.concatenate([[0], np.cumsum(counts)])
    events = int(offsets[-1])
    user = rng.integers(0, n_users, size=samples)
    end = offsets[user] + (rng.random(samples) * (counts[user] + 1)).astype(np.int64)
    return SequenceSamples(
        items=rng.integers(1, 50, size=events), times=np.arange(events) * 7 + 3,
        categories=rng.integers(1, 5, size=events), offsets=offsets, user=user,
        target=rng.integers(1, 50, size=samples), target_time=rng.integers(0, 1000, size=samples),
        target_category=rng.integers(1, 5, size=samples), end=end,
        label=(rng.random(samples) < 0.5).astype(np.float32), train=rng.random(samples) < 0.8,
        n_items=49, n_categories=4,
    )


@settings(deadline=None, max_examples=60)
@given(st.integers(0, 2**32 - 1), st.integers(1, 6), st.integers(0, 12), st.integers(0, 10), st.integers(1, 9),
       st.sampled_from(["left", "right"]))
def test_batch_matches_a_loop(seed, n_users, per_user, samples, max_len, side):
    data = _store(np.random.default_rng(seed), n_users, per_user, samples)
    rows = np.arange(samples)[::-1]
    batch = data.batch(rows, max_len, padding_side=side)
    for b, s in enumerate(rows):
        seen = np.arange(data.offsets[data.user[s]], data.end[s])[-max_len:]
        n = seen.size
        assert batch.lengths[b] == n == batch.mask[b].sum()
        cols = np.arange(max_len - n, max_len) if side == "left" else np.arange(n)
        assert batch.mask[b, cols].all()
        for name, values in (("history", data.items), ("times", data.times), ("categories", data.categories)):
            got = getattr(batch, name)[b]
            np.testing.assert_array_equal(got[cols], values[seen])
            assert (np.delete(got, cols) == 0).all()
        assert batch.target[b] == data.target[s] and batch.label[b] == data.label[s]
        assert batch.target_time[b] == data.target_time[s] and batch.target_category[b] == data.target_category[s]
    assert (data.history_lengths() == data.end - data.offsets[data.user]).all()


def test_validation_names_the_field():
    data = _store(np.random.default_rng(0), 3, 5, 4)
    fields = {name: getattr(data, name) for name in data.__dataclass_fields__}
    with pytest.raises(ValueError, match="end must lie within"):
        SequenceSamples(**{**fields, "end": data.offsets[data.user + 1] + 1})
    with pytest.raises(ValueError, match=r"times must have shape \(E,\)"):
        SequenceSamples(**{**fields, "times": data.times[:-1]})
    with pytest.raises(ValueError, match="user must hold users in"):
        SequenceSamples(**{**fields, "user": data.user + 3})
    with pytest.raises(ValueError, match="offsets must be"):
        SequenceSamples(**{**fields, "offsets": data.offsets[:-1]})
    with pytest.raises(ValueError, match="max_len must be >= 1"):
        data.batch([0], 0)
    with pytest.raises(ValueError, match="padding_side must be"):
        data.batch([0], 3, padding_side="middle")  # type: ignore[arg-type]


@settings(deadline=None, max_examples=40)
@given(st.integers(0, 2**32 - 1), st.booleans())
def test_item_categories_is_the_map_when_there_is_one(seed: int, consistent: bool) -> None:
    rng = np.random.default_rng(seed)
    data = _store(rng, 5, 12, 8)
    truth = rng.integers(1, 5, size=50)
    truth[0] = 0
    if consistent:
        data = dataclasses.replace(data, categories=truth[data.items], target_category=truth[data.target])
    table = data.item_categories()
    ids = np.concatenate([data.items, data.target])
    cats = np.concatenate([data.categories, data.target_category])
    one_per_item = all(np.unique(cats[ids == i]).size <= 1 for i in np.unique(ids))
    if not one_per_item:
        assert table is None
    else:
        assert table is not None and table.dtype == np.int64 and table.shape == (50,)
        assert (table[ids] == cats).all() and (np.delete(table, ids) == 0).all()
    assert dataclasses.replace(data, categories=None).item_categories() is None
    assert dataclasses.replace(data, n_categories=0).item_categories() is None


@settings(deadline=None, max_examples=60)
@given(st.integers(0, 2**32 - 1), st.integers(1, 6), st.integers(0, 12), st.integers(0, 10),
       st.one_of(st.none(), st.integers(1, 9)), st.sampled_from(["left", "right"]), st.booleans())
def test_ragged_batch_holds_the_rows_back_to_back(seed, n_users, per_user, samples, max_len, side, categories):
    """Each row is the sample's visible behaviours (the last max_len of them), unpadded; padded, the ragged
    batch equals the padded batch of the same rows."""
    data = _store(np.random.default_rng(seed), n_users, per_user, samples)
    if not categories:
        data = dataclasses.replace(data, categories=None, target_category=None)
    rows = np.random.default_rng(seed).permutation(samples)
    ragged = data.ragged_batch(rows, max_len)
    assert ragged.offsets.dtype == np.int64 and ragged.offsets.shape == (samples + 1,) and ragged.offsets[0] == 0
    assert ragged.history.shape == ragged.times.shape == (int(ragged.offsets[-1]),)
    for b, s in enumerate(rows):
        seen = np.arange(data.offsets[data.user[s]], data.end[s])[-max_len if max_len else None:]
        cut = slice(ragged.offsets[b], ragged.offsets[b + 1])
        assert ragged.lengths[b] == seen.size
        for name, values in (("history", data.items), ("times", data.times), ("categories", data.categories)):
            got = getattr(ragged, name)
            if values is None:
                assert got is None
            else:
                np.testing.assert_array_equal(got[cut], values[seen])
    width = max_len or max(1, int(data.history_lengths().max()) if samples else 1)
    padded, want = ragged.padded(max_len, padding_side=side), data.batch(rows, width, padding_side=side)
    for field in dataclasses.fields(want):
        got, expected = getattr(padded, field.name), getattr(want, field.name)
        if isinstance(expected, np.ndarray):
            np.testing.assert_array_equal(got, expected, err_msg=field.name)
        else:
            assert got == expected, field.name
    if max_len is None or max_len >= 2:  # a narrower block keeps each row's last behaviours
        shorter = ragged.padded(2, padding_side=side)
        np.testing.assert_array_equal(shorter.history, data.batch(rows, 2, padding_side=side).history)


def test_ragged_batch_retrieves_as_the_padded_batch():
    """The batch form the offsets= functions take: the same top-K as the padded batch with lengths."""
    import etaretrieval as er
    from etaretrieval.ragged import topk_hamming_lookup_ragged

    data = _store(np.random.default_rng(3), 6, 40, 30)
    table = np.random.default_rng(4).integers(0, 2**64, size=(50, 1), dtype=np.uint64)
    rows = np.arange(30)
    ragged, padded = data.ragged_batch(rows), data.batch(rows, 40, padding_side="right")
    query = table[ragged.target]
    got = topk_hamming_lookup_ragged(query, ragged.history, table, 5, ragged.offsets)
    want = er.topk_hamming_lookup(query, padded.history, table, 5, lengths=padded.lengths)
    np.testing.assert_array_equal(got[0], want[0])
    np.testing.assert_array_equal(got[1], want[1])


def test_ragged_batch_validation():
    data = _store(np.random.default_rng(0), 3, 5, 4)
    for bad in (0, -1, 2.5, True):
        with pytest.raises(ValueError, match="max_len must be >= 1"):
            data.ragged_batch([0], bad)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"rows must have shape \(B,\)"):
        data.ragged_batch([[0]])
    with pytest.raises(ValueError, match="padding_side must be"):
        data.ragged_batch([0]).padded(padding_side="middle")  # type: ignore[arg-type]
    empty = data.ragged_batch([])
    assert empty.offsets.tolist() == [0] and empty.history.size == 0 and empty.padded().history.shape == (0, 1)


def test_ragged_batch_of_generated_samples_holds_only_the_behaviours():
    """On make_sequence_ctr's long, uneven histories the ragged batch holds sum(lengths) entries where the
    padded batch holds B x L_max."""
    from etaretrieval.datasets import make_sequence_ctr

    data = make_sequence_ctr(n_users=20, max_len=300, seed=1)
    rows = np.arange(min(64, data.n_samples))
    lengths = data.history_lengths()[rows]
    ragged = data.ragged_batch(rows)
    assert ragged.history.size == lengths.sum() < rows.size * lengths.max()
    np.testing.assert_array_equal(ragged.lengths, lengths)
    padded = data.batch(rows, int(lengths.max()))
    np.testing.assert_array_equal(ragged.padded().history, padded.history)
    np.testing.assert_array_equal(ragged.padded().categories, padded.categories)
