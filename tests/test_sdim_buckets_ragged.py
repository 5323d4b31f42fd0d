"""SDIM bucket summaries of ragged rows (flat keys / values + offsets) against the padded path and the reference.

The simulator test at the end runs in a process of its own::

    NUMBA_ENABLE_CUDASIM=1 python -m pytest tests/test_sdim_buckets_ragged.py -m cudasim -p no:cacheprovider
"""

from __future__ import annotations

import dataclasses
import re

import numpy as np
import pytest
import reference as ref
from hypothesis import given, settings
from hypothesis import strategies as st
from test_cuda_sim import dev, host

import etaretrieval as er
from etaretrieval.ragged import sdim_buckets_ragged


@dataclasses.dataclass
class Case:
    keys: np.ndarray  # (T, W) flat signatures
    values: np.ndarray  # (T, d)
    offsets: np.ndarray
    tau: int
    bits: int
    mask: np.ndarray | None

    def rows(self) -> list[tuple[int, int]]:
        return list(zip(self.offsets[:-1].tolist(), self.offsets[1:].tolist()))

    def padded(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray | None]:
        """``(keys, values, lengths, mask)``: the rows padded to the longest (padding keys and values not zero)."""
        lengths = np.diff(self.offsets).astype(np.int64)
        width = int(lengths.max()) if lengths.size else 0
        batch, words, d = len(lengths), self.keys.shape[1], self.values.shape[1]
        pk = np.full((batch, width, words), np.uint64(2**64 - 1), dtype=np.uint64)
        pv = np.full((batch, width, d), 7.0, dtype=self.values.dtype)
        pm = None if self.mask is None else np.zeros((batch, width), dtype=bool)
        for b, (lo, hi) in enumerate(self.rows()):
            pk[b, : hi - lo], pv[b, : hi - lo] = self.keys[lo:hi], self.values[lo:hi]
            if pm is not None and self.mask is not None:
                pm[b, : hi - lo] = self.mask[lo:hi]
        return pk, pv, lengths, pm


