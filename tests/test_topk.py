"""topk_hamming against the brute-force reference, plus metamorphic properties (API.md section 3)."""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import reference as ref
from hypothesis import example, given
from hypothesis import strategies as st

import etaretrieval as er
from etaretrieval.cpu import topk as topk_kernels
from etaretrieval.cpu.topk import LANES, SAMPLE_MIN_LENGTH, SAMPLE_STRIDE

BITS = st.one_of(st.integers(1, 300), st.sampled_from([64, 128, 129, 512, 1000, 1024]))
STYLE = st.sampled_from(["random", "pool", "sparse"])
VALIDITY = st.sampled_from(["none", "lengths", "mask2d", "mask1d"])


@dataclasses.dataclass
class Case:
    query: np.ndarray
    keys: np.ndarray
    k: int
    lengths: np.ndarray | None
    mask: np.ndarray | None
    bits: int

    def kwargs(self) -> dict:
        return {"lengths": self.lengths, "mask": self.mask}

    def reference(self) -> tuple[np.ndarray, np.ndarray]:
        return ref.topk_hamming(self.query, self.keys, self.k, **self.kwargs())

    def run(self) -> tuple[np.ndarray, np.ndarray]:
        return er.topk_hamming(self.query, self.keys, self.k, **self.kwargs())


def make_validity(
    rng: np.random.Generator, kind: str, batch: int, length: int,
) -> tuple[np.ndarray | None, np.ndarray | None]:
    if kind == "lengths":
        return rng.integers(0, length + 1, size=batch), None
    if kind in ("mask2d", "mask1d"):
        shape = (batch, length) if kind == "mask2d" else (length,)
        return None, rng.random(shape) < rng.choice([0.1, 0.5, 0.9])
    return None, None


@st.composite
def cases(draw: st.DrawFn, *, max_batch: int = 6, max_length: int = 60) -> Case:
    batch = draw(st.integers(0, max_batch))
    length = draw(st.integers(0, max_length))
    bits = draw(BITS)
    words = ref.words_for(bits)
    shared = draw(st.booleans())
    k = draw(st.one_of(st.integers(0, length + 3), st.integers(0, 3)))
    kind = draw(VALIDITY)
    style = draw(STYLE)
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    query = ref.random_signatures(rng, (batch, words), style="random", bits=bits)
    kshape = (length, words) if shared else (batch, length, words)
    keys = ref.random_signatures(rng, kshape, style=style, bits=bits)
    if style == "pool" and batch and length and draw(st.booleans()):
        keys[..., int(rng.integers(length)), :] = query[0]  # an exact match somewhere (distance 0 for row 0)
    lengths, mask = make_validity(rng, kind, batch, length)
    return Case(query, keys, k, lengths, mask, bits)


def check_result(case: Case, idx: np.ndarray, dist: np.ndarray) -> None:
    """Shapes/dtypes, agreement with the reference, and invariants stated independently of it."""
    batch = case.query.shape[0]
    length = case.keys.shape[-2]
    valid = ref.valid_positions(batch, length, lengths=case.lengths, mask=case.mask)
    ref.check_topk(idx, dist, case.reference(), valid, case.k)
    keys3 = np.broadcast_to(case.keys, (batch, length, case.query.shape[1]))
    for b in range(batch):
        got = idx[b][idx[b] >= 0]
        if got.size:
            np.testing.assert_array_equal(dist[b, : got.size], er.hamming(case.query[b], keys3[b, got]))


@given(case=cases())
def test_topk_matches_reference(case: Case) -> None:
    before = [None if a is None else a.copy() for a in (case.query, case.keys, case.lengths, case.mask)]
    idx, dist = case.run()
    check_result(case, idx, dist)
    for a, b in zip((case.query, case.keys, case.lengths, case.mask), before):
        if a is not None:
            np.testing.assert_array_equal(a, b)  # inputs untouched


@given(case=cases(), extra=st.integers(1, 10))
def test_topk_prefix_property(case: Case, extra: int) -> None:
    """The top-k is the first k entries of the top-(k + extra)."""
    idx, dist = case.run()
    big = dataclasses.replace(case, k=case.k + extra)
    bidx, bdist = big.run()
    np.testing.assert_array_equal(bidx[:, : case.k], idx)
    np.testing.assert_array_equal(bdist[:, : case.k], dist)


