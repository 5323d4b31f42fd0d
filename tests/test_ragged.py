"""Ragged top-K (flat values + offsets) against the reference and against the padded path (API.md section 8)."""

from __future__ import annotations

import contextlib
import dataclasses
import re
from collections.abc import Callable, Iterator

import numpy as np
import pytest
import reference as ref
from hypothesis import given
from hypothesis import strategies as st

import etaretrieval as er
from etaretrieval.cpu import ragged as cpu_ragged
from etaretrieval.ragged import (
    check_offsets_alone,
    sdim_group_sums_ragged,
    sdim_pool_ragged,
    topk_hamming_lookup_ragged,
    topk_hamming_ragged,
)

BITS = st.one_of(st.integers(1, 300), st.sampled_from([64, 65, 128, 256, 1024]))
STYLE = st.sampled_from(["random", "pool", "sparse"])
ID_DTYPES = [np.int32, np.int64, np.uint16, np.uint64, np.int8, np.uint32]


@dataclasses.dataclass
class RaggedCase:
    query: np.ndarray
    keys: np.ndarray  # (T, W) flat signatures
    ids: np.ndarray  # (T,) flat ids into table
    table: np.ndarray
    offsets: np.ndarray
    k: int
    mask: np.ndarray | None = None
    padding_id: int | None = None

    def lookup(self, **kw: object) -> tuple[np.ndarray, np.ndarray]:
        args = {"mask": self.mask, "padding_id": self.padding_id, **kw}
        return topk_hamming_lookup_ragged(self.query, self.ids, self.table, self.k, self.offsets, **args)

    def topk(self, **kw: object) -> tuple[np.ndarray, np.ndarray]:
        return topk_hamming_ragged(self.query, self.keys, self.k, self.offsets, **{"mask": self.mask, **kw})

    def padded(self, values: np.ndarray, fill: object) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
        """The rows of ``values`` padded to the longest with ``fill``: ``(padded, lengths, mask)``."""
        lengths = np.diff(self.offsets).astype(np.int64)
        width = int(lengths.max()) if lengths.size else 0
        out = np.empty((len(lengths), width) + values.shape[1:], dtype=values.dtype)
        out[...] = fill
        mask = None if self.mask is None else np.zeros((len(lengths), width), dtype=bool)
        for b, (lo, hi) in enumerate(zip(self.offsets[:-1], self.offsets[1:])):
            out[b, : hi - lo] = values[lo:hi]
            if mask is not None:
                mask[b, : hi - lo] = self.mask[lo:hi]
        return out, lengths, mask

    def arrays(self) -> list[np.ndarray]:
        return [a for a in (self.query, self.keys, self.ids, self.table, self.offsets, self.mask) if a is not None]


@st.composite
def ragged_cases(draw: st.DrawFn, *, dtypes: list[type] = [np.int64], max_len: int = 40) -> RaggedCase:  # noqa: B006
    """Rows of 0..max_len positions, values before ``offsets[0]`` and after ``offsets[-1]`` holding bad ids."""
    batch = draw(st.integers(0, 6))
    lens = draw(st.lists(st.integers(0, max_len), min_size=batch, max_size=batch))
    lead, tail = draw(st.integers(0, 3)), draw(st.integers(0, 3))
    nrows = draw(st.integers(1, 30))
    bits = draw(BITS)
    words = ref.words_for(bits)
    dtype = draw(st.sampled_from(dtypes))
    k = draw(st.one_of(st.integers(0, max(lens, default=0) + 3), st.integers(0, 3)))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    offsets = (lead + np.concatenate([[0], np.cumsum(lens, dtype=np.int64)])).astype(
        draw(st.sampled_from([np.int32, np.int64])))
    total = int(offsets[-1]) + tail
    table = ref.random_signatures(rng, (nrows, words), style=draw(STYLE), bits=bits)
    ids = rng.integers(0, nrows, size=total).astype(dtype)
    bad = min(int(np.iinfo(dtype).max), nrows + 7)
    ids[:lead] = bad  # outside every row: never read
    ids[total - tail :] = bad
    keys = table[np.minimum(ids, nrows - 1)]
    mask = padding_id = None
    if draw(st.booleans()):
        mask = rng.random(total) < 0.7
        if mask.size and draw(st.booleans()):  # bad ids where masked out: never looked up
            ids[~mask] = bad
    if draw(st.booleans()):
        padding_id = bad if draw(st.booleans()) else int(ids[lead]) if total > lead + tail else 0
        ids[rng.random(total) < 0.2] = padding_id
    query = ref.random_signatures(rng, (batch, words), bits=bits)
    return RaggedCase(query, keys, ids, table, offsets, k, mask, padding_id)


