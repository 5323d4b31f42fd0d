"""topk_hamming_lookup against the brute-force reference (API.md section 3, the fused serving path)."""

from __future__ import annotations

import dataclasses
import re

import numpy as np
import pytest
import reference as ref
from hypothesis import given
from hypothesis import strategies as st

import etaretrieval as er
from etaretrieval.cpu import topk

BITS = st.one_of(st.integers(1, 300), st.sampled_from([64, 65, 128, 512, 1024]))
STYLE = st.sampled_from(["random", "pool", "sparse"])
VALIDITY = st.sampled_from(["none", "lengths", "mask2d", "mask1d"])
ID_DTYPES = [np.int8, np.int16, np.int32, np.int64, np.uint8, np.uint16, np.uint32, np.uint64]


def poison_values(dtype: type, nrows: int) -> list[int]:
    """Ids outside [0, nrows) that ``dtype`` can hold (never looked up when invalid)."""
    info = np.iinfo(dtype)
    values = [v for v in (nrows, nrows + 1, int(info.max)) if v <= info.max]
    if info.min < 0:
        values += [-1, int(info.min)]
    if dtype == np.uint64:
        values += [2**63, 2**63 + 5]
    return values


@dataclasses.dataclass
class LookupCase:
    query: np.ndarray
    ids: np.ndarray
    table: np.ndarray
    k: int
    lengths: np.ndarray | None = None
    mask: np.ndarray | None = None
    padding_id: int | None = None

    def kwargs(self) -> dict:
        return {"lengths": self.lengths, "mask": self.mask, "padding_id": self.padding_id}

    def reference(self) -> tuple[np.ndarray, np.ndarray]:
        return ref.topk_hamming_lookup(self.query, self.ids, self.table, self.k, **self.kwargs())

    def run(self) -> tuple[np.ndarray, np.ndarray]:
        return er.topk_hamming_lookup(self.query, self.ids, self.table, self.k, **self.kwargs())

    def arrays(self) -> list[np.ndarray]:
        return [a for a in (self.query, self.ids, self.table, self.lengths, self.mask) if a is not None]


@st.composite
def lookup_cases(
    draw: st.DrawFn,
    *,
    dtypes: list[type] = [np.int64],  # noqa: B006  (other dtypes: test_lookup_every_id_dtype)
    shared: bool | None = None,
    kinds: st.SearchStrategy[str] = VALIDITY,
    poison: bool = True,
) -> LookupCase:
    """A valid lookup: no in-range-check failure, but out-of-range ids wherever positions are invalid."""
    batch = draw(st.integers(0, 6))
    length = draw(st.integers(0, 60))
    nrows = draw(st.integers(1, 40))
    bits = draw(BITS)
    words = ref.words_for(bits)
    dtype = draw(st.sampled_from(dtypes))
    is_shared = draw(st.booleans()) if shared is None else shared
    k = draw(st.one_of(st.integers(0, length + 3), st.integers(0, 3)))
    kind = draw(kinds)
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    query = ref.random_signatures(rng, (batch, words), bits=bits)
    table = ref.random_signatures(rng, (nrows, words), style=draw(STYLE), bits=bits)
    ids = rng.integers(0, nrows, size=(length,) if is_shared else (batch, length)).astype(dtype)
    lengths = mask = None
    if kind == "lengths":
        lengths = rng.integers(0, length + 1, size=batch)
    elif kind in ("mask2d", "mask1d"):
        mask = rng.random((batch, length) if kind == "mask2d" else (length,)) < rng.choice([0.2, 0.7])
    padding_id = None
    pad_mode = draw(st.sampled_from(["none", "in_range", "out_of_range"]))
    if pad_mode == "in_range":
        padding_id = int(rng.integers(0, nrows))
    elif pad_mode == "out_of_range":
        values = poison_values(dtype, nrows)
        padding_id = int(values[int(rng.integers(len(values)))])
    if padding_id is not None and length:  # sprinkle the padding id
        spots = rng.random(ids.shape) < 0.3
        ids[spots] = np.array(padding_id, dtype=dtype)
    if poison and length:
        valid = ref.valid_positions(batch, length, lengths=lengths, mask=mask)
        never = ~valid.any(axis=0) if is_shared else ~valid  # positions invalid in every row using them
        values = poison_values(dtype, nrows)
        picks = never & (rng.random(never.shape) < 0.5)
        for where in zip(*np.nonzero(picks)):
            ids[where] = np.array(values[int(rng.integers(len(values)))], dtype=dtype)
    if draw(st.booleans()):  # a target that is one of the items: distance 0
        if batch and length:
            query[0] = table[int(rng.integers(nrows))]
    return LookupCase(query, ids, table, k, lengths, mask, padding_id)