@given(case=cases())
def test_topk_lengths_equal_prefix_mask(case: Case) -> None:
    batch, length = case.query.shape[0], case.keys.shape[-2]
    lengths = np.random.default_rng(batch * 1000 + length).integers(0, length + 1, size=batch)
    mask = np.arange(length)[None, :] < lengths[:, None]
    a = er.topk_hamming(case.query, case.keys, case.k, lengths=lengths)
    b = er.topk_hamming(case.query, case.keys, case.k, mask=mask)
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])


@given(case=cases())
def test_topk_shared_keys_equal_broadcast_keys(case: Case) -> None:
    batch = case.query.shape[0]
    if case.keys.ndim == 2:
        shared = case.keys
    else:
        shared = case.keys[0] if batch else np.zeros(case.keys.shape[1:], dtype=np.uint64)
    full = np.ascontiguousarray(np.broadcast_to(shared, (batch,) + shared.shape))
    a = er.topk_hamming(case.query, shared, case.k, **case.kwargs())
    b = er.topk_hamming(case.query, full, case.k, **case.kwargs())
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])


@given(
    batch=st.integers(1, 6),
    length=st.integers(0, 60),
    words=st.integers(1, 16),
    k=st.integers(0, 70),
    kind=VALIDITY,
    seed=st.integers(0, 2**32 - 1),
)
def test_topk_all_ties(batch: int, length: int, words: int, k: int, kind: str, seed: int) -> None:
    """Adversarial rows where every key is identical: the result is the valid positions, newest first."""
    rng = np.random.default_rng(seed)
    query = ref.random_signatures(rng, (batch, words))
    keys = np.broadcast_to(ref.random_signatures(rng, (words,)), (batch, length, words))
    lengths, mask = make_validity(rng, kind, batch, length)
    idx, dist = er.topk_hamming(query, keys, k, lengths=lengths, mask=mask)
    valid = ref.valid_positions(batch, length, lengths=lengths, mask=mask)
    for b in range(batch):
        expect = np.flatnonzero(valid[b])[::-1][:k]
        np.testing.assert_array_equal(idx[b, : expect.size], expect)
        assert (idx[b, expect.size :] == -1).all()
        d = ref.hamming(query[b], keys[b, 0]) if length else -1
        assert (dist[b, : expect.size] == d).all()
        assert (dist[b, expect.size :] == -1).all()