@contextlib.contextmanager
def tiny_pieces(n: int) -> Iterator[None]:
    """Cut every row longer than ``n`` positions into pieces (each with its partial top-K)."""
    old = cpu_ragged.MIN_PIECE
    cpu_ragged.MIN_PIECE = n
    try:
        yield
    finally:
        cpu_ragged.MIN_PIECE = old


def check(got: tuple[np.ndarray, np.ndarray], want: tuple[np.ndarray, np.ndarray], batch: int, k: int) -> None:
    idx, dist = got
    assert idx.dtype == np.int64 and dist.dtype == np.int32
    assert idx.shape == (batch, k) and dist.shape == (batch, k)
    np.testing.assert_array_equal(idx, want[0])
    np.testing.assert_array_equal(dist, want[1])


@given(case=ragged_cases(dtypes=ID_DTYPES))
def test_lookup_matches_reference_and_padded(case: RaggedCase) -> None:
    got = case.lookup()
    batch = case.query.shape[0]
    check(got, ref.topk_hamming_lookup_ragged(case.query, case.ids, case.table, case.k, case.offsets,
                                              mask=case.mask, padding_id=case.padding_id), batch, case.k)
    fill = case.padding_id if case.padding_id is not None else 0
    ids, lengths, mask = case.padded(case.ids, fill)
    kw = {"mask": mask} if mask is not None else {"lengths": lengths}
    check(got, er.topk_hamming_lookup(case.query, ids, case.table, case.k, padding_id=case.padding_id, **kw),
          batch, case.k)


@given(case=ragged_cases())
def test_topk_matches_reference_and_padded(case: RaggedCase) -> None:
    got = case.topk()
    batch = case.query.shape[0]
    check(got, ref.topk_hamming_ragged(case.query, case.keys, case.k, case.offsets, mask=case.mask), batch, case.k)
    keys, lengths, mask = case.padded(case.keys, np.uint64(0))
    kw = {"mask": mask} if mask is not None else {"lengths": lengths}
    check(got, er.topk_hamming(case.query, keys, case.k, **kw), batch, case.k)


@given(case=ragged_cases(max_len=120), piece=st.integers(1, 17), threads=st.integers(1, 3), tasks=st.integers(1, 5))
def test_pieces_and_threads_give_the_same_result(
    case: RaggedCase, piece: int, threads: int, tasks: int,
    num_threads_and_tasks: Callable[[int, int], contextlib.AbstractContextManager[None]],
) -> None:
    """Long rows cut into pieces (partial top-K lists, merged) and spread over threads: the serial result."""
    want_lookup, want_topk = case.lookup(), case.topk()
    with tiny_pieces(piece), num_threads_and_tasks(threads, tasks):
        check(case.lookup(), want_lookup, case.query.shape[0], case.k)
        check(case.topk(), want_topk, case.query.shape[0], case.k)


