"""Ragged top-K CUDA kernels against the CPU's, exactly, under numba's CUDA simulator.

Run in a process of their own::

    NUMBA_ENABLE_CUDASIM=1 python -m pytest tests/test_cuda_sim_ragged.py -m cudasim -p no:cacheprovider

Tiles of a few positions and blocks of a few threads, so that rows cross many
tiles (each with its partial list, merged by rank) with few simulated threads.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
import reference as ref
from hypothesis import given, settings
from hypothesis import strategies as st
from test_cuda_sim import dev, host
from test_ragged import ID_DTYPES, RaggedCase, ragged_cases

from etaretrieval.ragged import topk_hamming_lookup_ragged, topk_hamming_ragged

pytestmark = pytest.mark.cudasim

#: The simulator is slow: few examples, no deadline.
FEW = settings(max_examples=30, deadline=None, derandomize=True, database=None)


@contextlib.contextmanager
def tiny(threads: int, tile: int, merge: int) -> Iterator[None]:
    from etaretrieval.cuda import config
    from etaretrieval.cuda import ragged as cuda_ragged

    old = config.TOPK_THREADS, cuda_ragged.TILE, cuda_ragged.MERGE_THREADS
    config.TOPK_THREADS, cuda_ragged.TILE, cuda_ragged.MERGE_THREADS = threads, tile, merge
    try:
        yield
    finally:
        config.TOPK_THREADS, cuda_ragged.TILE, cuda_ragged.MERGE_THREADS = old


def same(got: tuple[Any, Any], want: tuple[np.ndarray, np.ndarray]) -> None:
    idx, dist = host(got[0]), host(got[1])
    assert idx.dtype == np.int64 and dist.dtype == np.int32
    np.testing.assert_array_equal(idx, want[0])
    np.testing.assert_array_equal(dist, want[1])


CONFIG = st.sampled_from([(4, 5, 8), (3, 1, 16), (8, 64, 32)])


@FEW
@given(case=ragged_cases(dtypes=ID_DTYPES, max_len=25), config=CONFIG)
def test_lookup_equals_cpu(case: RaggedCase, config: tuple[int, int, int]) -> None:
    want = case.lookup()
    with tiny(*config):
        got = topk_hamming_lookup_ragged(dev(case.query), dev(case.ids), dev(case.table), case.k, dev(case.offsets),
                                         mask=dev(case.mask), padding_id=case.padding_id)
    same(got, want)


@FEW
@given(case=ragged_cases(max_len=25), config=CONFIG)
def test_topk_equals_cpu(case: RaggedCase, config: tuple[int, int, int]) -> None:
    want = case.topk()
    with tiny(*config):
        got = topk_hamming_ragged(dev(case.query), dev(case.keys), case.k, dev(case.offsets), mask=dev(case.mask))
    same(got, want)


@pytest.mark.parametrize("k", [0, 2, 40])
def test_all_ties_across_tiles(k: int) -> None:
    keys = np.full((37, 2), 7, dtype=np.uint64)
    offsets = np.array([3, 3, 30, 37])
    query = np.zeros((3, 2), dtype=np.uint64)
    want = ref.topk_hamming_ragged(query, keys, k, offsets)
    with tiny(4, 5, 8):
        same(topk_hamming_ragged(dev(query), dev(keys), k, dev(offsets)), want)


def test_bad_id_is_the_cpus_error() -> None:
    table = np.arange(5, dtype=np.uint64)[:, None]
    ids = np.array([9, 0, 1, 2, 3, 4, 4, 7, 8], dtype=np.int32)
    offsets = np.array([1, 3, 3, 9])
    q = np.zeros((3, 1), dtype=np.uint64)
    with pytest.raises(IndexError) as cpu:
        topk_hamming_lookup_ragged(q, ids, table, 2, offsets)
    with tiny(2, 2, 4), pytest.raises(IndexError, match=re.escape(str(cpu.value))):
        topk_hamming_lookup_ragged(dev(q), dev(ids), dev(table), 2, dev(offsets))
    with tiny(2, 2, 4), pytest.raises(ValueError, match="offsets must be non-decreasing"):
        topk_hamming_lookup_ragged(dev(q), dev(ids), dev(table), 2, dev(np.array([1, 3, 2, 9])))


def test_empty_batch_and_rows() -> None:
    table = np.arange(4, dtype=np.uint64)[:, None]
    with tiny(4, 5, 8):
        idx, dist = topk_hamming_ragged(dev(table[:0]), dev(table), 3, dev(np.array([2])))
        assert host(idx).shape == (0, 3) and host(dist).shape == (0, 3)
        idx, dist = topk_hamming_lookup_ragged(dev(table[:2]), dev(np.array([1, 2])), dev(table), 3,
                                               dev(np.array([1, 1, 1])))
        assert (host(idx) == -1).all() and (host(dist) == -1).all()


@settings(max_examples=6, deadline=None, derandomize=True, database=None)  # two kernels per example: slow here
@given(lens=st.lists(st.integers(0, 8), min_size=0, max_size=3), lead=st.integers(0, 2),
       tau=st.sampled_from([1, 3, 8]), words=st.integers(1, 2), d=st.integers(1, 3), masked=st.booleans(),
       dtype=st.sampled_from([np.float32, np.float64]), seed=st.integers(0, 2**32 - 1))
def test_sdim_equals_cpu(lens: list[int], lead: int, tau: int, words: int, d: int, masked: bool, dtype: type,
                         seed: int) -> None:
    from etaretrieval.cuda import sdim as cuda_sdim
    from etaretrieval.ragged import sdim_group_sums_ragged, sdim_pool_ragged

    rng = np.random.default_rng(seed)
    bits = 64 * words - (64 * words) % tau
    offsets = lead + np.concatenate([[0], np.cumsum(lens, dtype=np.int64)])
    total = int(offsets[-1]) + 1
    keys = ref.random_signatures(rng, (total, words), style="pool", bits=bits)
    values = rng.standard_normal((total, d)).astype(dtype)
    query = keys[rng.integers(0, total, size=len(lens))]
    mask = rng.random(total) < 0.7 if masked else None
    args = (tau, offsets)
    want_sums = sdim_group_sums_ragged(query, keys, values, *args, bits=bits, mask=mask)
    want_pool = sdim_pool_ragged(query, keys, values, *args, bits=bits, mask=mask)
    old = cuda_sdim.THREADS
    cuda_sdim.THREADS = 4
    try:
        got_sums = sdim_group_sums_ragged(dev(query), dev(keys), dev(values), tau, dev(offsets), bits=bits,
                                          mask=dev(mask))
        got_pool = sdim_pool_ragged(dev(query), dev(keys), dev(values), tau, dev(offsets), bits=bits, mask=dev(mask))
    finally:
        cuda_sdim.THREADS = old
    np.testing.assert_array_equal(host(got_sums), want_sums)
    np.testing.assert_array_equal(host(got_pool), want_pool)