@pytest.mark.parametrize("words", [1, 3])
def test_topk_long_rows_sampled_bound(words: int) -> None:
    """Rows long enough for the sampled bound (and several chunks), with a sample that under-estimates it.

    Row 0 is random; row 1 has 20 exact matches, all in sampled blocks, so
    the sample suggests far more than 64 positions at distance 0 (the bound is
    then recomputed exactly); row 2 is masked in part and full of ties.
    """
    length = SAMPLE_MIN_LENGTH + 37
    sampled = np.flatnonzero(np.arange(length) // LANES % SAMPLE_STRIDE == 0)
    rng = np.random.default_rng(words)
    query = ref.random_signatures(rng, (3, words))
    keys = ref.random_signatures(rng, (3, length, words))
    keys[1] = ~query[1]
    keys[1, rng.choice(sampled, 20, replace=False)] = query[1]
    keys[2] &= np.uint64(0x11)
    mask = np.ones((3, length), dtype=bool)
    mask[2, rng.random(length) < 0.3] = False
    dist = np.bitwise_count(query[:, None, :] ^ keys).sum(axis=-1)
    ids = rng.permutation(3 * length).reshape(3, length)  # the same keys, looked up in a table
    table = np.empty((3 * length, words), dtype=np.uint64)
    table[ids] = keys
    for k in (1, 64, 700):
        want = ref.topk_from_distances(dist, mask, k)
        np.testing.assert_array_equal(er.topk_hamming(query, keys, k, mask=mask), want)
        np.testing.assert_array_equal(er.topk_hamming_lookup(query, ids, table, k, mask=mask), want)


@pytest.mark.parametrize("words", [1, 2])
def test_topk_previous_row_bound_guess(words: int) -> None:
    """A long row first tries the previous row's ``k``-th distance plus one as its bound (one task, in order).

    The rows' distances differ widely, so the guess holds enough candidates
    for some rows, too few (all keys far) or too many (all keys equal to the
    query) for others; after a row of largest distances the guess is the
    largest distance itself, which must not take in the positions beyond a
    short row's length.
    """
    rng = np.random.default_rng(words)
    batch, length, k = 9, SAMPLE_MIN_LENGTH + 904, 600
    top = 64 * words
    query = ref.random_signatures(rng, (batch, words))
    keys = ref.random_signatures(rng, (batch, length, words))
    keys[2] = ~query[2]  # every distance the largest
    keys[4] = query[4]  # every distance 0
    keys[7] = ~query[7]
    keys[7, ::3] ^= np.uint64(0b111)  # a third at the largest distance minus 3
    lengths = np.full(batch, length)
    lengths[3] = SAMPLE_MIN_LENGTH + 4  # follows a row whose k-th distance is the largest
    dist = np.bitwise_count(query[:, None, :] ^ keys).sum(axis=-1)
    valid = np.arange(length) < lengths[:, None]
    want = ref.topk_from_distances(dist, valid, k)
    guesses = np.minimum(want[1][:-1, k - 1] + 1, top)
    found = ((dist[1:] <= guesses[:, None]) & valid[1:]).sum(axis=1)
    assert guesses[2] == top and found[2] > k  # row 3: the largest distance as the guess
    assert (found < k).any() and (found > 8 * k + LANES).any() and ((k <= found) & (found <= 8 * k + LANES)).sum() > 2
    ids = rng.permutation(batch * length).reshape(batch, length)
    table = np.empty((batch * length, words), dtype=np.uint64)
    table[ids] = keys
    with er.threads(1):
        np.testing.assert_array_equal(er.topk_hamming(query, keys, k, lengths=lengths), want)
        np.testing.assert_array_equal(er.topk_hamming_lookup(query, ids, table, k, lengths=lengths), want)


@given(
    dists=st.lists(st.integers(0, 129), min_size=0, max_size=300),
    need=st.integers(0, 310),
    hint=st.integers(-3, 131),
    step=st.sampled_from([1, 2]),
)
@example(dists=[5, 6], need=3, hint=128, step=1)  # too few at the largest distance, hinted: top
@example(dists=[5, 6], need=2, hint=5, step=1)  # the hint one below the answer
def test_bound_search_from_any_hint_equals_the_plain_search(dists: list[int], need: int, hint: int, step: int) -> None:
    """The galloping start from the previous row's answer finds what the plain binary search finds, any hint."""
    top = 128  # 2 words; 129 marks a position that is not valid
    scratch = np.full(-(-max(len(dists), 1) // LANES) * LANES, top + 1, dtype=np.uint16)
    scratch[: len(dists)] = dists
    blocks = scratch.reshape(-1, LANES)[::step]
    counts = [(blocks <= v).sum() for v in range(top + 1)]
    want = next((v for v in range(top + 1) if counts[v] >= need), top)
    assert topk_kernels._smallest(scratch, len(dists), step, need, top, hint) == want


@pytest.mark.parametrize("k", [0, 1, 5, 59, 60, 61, 200])
def test_topk_query_equal_to_key_is_first(k: int) -> None:
    rng = np.random.default_rng(k)
    keys = ref.random_signatures(rng, (3, 60, 2))
    query = keys[np.arange(3), [5, 59, 0]].copy()
    idx, dist = er.topk_hamming(query, keys, k)
    if k:
        np.testing.assert_array_equal(idx[:, 0], [5, 59, 0])
        np.testing.assert_array_equal(dist[:, 0], 0)
    assert (idx[:, 60:] == -1).all()


def test_topk_docstring_example() -> None:
    query = np.array([[0b0000]], dtype=np.uint64)
    keys = np.array([[0b0001], [0b0111], [0b0010], [0b0000]], dtype=np.uint64)
    idx, dist = er.topk_hamming(query, keys, k=3)
    np.testing.assert_array_equal(idx, [[3, 2, 0]])
    np.testing.assert_array_equal(dist, [[0, 1, 1]])


@pytest.mark.parametrize(("batch", "length", "k"), [(0, 5, 3), (3, 0, 4), (0, 0, 0), (2, 5, 0), (0, 5, 0), (3, 0, 0)])
@pytest.mark.parametrize("shared", [False, True])
def test_topk_empty_shapes(batch: int, length: int, k: int, shared: bool) -> None:
    query = np.zeros((batch, 2), dtype=np.uint64)
    keys = np.zeros((length, 2) if shared else (batch, length, 2), dtype=np.uint64)
    idx, dist = er.topk_hamming(query, keys, k)
    assert idx.shape == (batch, k) and idx.dtype == np.int64
    assert dist.shape == (batch, k) and dist.dtype == np.int32
    if length == 0:
        assert (idx == -1).all() and (dist == -1).all()
    else:
        assert (idx[:, : min(k, length)] >= 0).all()
    idx2, dist2 = er.topk_hamming(query, keys, k, lengths=np.zeros(batch, dtype=np.int32))
    assert (idx2 == -1).all() and (dist2 == -1).all()


@pytest.mark.parametrize("kdtype", [int, np.int8, np.int64, np.uint64])
def test_topk_k_integer_types(kdtype: type) -> None:
    rng = np.random.default_rng(0)
    case = Case(ref.random_signatures(rng, (2, 1)), ref.random_signatures(rng, (2, 9, 1)), 4, None, None, 64)
    idx, dist = er.topk_hamming(case.query, case.keys, kdtype(4))
    check_result(case, idx, dist)


def test_topk_results_are_new_arrays() -> None:
    rng = np.random.default_rng(0)
    query = ref.random_signatures(rng, (2, 1))
    keys = ref.random_signatures(rng, (2, 5, 1))
    idx, dist = er.topk_hamming(query, keys, 3)
    idx2, dist2 = er.topk_hamming(query, keys, 3)
    assert idx.flags.writeable and dist.flags.writeable
    assert not np.shares_memory(idx, idx2) and not np.shares_memory(dist, dist2)
    for out in (idx, dist):
        assert not np.shares_memory(out, query) and not np.shares_memory(out, keys)


@pytest.mark.parametrize("lengths_dtype", [np.int8, np.uint8, np.int16, np.int32, np.int64, np.uint32, np.uint64])
def test_topk_lengths_any_integer_dtype(lengths_dtype: type) -> None:
    rng = np.random.default_rng(1)
    query = ref.random_signatures(rng, (4, 2))
    keys = ref.random_signatures(rng, (30, 2), style="sparse")
    lengths = np.array([0, 7, 30, 12], dtype=lengths_dtype)
    case = Case(query, keys, 9, lengths, None, 128)
    check_result(case, *case.run())
    case.lengths = lengths.tolist()  # plain Python list
    check_result(case, *case.run())


# --------------------------------------------------------------------------- layouts


ARGS = ["query", "keys", "keys_shared", "lengths", "mask2d", "mask1d"]


@pytest.mark.parametrize("ro", [False, True], ids=["rw", "ro"])
@pytest.mark.parametrize("layout", ref.LAYOUTS)
@pytest.mark.parametrize("arg", ARGS)
def test_topk_non_contiguous_and_readonly(arg: str, layout: str, ro: bool) -> None:
    """One argument at a time in a non-default layout / read-only: same results, inputs untouched."""
    for seed in range(3):
        rng = np.random.default_rng(seed)
        batch, length, words = 4, 23, 2
        query = ref.random_signatures(rng, (batch, words), bits=100)
        keys = ref.random_signatures(rng, (length, words) if arg == "keys_shared" else (batch, length, words),
                                     style=["random", "pool", "sparse"][seed], bits=100)
        lengths = rng.integers(0, length + 1, size=batch) if arg == "lengths" else None
        mask = None
        if arg.startswith("mask"):
            mask = rng.random((batch, length) if arg == "mask2d" else (length,)) < 0.6
        arrays = {"query": query, "keys": keys, "keys_shared": keys, "lengths": lengths, "mask2d": mask, "mask1d": mask}
        target = ref.relayout(arrays[arg], layout)
        if ro:
            target = ref.readonly(target)
        before = target.copy()
        args = {"query": query, "keys": keys, "lengths": lengths, "mask": mask}
        args["keys" if arg == "keys_shared" else arg.rstrip("12d") if arg.startswith("mask") else arg] = target
        case = Case(args["query"], args["keys"], 7, args["lengths"], args["mask"], 100)
        check_result(case, *case.run())
        np.testing.assert_array_equal(target, before)


def test_topk_broadcast_views() -> None:
    """Zero-stride views (np.broadcast_to) for query, keys and mask."""
    rng = np.random.default_rng(7)
    query = np.broadcast_to(ref.random_signatures(rng, (1, 3)), (5, 3))
    keys = np.broadcast_to(ref.random_signatures(rng, (1, 40, 3)), (5, 40, 3))
    mask = np.broadcast_to(rng.random((40,)) < 0.5, (5, 40))
    case = Case(query, keys, 12, None, mask, 192)
    check_result(case, *case.run())


# --------------------------------------------------------------------------- serial vs parallel


@given(case=cases(max_batch=12), threads=st.sampled_from([(1, 1), (1, 4), (2, 1), (2, 3), (2, 64)]))
def test_topk_thread_and_task_counts_agree(num_threads_and_tasks, case: Case, threads: tuple[int, int]) -> None:  # noqa: ANN001
    expected = case.reference()
    with num_threads_and_tasks(*threads):
        idx, dist = case.run()
    np.testing.assert_array_equal(idx, expected[0])
    np.testing.assert_array_equal(dist, expected[1])


#: Edge cases run both here (parallel kernels) and in a subprocess with the kernels compiled
#: serially and with Numba's bounds checking on (any out-of-bounds access raises there).
_EDGE_CASES = r"""
import numpy as np
import etaretrieval as er

def run_all():
    out = []
    for seed in range(3):
        rng = np.random.default_rng(seed)
        for words in (1, 2, 3, 4, 16):
            q = rng.integers(0, 2**64, size=(7, words), dtype=np.uint64)
            keys = rng.integers(0, 2**64, size=(7, 50, words), dtype=np.uint64) & np.uint64(0xF000F000F000F000)
            lengths = rng.integers(0, 51, size=7)
            mask = rng.random((7, 50)) < 0.5
            ids = rng.integers(0, 20, size=(7, 50)).astype(np.int32)
            ids[~mask] = -5  # out of range, never read
            table = rng.integers(0, 2**64, size=(20, words), dtype=np.uint64)
            for k in (0, 1, 9, 50, 64):
                out += er.topk_hamming(q, keys, k, lengths=lengths)
                out += er.topk_hamming(q, keys[0], k, mask=mask[0])
                out += er.topk_hamming(q, keys, k, mask=mask)
                out += er.topk_hamming_lookup(q, ids, table, k, mask=mask, padding_id=3)
                out += er.topk_hamming_lookup(q, ids[0], table, k, mask=mask[0])
            out += er.topk_hamming(q, keys[:, :0], 4)  # L = 0
            out += er.topk_hamming(q[:0], keys[:0], 4)  # B = 0
            out += er.topk_hamming_lookup(q, ids[:, :0], table, 4)
            out += er.topk_hamming_lookup(q, ids, table[:0], 4, lengths=np.zeros(7, dtype=np.int64))  # N = 0
            out += er.topk_hamming_lookup(q, np.full((7, 50), 9), table[:0], 4, padding_id=9)
            out.append(er.pack_signatures(rng.standard_normal((6, 5)), er.hyperplanes(5, 64 * words - 3, seed=seed)))
            out.append(er.hamming(q[:, None], keys))
    return out
"""


def _run_edge_cases() -> list[np.ndarray]:
    namespace: dict = {}
    exec(_EDGE_CASES, namespace)  # noqa: S102
    return namespace["run_all"]()


def test_serial_boundschecked_build_agrees_with_parallel(tmp_path: Path) -> None:
    """ETARETRIEVAL_SERIAL=1 (no parallel=True) + NUMBA_BOUNDSCHECK=1: same results, no out-of-bounds access."""
    script = _EDGE_CASES + "\nimport sys\nassert not __import__('etaretrieval')._jit.PARALLEL\n" \
        "np.savez(sys.argv[1], *run_all())\n"
    env = dict(os.environ, ETARETRIEVAL_SERIAL="1", ETARETRIEVAL_NO_CACHE="1", NUMBA_BOUNDSCHECK="1")
    env.pop("NUMBA_DISABLE_JIT", None)  # a compiled, bounds-checked build, also from the pure-Python pass
    target = tmp_path / "serial.npz"
    proc = subprocess.run([sys.executable, "-c", script, str(target)], env=env, capture_output=True, text=True,
                          timeout=600, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-5000:]
    expected = _run_edge_cases()
    with np.load(target) as serial:
        assert len(serial.files) == len(expected)
        for i, want in enumerate(expected):
            got = serial[f"arr_{i}"]
            assert got.dtype == want.dtype and got.shape == want.shape
            np.testing.assert_array_equal(got, want)