def test_plan_cuts_a_long_row_into_balanced_pieces() -> None:
    """One row of 10^5 among 255 rows of 100: pieces at most the per-task share; groups of about equal work."""
    lens = np.array([100] * 128 + [100_000] + [100] * 127, dtype=np.int64)
    p, total = cpu_ragged.plan(lens, 32, 8)
    assert total == int(lens.sum())
    share = max(cpu_ragged.MIN_PIECE, -(-total // 8))
    assert (p.hi - p.lo).max() <= share
    assert np.array_equal(np.bincount(p.row, weights=p.hi - p.lo, minlength=256), lens)
    work = [int((p.hi - p.lo)[a:b].sum() + cpu_ragged.ROW_COST * (b - a)) for a, b in zip(p.groups, p.groups[1:])]
    assert max(work) <= (total + cpu_ragged.ROW_COST * len(p.row)) / 8 + share + cpu_ragged.ROW_COST
    assert list(p.cut_rows) == [128] and p.part_width == 32


@given(batch=st.integers(1, 5), lens=st.lists(st.integers(0, 50), min_size=5, max_size=5), words=st.integers(1, 16),
       k=st.integers(0, 60), piece=st.sampled_from([3, 4096]))
def test_all_ties_newest_first(batch: int, lens: list[int], words: int, k: int, piece: int) -> None:
    """Every key identical: each row's result is its positions, newest first."""
    lens = lens[:batch]
    offsets = np.concatenate([[0], np.cumsum(lens)])
    keys = np.full((int(offsets[-1]), words), 0x5A5A, dtype=np.uint64)
    query = np.zeros((batch, words), dtype=np.uint64)
    with tiny_pieces(piece):
        idx, dist = topk_hamming_ragged(query, keys, k, offsets)
    for b, n in enumerate(lens):
        take = min(k, n)
        assert idx[b, :take].tolist() == list(range(n - 1, n - 1 - take, -1))
        assert (dist[b, :take] == 8 * words).all() and (idx[b, take:] == -1).all() and (dist[b, take:] == -1).all()


@pytest.mark.parametrize("k", [0, 3])
def test_empty_batch_and_empty_rows(k: int) -> None:
    table = np.arange(4, dtype=np.uint64)[:, None]
    q0 = np.zeros((0, 1), dtype=np.uint64)
    for fn, values in ((topk_hamming_lookup_ragged, (np.array([1, 2]), table)), (topk_hamming_ragged, (table,))):
        idx, dist = fn(q0, *values, k, np.array([1]))
        assert idx.shape == (0, k) and dist.shape == (0, k) and idx.dtype == np.int64 and dist.dtype == np.int32
    idx, dist = topk_hamming_lookup_ragged(np.zeros((3, 1), np.uint64), np.array([3, 1]), table, k, [2, 2, 2, 2])
    assert (idx == -1).all() and (dist == -1).all() and idx.shape == (3, k)


def test_bad_id_named_by_row_and_position() -> None:
    table = np.arange(5, dtype=np.uint64)[:, None]
    ids = np.array([9, 0, 1, 2, 3, 7, 4, 8], dtype=np.int64)  # rows [1:3], [3:3], [3:8]; ids[0] is outside every row
    offsets = np.array([1, 3, 3, 8])
    q = np.zeros((3, 1), dtype=np.uint64)
    want = re.escape("ids[2, 2] = 7 is outside the table's rows [0, 5)")
    with pytest.raises(IndexError, match=want):
        topk_hamming_lookup_ragged(q, ids, table, 2, offsets)
    with pytest.raises(IndexError, match=re.escape("ids[2, 2]")):
        ref.topk_hamming_lookup_ragged(q, ids, table, 2, offsets)
    with tiny_pieces(1), er.threads(2):  # the first bad piece of a cut row
        with pytest.raises(IndexError, match=want):
            topk_hamming_lookup_ragged(q, ids, table, 2, offsets)
    mask = np.ones(8, dtype=bool)
    mask[5] = False
    with pytest.raises(IndexError, match=re.escape("ids[2, 4] = 8")):
        topk_hamming_lookup_ragged(q, ids, table, 2, offsets, mask=mask)
    idx, _ = topk_hamming_lookup_ragged(q, ids, table, 2, offsets, mask=ids < 5)  # bad ids masked: never read
    assert idx.tolist() == [[0, 1], [-1, -1], [3, 0]]
    with pytest.raises(IndexError, match=re.escape("ids[0, 0] = 0 is outside the table's rows [0, 0)")):
        topk_hamming_lookup_ragged(q, ids, table[:0], 2, offsets)


@pytest.mark.parametrize(
    ("offsets", "error", "message"),
    [
        ([0, 3, 2, 5], ValueError, "offsets must be non-decreasing, got offsets[2] = 2 < offsets[1] = 3"),
        ([-1, 3, 3, 5], ValueError, "offsets must be >= 0, got offsets[0] = -1"),
        ([0, 3, 3, 9], ValueError, "offsets must lie within the 6 entries of ids, got offsets[3] = 9"),
        ([0, 3, 6], ValueError, "offsets must have shape (4,) (one more than the 3 rows of query), got shape (3,)"),
        ([[0, 3, 3, 5]], ValueError, "offsets must have shape (4,)"),
        ([], ValueError, "offsets must have shape (4,)"),
        ([0.0, 3.0, 3.0, 5.0], TypeError, "offsets must have an integer dtype (int32 or int64), got dtype float64"),
        ([False, True, True, True], TypeError, "offsets must have an integer dtype"),
    ],
)
def test_bad_offsets_are_named(offsets: object, error: type, message: str) -> None:
    table = np.arange(5, dtype=np.uint64)[:, None]
    q = np.zeros((3, 1), dtype=np.uint64)
    with pytest.raises(error, match=re.escape(message)):
        topk_hamming_lookup_ragged(q, np.arange(6) % 5, table, 2, offsets)
    with pytest.raises(error, match=re.escape(message.replace("entries of ids", "entries of keys"))):
        topk_hamming_ragged(q, table[np.arange(6) % 5], 2, offsets)


def test_uint64_offsets_past_the_end_are_named() -> None:
    q = np.zeros((1, 1), dtype=np.uint64)
    with pytest.raises(ValueError, match=re.escape(f"got offsets[1] = {2**63 + 1}")):
        topk_hamming_lookup_ragged(q, np.zeros(2, np.int64), q, 1, np.array([0, 2**63 + 1], dtype=np.uint64))


def test_bad_values_mask_and_combinations_are_named() -> None:
    table = np.arange(5, dtype=np.uint64)[:, None]
    q = np.zeros((2, 1), dtype=np.uint64)
    with pytest.raises(ValueError, match=re.escape("ids must have shape (T,)")):
        topk_hamming_lookup_ragged(q, np.zeros((2, 3), np.int64), table, 1, [0, 1, 2])
    with pytest.raises(TypeError, match="ids must have an integer dtype"):
        topk_hamming_lookup_ragged(q, np.zeros(3), table, 1, [0, 1, 2])
    with pytest.raises(ValueError, match=re.escape("mask must have shape (3,)")):
        topk_hamming_lookup_ragged(q, np.zeros(3, np.int64), table, 1, [0, 1, 2], mask=np.ones((2, 2), bool))
    with pytest.raises(TypeError, match="mask must have dtype bool"):
        topk_hamming_ragged(q, table[:3], 1, [0, 1, 2], mask=np.ones(3))
    with pytest.raises(ValueError, match=re.escape("keys must have shape (T, W)")):
        topk_hamming_ragged(q, table[None], 1, [0, 1, 2])
    with pytest.raises(ValueError, match="keys must have W = 1 words"):
        topk_hamming_ragged(q, np.zeros((3, 2), np.uint64), 1, [0, 1, 2])
    with pytest.raises(ValueError, match="padding_id must be representable"):
        topk_hamming_lookup_ragged(q, np.zeros(3, np.uint16), table, 1, [0, 1, 2], padding_id=-1)
    with pytest.raises(ValueError, match="k must be >= 0"):
        topk_hamming_ragged(q, table[:3], -1, [0, 1, 2])
    with pytest.raises(ValueError, match="pass either offsets .* or lengths"):
        check_offsets_alone(lengths=[1, 2])
    with pytest.raises(ValueError, match="padding_side applies to padded rows"):
        check_offsets_alone(padding_side="left")
    check_offsets_alone(lengths=None, padding_side="right")


@pytest.mark.parametrize("ro", [False, True], ids=["rw", "ro"])
@pytest.mark.parametrize("layout", ["strided", "reversed"])
def test_non_contiguous_and_readonly_inputs_are_not_modified(layout: str, ro: bool) -> None:
    rng = np.random.default_rng(5)
    table = ref.random_signatures(rng, (20, 3), bits=150)
    ids = rng.integers(0, 20, size=50).astype(np.uint64)
    offsets = np.array([2, 10, 10, 45], dtype=np.int32)
    query = ref.random_signatures(rng, (3, 3), bits=150)
    mask = rng.random(50) < 0.8
    want_l = ref.topk_hamming_lookup_ragged(query, ids, table, 7, offsets, mask=mask, padding_id=3)
    want_t = ref.topk_hamming_ragged(query, table[ids], 7, offsets, mask=mask)
    args = [ref.relayout(a, layout) for a in (query, ids, table, offsets, mask, table[ids])]
    if ro:
        args = [ref.readonly(a) for a in args]
    copies = [a.copy() for a in args]
    q, i, t, o, m, kk = args
    with tiny_pieces(4):
        check(topk_hamming_lookup_ragged(q, i, t, 7, o, mask=m, padding_id=3), want_l, 3, 7)
        check(topk_hamming_ragged(q, kk, 7, o, mask=m), want_t, 3, 7)
    for a, c in zip(args, copies):
        np.testing.assert_array_equal(a, c)


def test_docstring_examples_agree_with_the_padded_api() -> None:
    table = np.array([[0b00], [0b01], [0b11]], dtype=np.uint64)
    query = np.array([[0b11], [0b00]], dtype=np.uint64)
    got = topk_hamming_lookup_ragged(query, np.array([2, 0, 1, 0, 2, 1]), table, 2, offsets=[0, 3, 6], padding_id=0)
    want = er.topk_hamming_lookup(query, np.array([[2, 0, 1], [0, 2, 1]]), table, 2, padding_id=0)
    check(got, want, 2, 2)


@pytest.mark.parametrize("dtype", [np.int32, np.int64, np.uint16, np.uint64, np.int8])
def test_offsets_of_any_integer_dtype(dtype: type) -> None:
    table = np.arange(6, dtype=np.uint64)[:, None]
    ids = np.array([5, 1, 2, 3, 4, 0, 2], dtype=np.int64)
    query = np.array([[3], [0]], dtype=np.uint64)
    want = ref.topk_hamming_lookup_ragged(query, ids, table, 3, [1, 4, 7])
    check(topk_hamming_lookup_ragged(query, ids, table, 3, np.array([1, 4, 7], dtype=dtype)), want, 2, 3)


@given(lens=st.lists(st.integers(0, 30), min_size=0, max_size=5), lead=st.integers(0, 3), tail=st.integers(0, 3),
       tau=st.sampled_from([1, 2, 3, 5, 8]), words=st.integers(1, 3), d=st.integers(1, 5), masked=st.booleans(),
       dtype=st.sampled_from([np.float32, np.float64]), seed=st.integers(0, 2**32 - 1))
def test_sdim_ragged_equals_padded_and_reference(
    lens: list[int], lead: int, tail: int, tau: int, words: int, d: int, masked: bool, dtype: type, seed: int
) -> None:
    """Group sums and pooled vectors of ragged rows: the padded functions' with lengths (or a mask), bit for bit."""
    rng = np.random.default_rng(seed)
    bits = 64 * words - (64 * words) % tau
    batch = len(lens)
    offsets = lead + np.concatenate([[0], np.cumsum(lens, dtype=np.int64)])
    total = int(offsets[-1]) + tail
    # few distinct signatures, so that codes match often
    keys = ref.random_signatures(rng, (total, words), style="pool", bits=bits)
    values = rng.standard_normal((total, d)).astype(dtype)
    query = keys[rng.integers(0, max(total, 1), size=batch)] if total else np.zeros((batch, words), np.uint64)
    mask = rng.random(total) < 0.7 if masked else None
    case = RaggedCase(query, keys, np.zeros(total, np.int64), keys, offsets, 0, mask)
    pk, lengths, pmask = case.padded(keys, np.uint64(0))
    pv = case.padded(values, 0)[0]
    kw = {"mask": pmask} if masked else {"lengths": lengths}
    with tiny_pieces(1):  # (rows of SDIM are never cut: the setting must not matter)
        sums = sdim_group_sums_ragged(query, keys, values, tau, offsets, bits=bits, mask=mask)
        pooled = sdim_pool_ragged(query, keys, values, tau, offsets, bits=bits, mask=mask)
    assert sums.dtype == dtype and sums.shape == (batch, bits // tau, d)
    np.testing.assert_array_equal(sums, er.sdim_group_sums(query, pk, pv, tau, bits=bits, **kw))
    np.testing.assert_array_equal(pooled, er.sdim_pool(query, pk, pv, tau, bits=bits, **kw))
    np.testing.assert_array_equal(pooled, ref.sdim_pool(query, pk, pv, tau, bits, **kw))


def test_sdim_ragged_refuses_bad_input() -> None:

    keys = np.zeros((4, 1), np.uint64)
    q = np.zeros((2, 1), np.uint64)
    with pytest.raises(ValueError, match=re.escape("values must have shape (4, d)")):
        sdim_pool_ragged(q, keys, np.zeros((3, 2)), 1, [0, 2, 4])
    with pytest.raises(TypeError, match="values must have dtype float32 or float64"):
        sdim_pool_ragged(q, keys, np.zeros((4, 2), np.int64), 1, [0, 2, 4])
    with pytest.raises(ValueError, match="offsets must be non-decreasing"):
        sdim_pool_ragged(q, keys, np.zeros((4, 2)), 1, [0, 3, 2])
    with pytest.raises(ValueError, match="tau must divide bits"):
        sdim_pool_ragged(q, keys, np.zeros((4, 2)), 3, [0, 2, 4])


@given(case=ragged_cases(dtypes=[np.int32, np.int64, np.uint16]))
def test_public_functions_take_offsets(case: RaggedCase) -> None:
    """``offsets=`` of the padded API's functions runs the ragged forms: the same results."""
    batch = case.query.shape[0]
    got = er.topk_hamming_lookup(case.query, case.ids, case.table, case.k, offsets=case.offsets, mask=case.mask,
                                 padding_id=case.padding_id)
    check(got, case.lookup(), batch, case.k)
    check(er.topk_hamming(case.query, case.keys, case.k, offsets=case.offsets, mask=case.mask), case.topk(),
          batch, case.k)


def test_public_functions_refuse_offsets_with_lengths_or_left_padding() -> None:
    table = np.arange(5, dtype=np.uint64)[:, None]
    q = np.zeros((2, 1), dtype=np.uint64)
    ids = np.zeros(3, np.int64)
    with pytest.raises(ValueError, match="pass either offsets .* or lengths"):
        er.topk_hamming_lookup(q, ids, table, 1, offsets=[0, 1, 2], lengths=[1, 1])
    with pytest.raises(ValueError, match="padding_side applies to padded rows"):
        er.topk_hamming(q, table[:3], 1, offsets=[0, 1, 2], padding_side="left")
    with pytest.raises(ValueError, match="pass either offsets .* or lengths"):
        er.sdim_pool(q, table[:3], np.ones((3, 2)), 1, offsets=[0, 1, 2], lengths=[1, 1])
    with pytest.raises(ValueError, match="offsets"):
        er.topk_hamming_lookup(q, ids, table, 1, offsets=[0, 2, 1])


def test_public_sdim_takes_offsets() -> None:
    rng = np.random.default_rng(3)
    keys = rng.integers(0, 2**63, size=(9, 1), dtype=np.uint64)
    values = rng.standard_normal((9, 4))
    q = rng.integers(0, 2**63, size=(3, 1), dtype=np.uint64)
    offsets = np.array([1, 4, 4, 8])
    np.testing.assert_array_equal(er.sdim_pool(q, keys, values, 4, offsets=offsets),
                                  sdim_pool_ragged(q, keys, values, 4, offsets))
    np.testing.assert_array_equal(er.sdim_group_sums(q, keys, values, 4, offsets=offsets),
                                  sdim_group_sums_ragged(q, keys, values, 4, offsets))