def check_result(case: LookupCase, idx: np.ndarray, dist: np.ndarray) -> None:
    batch = case.query.shape[0]
    valid = ref.valid_positions(batch, case.ids.shape[-1], lengths=case.lengths, mask=case.mask, ids=case.ids,
                                padding_id=case.padding_id)
    ref.check_topk(idx, dist, case.reference(), valid, case.k)


def run_and_check(case: LookupCase) -> None:
    before = [a.copy() for a in case.arrays()]
    idx, dist = case.run()
    check_result(case, idx, dist)
    for a, b in zip(case.arrays(), before):
        np.testing.assert_array_equal(a, b)  # inputs untouched


@given(case=lookup_cases())
def test_lookup_matches_reference(case: LookupCase) -> None:
    run_and_check(case)


@given(case=lookup_cases(kinds=st.sampled_from(["none", "lengths"])))
def test_lookup_large_table_form_matches_reference(case: LookupCase) -> None:
    """Tables above CACHED_TABLE_BYTES (read one gather pass per word, not a position at a time): same results."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(topk, "CACHED_TABLE_BYTES", -1)
        run_and_check(case)


@pytest.mark.parametrize("dtype", ID_DTYPES, ids=lambda d: np.dtype(d).name)
@given(data=st.data())
def test_lookup_every_id_dtype(dtype: type, data: st.DataObject) -> None:
    """Any integer id dtype (2-D ids with lengths / padding; shared ids with a shared mask)."""
    shared = data.draw(st.booleans())
    kinds = st.sampled_from(["mask1d"]) if shared else st.sampled_from(["none", "lengths"])
    run_and_check(data.draw(lookup_cases(dtypes=[dtype], shared=shared, kinds=kinds)))


@given(case=lookup_cases(poison=False))
def test_lookup_equals_topk_on_gathered_keys(case: LookupCase) -> None:
    """Fused lookup == topk_hamming on table[ids] (padding expressed as a mask)."""
    batch, length = case.query.shape[0], case.ids.shape[-1]
    ids2 = np.broadcast_to(case.ids, (batch, length))
    mask = ref.valid_positions(batch, length, lengths=case.lengths, mask=case.mask, ids=ids2,
                               padding_id=case.padding_id)
    safe = np.where(mask, ids2.astype(np.int64), 0)
    if case.table.shape[0] == 0:
        return
    keys = case.table[safe]
    a = case.run()
    b = er.topk_hamming(case.query, keys, case.k, mask=mask)
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])


def test_lookup_docstring_example() -> None:
    table = np.array([[0b00], [0b01], [0b11]], dtype=np.uint64)
    query = np.array([[0b11]], dtype=np.uint64)
    ids = np.array([[2, 0, 1, 0, 2]])
    idx, dist = er.topk_hamming_lookup(query, ids, table, k=2, padding_id=0)
    np.testing.assert_array_equal(idx, [[4, 0]])
    np.testing.assert_array_equal(dist, [[0, 0]])


@given(
    batch=st.integers(1, 6),
    length=st.integers(0, 60),
    k=st.integers(0, 70),
    dtype=st.sampled_from([np.int64, np.uint32]),
    seed=st.integers(0, 2**32 - 1),
)
def test_lookup_all_ties(batch: int, length: int, k: int, dtype: type, seed: int) -> None:
    """Every id the same item (or distinct items with one signature): positions newest first."""
    rng = np.random.default_rng(seed)
    table = np.broadcast_to(ref.random_signatures(rng, (2,)), (5, 2)).copy()
    query = ref.random_signatures(rng, (batch, 2))
    ids = rng.integers(0, 5, size=(batch, length)).astype(dtype)
    lengths = rng.integers(0, length + 1, size=batch)
    idx, dist = er.topk_hamming_lookup(query, ids, table, k, lengths=lengths)
    for b in range(batch):
        expect = np.arange(lengths[b])[::-1][:k]
        np.testing.assert_array_equal(idx[b, : expect.size], expect)
        assert (idx[b, expect.size :] == -1).all()
        assert (dist[b, : expect.size] == ref.hamming(query[b], table[0])).all()


@pytest.mark.parametrize("dtype", ID_DTYPES, ids=lambda d: np.dtype(d).name)
def test_lookup_padding_id_extremes(dtype: type) -> None:
    """padding_id may be any value of the ids dtype (e.g. -1, or the dtype's max for unsigned ids)."""
    info = np.iinfo(dtype)
    table = np.array([[1], [2], [4]], dtype=np.uint64)
    query = np.array([[0], [7]], dtype=np.uint64)
    for pad in {int(info.min), int(info.max), -1 if info.min < 0 else int(info.max), 0}:
        ids = np.array([[0, pad, 2, pad], [pad, 1, pad, 1]], dtype=dtype)
        case = LookupCase(query, ids, table, 4, padding_id=pad)
        run_and_check(case)
        case.padding_id = np.array(pad, dtype=dtype)[()]  # a numpy scalar of the ids dtype
        run_and_check(case)


def test_lookup_uint64_large_ids_are_out_of_range_not_negative() -> None:
    """uint64 ids >= 2**63 must not wrap to negative numbers (nor into range)."""
    table = np.zeros((4, 1), dtype=np.uint64)
    query = np.zeros((1, 1), dtype=np.uint64)
    for bad in (2**63, 2**63 + 1, 2**64 - 1, 2**64 - 4):
        ids = np.array([[1, bad, 2]], dtype=np.uint64)
        with pytest.raises(IndexError, match=r"ids\[0, 1\]"):
            er.topk_hamming_lookup(query, ids, table, 2)
        # at an invalid position: never read
        idx, _ = er.topk_hamming_lookup(query, ids, table, 3, mask=np.array([True, False, True]))
        np.testing.assert_array_equal(idx, [[2, 0, -1]])
        idx, _ = er.topk_hamming_lookup(query, ids, table, 3, lengths=[1])
        np.testing.assert_array_equal(idx, [[0, -1, -1]])


# --------------------------------------------------------------------------- out-of-range ids


@given(case=lookup_cases(poison=False), data=st.data())
def test_lookup_out_of_range_valid_id_raises_first_position(case: LookupCase, data: st.DataObject) -> None:
    batch, length = case.query.shape[0], case.ids.shape[-1]
    valid = ref.valid_positions(batch, length, lengths=case.lengths, mask=case.mask, ids=case.ids,
                                padding_id=case.padding_id)
    rows, cols = np.nonzero(valid)
    if rows.size == 0:
        return
    values = [v for v in poison_values(case.ids.dtype.type, case.table.shape[0]) if v != case.padding_id]
    for _ in range(data.draw(st.integers(1, 3))):
        pick = data.draw(st.integers(0, rows.size - 1))
        where = (cols[pick],) if case.ids.ndim == 1 else (rows[pick], cols[pick])
        case.ids[where] = np.array(data.draw(st.sampled_from(values)), dtype=case.ids.dtype)
    try:
        case.reference()
    except IndexError as exc:
        m = re.search(r"ids\[(\d+), (\d+)\]", str(exc))
        assert m is not None
        b, p = m.groups()
    else:  # the poison landed only where it became invalid (e.g. equal to padding): fine
        run_and_check(case)
        return
    pattern = rf"ids\[({b}, )?{p}\]" if case.ids.ndim == 1 else rf"ids\[{b}, {p}\]"
    snapshot = [a.copy() for a in case.arrays()]
    with pytest.raises(IndexError, match=pattern):
        case.run()
    for a, s in zip(case.arrays(), snapshot):
        np.testing.assert_array_equal(a, s)


@pytest.mark.parametrize("dtype", ID_DTYPES, ids=lambda d: np.dtype(d).name)
def test_lookup_out_of_range_message(dtype: type) -> None:
    table = np.zeros((5, 1), dtype=np.uint64)
    query = np.zeros((3, 1), dtype=np.uint64)
    ids = np.zeros((3, 6), dtype=dtype)
    ids[1, 3] = 5  # == N: out of range
    ids[1, 4] = 9
    ids[2, 0] = 7
    with pytest.raises(IndexError, match=r"ids\[1, 3\]"):
        er.topk_hamming_lookup(query, ids, table, 2)
    if np.iinfo(dtype).min < 0:
        ids[0, 5] = -1
        with pytest.raises(IndexError, match=r"ids\[0, 5\]"):
            er.topk_hamming_lookup(query, ids, table, 2)
        # masked out: not an error
        er.topk_hamming_lookup(query, ids, table, 2, lengths=[5, 3, 0])
    with pytest.raises(IndexError, match=r"ids\[2, 0\]"):
        er.topk_hamming_lookup(query, ids, table, 2, lengths=[5, 3, 6])
    # padded: not an error
    ids2 = np.where(np.arange(6) == 3, 5, 0).astype(dtype)[None].repeat(3, axis=0)
    idx, _ = er.topk_hamming_lookup(query, ids2, table, 6, padding_id=5)
    np.testing.assert_array_equal(idx, [[5, 4, 2, 1, 0, -1]] * 3)


def test_lookup_out_of_range_with_k_zero_and_shared_ids() -> None:
    """The check does not depend on k, and applies to shared (L,) ids too."""
    table = np.zeros((3, 1), dtype=np.uint64)
    query = np.zeros((2, 1), dtype=np.uint64)
    with pytest.raises(IndexError, match=r"ids\[(0, )?2\]"):
        er.topk_hamming_lookup(query, np.array([0, 1, 3, 1]), table, 0)
    with pytest.raises(IndexError, match=r"ids\[1, 0\]"):
        er.topk_hamming_lookup(query, np.array([[0, 1, 2], [-4, 0, 0]]), table, 0)
    er.topk_hamming_lookup(query, np.array([0, 1, 3, 1]), table, 2, mask=np.array([True, True, False, True]))


def test_lookup_empty_table() -> None:
    """N = 0: fine while no position is valid; any valid position is an IndexError."""
    table = np.zeros((0, 2), dtype=np.uint64)
    query = np.zeros((2, 2), dtype=np.uint64)
    ids = np.array([[0, 1, 2], [3, 0, 0]], dtype=np.int32)
    idx, dist = er.topk_hamming_lookup(query, ids, table, 4, lengths=[0, 0])
    assert (idx == -1).all() and (dist == -1).all() and idx.shape == (2, 4)
    idx, _ = er.topk_hamming_lookup(query, ids, table, 2, mask=np.zeros(3, dtype=bool))
    assert (idx == -1).all()
    idx, _ = er.topk_hamming_lookup(query, np.zeros((2, 3), dtype=np.int32), table, 2, padding_id=0)
    assert (idx == -1).all()
    idx, _ = er.topk_hamming_lookup(np.zeros((0, 2), dtype=np.uint64), np.zeros((0, 3), dtype=np.int32), table, 2)
    assert idx.shape == (0, 2)
    with pytest.raises(IndexError, match=r"ids\[1, 0\]"):
        er.topk_hamming_lookup(query, ids, table, 2, lengths=[0, 1])


# --------------------------------------------------------------------------- layouts


ARGS = ["query", "ids", "ids_shared", "table", "mask2d", "mask1d"]


@pytest.mark.parametrize("ro", [False, True], ids=["rw", "ro"])
@pytest.mark.parametrize("layout", ref.LAYOUTS)
@pytest.mark.parametrize("arg", ARGS)
def test_lookup_non_contiguous_and_readonly(arg: str, layout: str, ro: bool) -> None:
    for seed in range(3):
        rng = np.random.default_rng(seed)
        batch, length, nrows, words = 4, 23, 9, 2
        query = ref.random_signatures(rng, (batch, words), bits=100)
        table = ref.random_signatures(rng, (nrows, words), style=["random", "pool", "sparse"][seed], bits=100)
        ids = rng.integers(0, nrows, size=(length,) if arg == "ids_shared" else (batch, length))
        mask = None
        if arg.startswith("mask"):
            mask = rng.random((batch, length) if arg == "mask2d" else (length,)) < 0.6
            ids = np.where(np.broadcast_to(mask, (batch, length)), ids, -7)  # never read
        args = {"query": query, "ids": ids, "table": table, "mask": mask}
        name = "ids" if arg == "ids_shared" else "mask" if arg.startswith("mask") else arg
        target = ref.relayout(args[name], layout)
        if ro:
            target = ref.readonly(target)
        args[name] = target
        before = target.copy()
        case = LookupCase(args["query"], args["ids"], args["table"], 7, mask=args["mask"], padding_id=int(seed))
        check_result(case, *case.run())
        np.testing.assert_array_equal(target, before)


def test_lookup_broadcast_views() -> None:
    rng = np.random.default_rng(7)
    query = np.broadcast_to(ref.random_signatures(rng, (1, 3)), (5, 3))
    ids = np.broadcast_to(rng.integers(0, 8, size=(1, 40)), (5, 40))
    table = ref.random_signatures(rng, (8, 3), style="sparse")
    case = LookupCase(query, ids, table, 12, padding_id=2)
    check_result(case, *case.run())


# --------------------------------------------------------------------------- threads / tasks


@given(case=lookup_cases(dtypes=[np.int64], shared=False),
       threads=st.sampled_from([(1, 1), (1, 4), (2, 1), (2, 3), (2, 64)]))
def test_lookup_thread_and_task_counts_agree(num_threads_and_tasks, case: LookupCase, threads: tuple[int, int]) -> None:  # noqa: ANN001
    expected = case.reference()
    with num_threads_and_tasks(*threads):
        idx, dist = case.run()
    np.testing.assert_array_equal(idx, expected[0])
    np.testing.assert_array_equal(dist, expected[1])


@pytest.mark.parametrize("threads", [(1, 1), (2, 1), (2, 64)])
def test_lookup_first_bad_position_whatever_the_threads(num_threads_and_tasks, threads: tuple[int, int]) -> None:  # noqa: ANN001
    """With many rows split over tasks, the error still names the first row (row-major)."""
    table = np.zeros((5, 1), dtype=np.uint64)
    query = np.zeros((40, 1), dtype=np.uint64)
    ids = np.zeros((40, 10), dtype=np.int64)
    ids[33, 2] = 99
    ids[17, 8] = 5
    ids[17, 9] = -1
    ids[2, 1] = 77  # beyond lengths[2]: never read
    lengths = np.full(40, 10)
    lengths[2] = 1
    with num_threads_and_tasks(*threads), pytest.raises(IndexError, match=r"ids\[17, 8\]"):
        er.topk_hamming_lookup(query, ids, table, 3, lengths=lengths)


# --------------------------------------------------------------------------- fast path, fixed variants


def general_path(case: LookupCase) -> tuple[np.ndarray, np.ndarray]:
    """The general CPU path of ``case``, without the fast path's guard."""
    from etaretrieval._validate import lookup_call

    return topk.run(lookup_call(case.query, case.ids, case.table, case.k, case.lengths, case.mask,
                                case.padding_id, "right"))


@given(case=lookup_cases(dtypes=[np.int64, np.int32], shared=False, kinds=st.just("none"), poison=False),
       pool=st.booleans())
def test_fast_path_equals_the_general_path_and_the_reference(case: LookupCase, pool: bool) -> None:
    """The fast path's counting sort gives the general kernels' results bit for bit, ties and -1 tails included."""
    if pool:  # few distinct signatures: many ties
        case.table = case.table[np.arange(case.table.shape[0]) % 2]
    case.padding_id = None  # and the padding ids sprinkled (some outside the table) become row 0
    case.ids = np.where((case.ids < 0) | (case.ids >= case.table.shape[0]), 0, case.ids).astype(case.ids.dtype)
    fast = topk.lookup_fast(case.query, case.ids, case.table, case.k)
    assert fast is not None
    general = general_path(case)
    for got, want in zip(fast, general):
        assert got.dtype == want.dtype and got.shape == want.shape
        np.testing.assert_array_equal(got, want)
    check_result(case, *fast)


@pytest.mark.parametrize("dtype", [np.int64, np.int32])
def test_fast_path_declines_bad_ids_and_the_error_is_the_general_one(dtype: type) -> None:
    table = np.arange(10, dtype=np.uint64)[:, None]
    ids = np.array([[1, 2, 3], [4, 10, -1]], dtype=dtype)
    assert topk.lookup_fast(table[:2], ids, table, 2) is None
    with pytest.raises(IndexError, match=re.escape("ids[1, 1] = 10 is outside the table's rows [0, 10)")):
        er.topk_hamming_lookup(table[:2], ids, table, 2)


@pytest.mark.parametrize("call", [
    lambda t, i: (t[:1], i[:, :3], t, 1.0),  # k not an int: check_k names it
    lambda t, i: (t[:1], i[:1], t[:, :0], 1),  # W = 0 table
    lambda t, i: (t[:2], i[:1], t, 1),  # ids rows != query rows
    lambda t, i: (t[:1], i[:1], t, -1),  # k < 0
    lambda t, i: (t[:0], i[:0], t, 2**70),  # k beyond int64, and beyond MAX_K
    lambda t, i: (t[:1].astype(np.int64), i[:1], t, 1),  # int64 signatures
])
def test_fast_path_declines_and_the_general_path_raises(call) -> None:  # noqa: ANN001
    table = np.arange(10, dtype=np.uint64)[:, None]
    ids = np.arange(8).reshape(2, 4)
    args = call(table, ids)
    assert topk.lookup_fast(*args) is None
    with pytest.raises((ValueError, TypeError)):
        er.topk_hamming_lookup(*args)


def test_fast_path_takes_the_common_call_and_read_only_arrays() -> None:
    table = np.arange(1000, dtype=np.uint64)[:, None]
    ids = np.arange(100)[None] * 7
    assert topk.lookup_fast(table[:1], ids, table, 16) is not None
    frozen = [a.copy() for a in (table[:1], ids, table)]
    for a in frozen:
        a.flags.writeable = False
    assert topk.lookup_fast(*frozen, 16) is not None


@pytest.mark.skipif(topk.PURE_PYTHON, reason="NUMBA_DISABLE_JIT=1 compiles nothing")
def test_unseen_layouts_and_dtypes_compile_no_new_variant() -> None:
    """Issue 21: a Fortran-order table, a read-only query, uint16 ids... reuse the variants of the common call."""
    rng = np.random.default_rng(0)
    table = ref.random_signatures(rng, (50, 2), bits=128)
    query = table[:3].copy()
    ids = rng.integers(0, 50, (3, 20))
    lengths = np.array([20, 5, 0])
    mask = rng.random((3, 20)) < 0.5
    keys = table[ids]
    warm = [
        lambda: er.topk_hamming_lookup(query, ids, table, 4),
        lambda: er.topk_hamming_lookup(query, ids.astype(np.int32), table, 4),
        lambda: er.topk_hamming_lookup(query, ids, table, 4, lengths=lengths),
        lambda: er.topk_hamming_lookup(query, ids, table, 4, mask=mask),
        lambda: er.topk_hamming(query, keys, 4),
        lambda: er.topk_hamming(query, keys, 4, mask=mask),
    ]
    for call in warm:
        call()
    kernels = [topk.topk_lookup, topk.topk_keys, topk._distance_pass, topk.small_entry(np.dtype(np.int64)),
               topk.small_entry(np.dtype(np.int32))]
    before = [len(k.signatures) for k in kernels]
    frozen = query.copy()
    frozen.flags.writeable = False
    fortran = np.asfortranarray(table)
    unusual = [
        lambda: er.topk_hamming_lookup(frozen, ids.astype(np.uint16), fortran, 4),
        lambda: er.topk_hamming_lookup(frozen, ids.astype(np.uint16), fortran, 4, lengths=lengths),
        lambda: er.topk_hamming_lookup(query, ids[:, ::2], table, 4, lengths=lengths // 2),
        lambda: er.topk_hamming_lookup(query, ids.astype(np.int8), table, 4, mask=mask[0]),
        lambda: er.topk_hamming_lookup(query, ids[0], table, 4, mask=mask),
        lambda: er.topk_hamming_lookup(frozen, np.asfortranarray(ids), table, 4),
        lambda: er.topk_hamming(frozen, np.asfortranarray(keys), 4),
        lambda: er.topk_hamming(query, keys[:, ::2], 4, mask=mask[0, ::2]),
        lambda: er.topk_hamming(query, keys, 4, lengths=lengths, padding_side="left"),
    ]
    for call in unusual:
        call()
    assert [len(k.signatures) for k in kernels] == before