@st.composite
def cases(draw: st.DrawFn, *, max_batch: int = 5, max_len: int = 20) -> Case:
    """Rows of 0..max_len positions, with keys and values before ``offsets[0]`` and past ``offsets[-1]``."""
    lens = draw(st.lists(st.integers(0, max_len), min_size=0, max_size=max_batch))
    lead, tail = draw(st.integers(0, 3)), draw(st.integers(0, 3))
    tau = draw(st.sampled_from([1, 2, 3, 5, 7, 8]))
    words = draw(st.integers(1, 3))
    lo_groups, hi_groups = -(-(64 * (words - 1) + 1) // tau), 64 * words // tau
    groups = draw(st.integers(lo_groups, hi_groups))
    bits = groups * tau
    d = draw(st.integers(1, 4))
    dtype = draw(st.sampled_from([np.float32, np.float64]))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    offsets = (lead + np.concatenate([[0], np.cumsum(lens, dtype=np.int64)])).astype(
        draw(st.sampled_from([np.int32, np.int64])))
    total = int(offsets[-1]) + tail
    # few distinct signatures, so that codes repeat within a row
    keys = ref.random_signatures(rng, (total, words), style="pool", bits=bits)
    values = rng.standard_normal((total, d)).astype(dtype)
    mask = rng.random(total) < 0.7 if draw(st.booleans()) else None
    return Case(keys, values, offsets, tau, bits, mask)


def frozen_strided(a: np.ndarray) -> np.ndarray:
    """``a``'s values as a read-only view with a stride along the last axis (not C-contiguous)."""
    wide = np.zeros(a.shape[:-1] + (2 * a.shape[-1],), dtype=a.dtype)
    wide[..., ::2] = a
    view = wide[..., ::2]
    view.flags.writeable = False
    return view


@given(case=cases(), frozen=st.booleans())
def test_ragged_equals_each_row_alone_and_padded(case: Case, frozen: bool) -> None:
    """Row ``b``'s summary is the padded call on that row alone, and on the padded block with lengths, bit for bit."""
    keys, values, mask = case.keys, case.values, case.mask
    if frozen:
        keys, values = frozen_strided(keys), frozen_strided(values)
        mask = None if mask is None else frozen_strided(mask[:, None])[:, 0]
    before = [a.copy() for a in (case.keys, case.values, case.offsets)]
    got = sdim_buckets_ragged(keys, values, case.tau, case.offsets, bits=case.bits, mask=mask)
    batch, groups, d = len(case.offsets) - 1, case.bits // case.tau, values.shape[1]
    assert got.dtype == values.dtype and got.shape == (batch, groups, 1 << case.tau, d)
    for b, (lo, hi) in enumerate(case.rows()):
        alone = er.sdim_buckets(case.keys[lo:hi], case.values[lo:hi], case.tau, bits=case.bits,
                                mask=None if case.mask is None else case.mask[lo:hi])
        np.testing.assert_array_equal(got[b], alone)
    pk, pv, lengths, pm = case.padded()
    kw = {"lengths": lengths} if pm is None else {"mask": pm}
    if batch:
        np.testing.assert_array_equal(got, er.sdim_buckets(pk, pv, case.tau, bits=case.bits, **kw))
    np.testing.assert_array_equal(got, ref.sdim_buckets(pk, pv, case.tau, case.bits, **kw))
    np.testing.assert_array_equal(er.sdim_buckets(keys, values, case.tau, bits=case.bits, mask=mask,
                                                  offsets=case.offsets), got)
    for a, b in zip(before, (case.keys, case.values, case.offsets)):
        np.testing.assert_array_equal(a, b)


def test_serving_from_ragged_summaries_equals_pooling_each_row() -> None:
    """A ragged row's summary serves a target as :func:`sdim_pool` on that row does."""
    rng = np.random.default_rng(5)
    keys = ref.random_signatures(rng, (40, 2), style="pool", bits=120)
    values = rng.standard_normal((40, 3)).astype(np.float32)
    offsets = np.array([3, 3, 20, 38], dtype=np.int32)
    summary = er.sdim_buckets(keys, values, 3, bits=120, offsets=offsets)
    query = keys[rng.integers(0, 40, size=3)]
    served = er.sdim_from_buckets(query, summary)
    pooled = er.sdim_pool(query, keys, values, 3, bits=120, offsets=offsets)
    np.testing.assert_array_equal(served, pooled)


def test_empty_batch_and_empty_rows() -> None:
    keys = np.arange(5, dtype=np.uint64)[:, None]
    values = np.ones((5, 2), np.float32)
    out = er.sdim_buckets(keys, values, 2, offsets=np.array([4], dtype=np.int32))
    assert out.shape == (0, 32, 4, 2) and out.dtype == np.float32
    out = er.sdim_buckets(keys, values, 2, offsets=[1, 1, 1])
    assert out.shape == (2, 32, 4, 2) and not out.any()


def test_bad_offsets_are_named() -> None:
    keys = np.zeros((4, 1), np.uint64)
    values = np.zeros((4, 2))
    cases = [
        ([0, 3, 2], ValueError, "offsets must be non-decreasing, got offsets[2] = 2 < offsets[1] = 3"),
        ([-1, 2, 4], ValueError, "offsets must be >= 0, got offsets[0] = -1"),
        ([0, 2, 5], ValueError, "offsets must lie within the 4 entries of keys, got offsets[2] = 5"),
        ([], ValueError, "offsets must have shape (B + 1,) for B rows, got shape (0,)"),
        ([[0, 2]], ValueError, "offsets must have shape (B + 1,) for B rows, got shape (1, 2)"),
        (np.array([0.0, 2.0]), TypeError, "offsets must have an integer dtype (int32 or int64), got dtype float64"),
    ]
    for offsets, error, message in cases:
        with pytest.raises(error, match=re.escape(message)):
            sdim_buckets_ragged(keys, values, 1, offsets)
        with pytest.raises(error, match=re.escape(message)):
            er.sdim_buckets(keys, values, 1, offsets=offsets)


def test_bad_keys_values_mask_and_lengths_are_named() -> None:
    keys = np.zeros((4, 1), np.uint64)
    values = np.zeros((4, 2))
    with pytest.raises(ValueError, match="pass either offsets .* or lengths"):
        er.sdim_buckets(keys, values, 1, offsets=[0, 2, 4], lengths=[2, 2])
    with pytest.raises(ValueError, match=re.escape("keys must have shape (T, W): the flat keys of every row")):
        er.sdim_buckets(keys[None], values, 1, offsets=[0, 2, 4])
    with pytest.raises(ValueError, match=re.escape("values must have shape (4, d), one row per key, got shape (3, 2)")):
        er.sdim_buckets(keys, values[:3], 1, offsets=[0, 2, 4])
    with pytest.raises(TypeError, match="values must have dtype float32 or float64, got dtype int64"):
        er.sdim_buckets(keys, values.astype(np.int64), 1, offsets=[0, 2, 4])
    with pytest.raises(ValueError, match=re.escape("mask must have shape (4,)")):
        er.sdim_buckets(keys, values, 1, offsets=[0, 2, 4], mask=np.ones((2, 2), bool))
    with pytest.raises(TypeError, match="mask must have dtype bool"):
        er.sdim_buckets(keys, values, 1, offsets=[0, 2, 4], mask=np.ones(4, np.int8))
    with pytest.raises(ValueError, match="tau must divide bits"):
        er.sdim_buckets(keys, values, 3, offsets=[0, 2, 4])
    with pytest.raises(ValueError, match="above the limit"):
        er.sdim_buckets(np.zeros((4, 4), np.uint64), np.zeros((4, 65)), 16, offsets=[0, 2, 4])


@pytest.mark.cudasim
@settings(max_examples=6, deadline=None, derandomize=True, database=None)  # a kernel per example: slow here
@given(case=cases(max_batch=3, max_len=9))
def test_cuda_equals_cpu(case: Case) -> None:
    from etaretrieval.cuda import sdim as cuda_sdim

    want = sdim_buckets_ragged(case.keys, case.values, case.tau, case.offsets, bits=case.bits, mask=case.mask)
    old = cuda_sdim.THREADS
    cuda_sdim.THREADS = 4  # rows cross several tiles of codes
    try:
        got = er.sdim_buckets(dev(case.keys), dev(case.values), case.tau, bits=case.bits, offsets=dev(case.offsets),
                              mask=dev(case.mask))
    finally:
        cuda_sdim.THREADS = old
    np.testing.assert_array_equal(host(got), want)


@pytest.mark.cudasim
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("masked", [False, True])
def test_cuda_fixed_rows_across_tiles(dtype: type, masked: bool) -> None:
    """Rows longer than a block's tile, an empty row, values before ``offsets[0]``: the CPU's summaries."""
    from etaretrieval.cuda import sdim as cuda_sdim

    rng = np.random.default_rng(11)
    keys = ref.random_signatures(rng, (30, 2), style="pool", bits=126)
    values = rng.standard_normal((30, 3)).astype(dtype)
    offsets = np.array([2, 13, 13, 29], dtype=np.int32)
    mask = rng.random(30) < 0.6 if masked else None
    want = sdim_buckets_ragged(keys, values, 3, offsets, bits=126, mask=mask)
    assert want.any()
    old = cuda_sdim.THREADS
    cuda_sdim.THREADS = 4
    try:
        got = sdim_buckets_ragged(dev(keys), dev(values), 3, dev(offsets), bits=126, mask=dev(mask))
    finally:
        cuda_sdim.THREADS = old
    np.testing.assert_array_equal(host(got), want)
