"""SDIM (sdim_codes, sdim_group_sums, sdim_pool, sdim_buckets, sdim_from_buckets) against the plain reference."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import reference as ref
from hypothesis import given
from hypothesis import strategies as st

import etaretrieval as er

#: Group widths: dividing 64, straddling word boundaries (3, 5, 7, 12), and the largest.
TAU = st.sampled_from([1, 2, 3, 4, 5, 7, 8, 12, 16])
VALIDITY = st.sampled_from(["none", "lengths", "mask2d", "mask1d"])


@dataclasses.dataclass
class Case:
    query: np.ndarray
    keys: np.ndarray
    values: np.ndarray
    tau: int
    bits: int
    lengths: np.ndarray | None
    mask: np.ndarray | None

    def kwargs(self) -> dict:
        return {"bits": self.bits, "lengths": self.lengths, "mask": self.mask}

    def ref_kwargs(self) -> dict:
        return {"lengths": self.lengths, "mask": self.mask}


def near(rng: np.random.Generator, base: np.ndarray, shape: tuple[int, ...], bits: int, flip: float) -> np.ndarray:
    """Signatures of ``shape`` that copy ``base`` (broadcast).

    Each of the ``bits`` bits is flipped with probability ``flip``.
    """
    flips = rng.random(shape[:-1] + (64 * shape[-1],)) < flip
    flips[..., bits:] = False
    weights = np.uint64(1) << np.arange(64, dtype=np.uint64)
    words = (flips.reshape(shape + (64,)).astype(np.uint64) * weights).sum(axis=-1, dtype=np.uint64)
    return np.ascontiguousarray(np.broadcast_to(base, shape) ^ words)


def make_validity(
    rng: np.random.Generator, kind: str, batch: int, length: int,
) -> tuple[np.ndarray | None, np.ndarray | None]:
    if kind == "lengths":
        return rng.integers(0, length + 1, size=batch).astype(rng.choice([np.int64, np.int32, np.uint8])), None
    if kind in ("mask2d", "mask1d"):
        shape = (batch, length) if kind == "mask2d" else (length,)
        return None, rng.random(shape) < rng.choice([0.1, 0.5, 0.9])
    return None, None


@st.composite
def cases(
    draw: st.DrawFn, *, max_batch: int = 4, max_length: int = 24, integers: bool | None = None, shared: bool = False
) -> Case:
    tau = draw(TAU)
    groups = draw(st.integers(1, max(1, 160 // tau)))
    bits = groups * tau
    words = ref.words_for(bits)
    batch = draw(st.integers(0, max_batch))
    length = draw(st.integers(0, max_length))
    d = draw(st.integers(1, 5))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    query = ref.random_signatures(rng, (batch, words), bits=bits)
    shared_keys = shared or draw(st.booleans())
    flip = draw(st.sampled_from([0.0, 0.02, 0.2, 0.5]))  # near the target: codes match often
    base = query[:1, None] if shared_keys and batch else (query[:, None] if batch else np.zeros(words, np.uint64))
    kshape = (length, words) if shared_keys else (batch, length, words)
    keys = near(rng, base.reshape(-1, words)[0] if shared_keys else base, kshape, bits, flip)
    dtype = draw(st.sampled_from([np.float32, np.float64]))
    vshape = (length, d) if shared or draw(st.booleans()) else (batch, length, d)
    if integers if integers is not None else draw(st.booleans()):
        values = rng.integers(-4, 5, size=vshape).astype(dtype)  # exact sums: zero sums and ties
    else:
        values = rng.standard_normal(vshape).astype(dtype)
    lengths, mask = make_validity(rng, draw(VALIDITY), batch, length)
    return Case(query, keys, values, tau, bits, lengths, mask)


def check_untouched(case: Case, run: callable) -> None:  # type: ignore[valid-type]
    arrays = [a for a in (case.query, case.keys, case.values, case.lengths, case.mask) if a is not None]
    before = [a.copy() for a in arrays]
    run()
    for a, b in zip(arrays, before):
        np.testing.assert_array_equal(a, b)


# ----------------------------------------------------------------------------- codes


@given(tau=TAU, extra=st.integers(0, 3), seed=st.integers(0, 2**32 - 1), lead=st.sampled_from([(), (3,), (2, 3), (0,)]))
def test_codes_match_reference(tau: int, extra: int, seed: int, lead: tuple[int, ...]) -> None:
    rng = np.random.default_rng(seed)
    bits = tau * (1 + (extra * 37 + seed) % max(1, 1024 // tau))
    sig = ref.random_signatures(rng, lead + (ref.words_for(bits),), bits=bits)
    got = er.sdim_codes(sig, tau, bits=bits)
    assert got.dtype == np.int32 and got.shape == lead + (bits // tau,)
    np.testing.assert_array_equal(got, ref.sdim_codes(sig, tau, bits))
    assert ((got >= 0) & (got < 1 << tau)).all()


def test_codes_straddle_a_word_boundary() -> None:
    # bits 60..71 form group 5 of tau = 12: the low 4 from word 0, the high 8 from word 1
    sig = np.array([[0xA << 60, 0x5B]], dtype=np.uint64)
    codes = er.sdim_codes(sig, 12, bits=72)
    assert codes.tolist() == [[0, 0, 0, 0, 0, 0x5BA]]


def test_codes_default_bits_and_layouts() -> None:
    sig = np.random.default_rng(0).integers(0, 2**64, size=(5, 2), dtype=np.uint64)
    want = ref.sdim_codes(sig, 8, 128)
    for layout in ref.LAYOUTS:
        np.testing.assert_array_equal(er.sdim_codes(ref.readonly(ref.relayout(sig, layout)), 8), want)


# ----------------------------------------------------------------------------- pooling


@given(case=cases())
def test_pool_matches_reference(case: Case) -> None:
    got: list[np.ndarray] = []
    check_untouched(
        case, lambda: got.append(er.sdim_pool(case.query, case.keys, case.values, case.tau, **case.kwargs())))
    out = got[0]
    want = ref.sdim_pool(case.query, case.keys, case.values, case.tau, case.bits, **case.ref_kwargs())
    assert out.dtype == case.values.dtype and out.shape == (case.query.shape[0], case.values.shape[-1])
    np.testing.assert_array_equal(out, want)  # same arithmetic: bit for bit
    # stated apart from the reference: an average of unit (or zero) vectors has norm <= 1
    norms = np.linalg.norm(out.astype(np.float64), axis=1)
    assert (norms <= 1 + 1e-6).all()


@given(case=cases())
def test_group_sums_match_reference(case: Case) -> None:
    got = er.sdim_group_sums(case.query, case.keys, case.values, case.tau, **case.kwargs())
    want = ref.sdim_group_sums(case.query, case.keys, case.values, case.tau, case.bits, **case.ref_kwargs())
    assert got.dtype == case.values.dtype
    np.testing.assert_array_equal(got, want)
    np.testing.assert_array_equal(
        er.sdim_pool(case.query, case.keys, case.values, case.tau, **case.kwargs()), ref.sdim_normalise_mean(got)
    )


@given(case=cases())
def test_buckets_path_equals_direct_path(case: Case) -> None:
    """Summarise each row's sequence once, then serve its target from the summary: the same bits as sdim_pool."""
    batch = case.query.shape[0]
    keys = np.broadcast_to(case.keys, (batch, *case.keys.shape[-2:]))
    buckets = er.sdim_buckets(keys, case.values, case.tau, **case.kwargs())
    assert buckets.shape == (batch, case.bits // case.tau, 1 << case.tau, case.values.shape[-1])
    assert buckets.dtype == case.values.dtype
    if case.tau <= 8:  # the reference fills every bucket one Python float at a time
        np.testing.assert_array_equal(
            buckets, ref.sdim_buckets(keys, case.values, case.tau, case.bits, **case.ref_kwargs())
        )
    np.testing.assert_array_equal(
        er.sdim_from_buckets(case.query, buckets),
        er.sdim_pool(case.query, case.keys, case.values, case.tau, **case.kwargs()),
    )


@given(case=cases(max_batch=5, shared=True), data=st.data())
def test_one_user_summary_serves_many_candidates(case: Case, data: st.DataObject) -> None:
    """Shared (L, W) keys: one (G, 2**tau, d) summary answers every candidate target."""
    keys, values = case.keys, case.values
    length, d = keys.shape[0], values.shape[-1]
    mask = data.draw(st.sampled_from([None, "mask", "lengths"]))
    kw: dict = {}
    if mask == "mask":
        kw["mask"] = np.arange(length) % 3 != 1
    elif mask == "lengths":
        kw["lengths"] = np.array([length // 2])
    buckets = er.sdim_buckets(keys, values, case.tau, bits=case.bits, **kw)
    assert buckets.shape == (case.bits // case.tau, 1 << case.tau, d)
    lengths = None if "lengths" not in kw else np.full(case.query.shape[0], length // 2)
    want = er.sdim_pool(case.query, keys, values, case.tau, bits=case.bits, mask=kw.get("mask"), lengths=lengths)
    np.testing.assert_array_equal(er.sdim_from_buckets(case.query, buckets), want)


@given(case=cases(integers=True), seed=st.integers(0, 2**32 - 1))
def test_permuting_positions_with_their_values(case: Case, seed: int) -> None:
    """Sums do not depend on the order of the behaviours; with integer values (exact sums) not even by rounding."""
    batch, length = case.query.shape[0], case.keys.shape[-2]
    valid = ref.valid_positions(batch, length, lengths=case.lengths, mask=case.mask)
    perm = np.random.default_rng(seed).permutation(length)
    keys = np.broadcast_to(case.keys, (batch, length, case.keys.shape[-1]))[:, perm]
    values = np.broadcast_to(case.values, (batch, length, case.values.shape[-1]))[:, perm]
    a = er.sdim_pool(case.query, case.keys, case.values, case.tau, **case.kwargs())
    b = er.sdim_pool(case.query, keys, values, case.tau, bits=case.bits, mask=valid[:, perm])
    np.testing.assert_array_equal(a, b)


@given(case=cases(integers=False), seed=st.integers(0, 2**32 - 1))
def test_permuting_float_positions_changes_only_rounding(case: Case, seed: int) -> None:
    batch, length = case.query.shape[0], case.keys.shape[-2]
    valid = ref.valid_positions(batch, length, lengths=case.lengths, mask=case.mask)
    perm = np.random.default_rng(seed).permutation(length)
    keys = np.broadcast_to(case.keys, (batch, length, case.keys.shape[-1]))[:, perm]
    values = np.broadcast_to(case.values, (batch, length, case.values.shape[-1]))[:, perm]
    a = er.sdim_pool(case.query, case.keys, case.values, case.tau, **case.kwargs())
    b = er.sdim_pool(case.query, keys, values, case.tau, bits=case.bits, mask=valid[:, perm])
    tol = 1e-5 if case.values.dtype == np.float32 else 1e-12
    np.testing.assert_allclose(a, b, rtol=tol, atol=tol)


@given(case=cases())
def test_lengths_equal_prefix_mask(case: Case) -> None:
    batch, length = case.query.shape[0], case.keys.shape[-2]
    lengths = np.random.default_rng(batch * 100 + length).integers(0, length + 1, size=batch)
    mask = np.arange(length)[None, :] < lengths[:, None]
    args = (case.query, case.keys, case.values, case.tau)
    np.testing.assert_array_equal(
        er.sdim_pool(*args, bits=case.bits, lengths=lengths), er.sdim_pool(*args, bits=case.bits, mask=mask)
    )


@given(case=cases(), data=st.data())
def test_non_contiguous_and_read_only_inputs(case: Case, data: st.DataObject) -> None:
    want = er.sdim_pool(case.query, case.keys, case.values, case.tau, **case.kwargs())
    layout = data.draw(st.sampled_from(ref.LAYOUTS))
    q, k, v = (ref.readonly(ref.relayout(a, layout)) for a in (case.query, case.keys, case.values))
    np.testing.assert_array_equal(er.sdim_pool(q, k, v, case.tau, **case.kwargs()), want)


def test_masked_positions_never_contribute() -> None:
    rng = np.random.default_rng(3)
    query = rng.integers(0, 2**64, size=(3, 1), dtype=np.uint64)
    keys = np.repeat(query[:, None], 6, axis=1)  # every position matches every group
    values = rng.standard_normal((3, 6, 4))
    mask = np.array([[1, 0, 1, 0, 0, 0], [0] * 6, [1] * 6], dtype=bool)
    poisoned = values.copy()
    poisoned[~mask] = np.nan  # never read
    out = er.sdim_pool(query, keys, poisoned, 8, mask=mask)
    s = values[0, 0] + values[0, 2]
    np.testing.assert_allclose(out[0], s / np.linalg.norm(s), rtol=1e-12)
    np.testing.assert_array_equal(out[1], np.zeros(4))  # all masked: zeros
    s = values[2].sum(axis=0)
    np.testing.assert_allclose(out[2], s / np.linalg.norm(s), rtol=1e-12)


def test_empty_shapes() -> None:
    q = np.zeros((0, 2), dtype=np.uint64)
    assert er.sdim_pool(q, np.zeros((0, 5, 2), np.uint64), np.zeros((5, 3), np.float32), 4).shape == (0, 3)
    q = np.zeros((2, 2), dtype=np.uint64)
    out = er.sdim_pool(q, np.zeros((0, 2), np.uint64), np.zeros((0, 3)), 4)  # L = 0
    np.testing.assert_array_equal(out, np.zeros((2, 3)))
    b = er.sdim_buckets(np.zeros((0, 2), np.uint64), np.zeros((0, 3)), 4)
    np.testing.assert_array_equal(b, np.zeros((32, 16, 3)))
    np.testing.assert_array_equal(er.sdim_from_buckets(q, b), np.zeros((2, 3)))
    assert er.sdim_from_buckets(q[:0], b).shape == (0, 3)
    assert er.sdim_codes(np.zeros((0, 1), np.uint64), 4).shape == (0, 16)


def test_zero_sum_group_contributes_zero() -> None:
    """A group whose matching values cancel exactly is a zero vector, not NaN (no eps)."""
    query = np.zeros((1, 1), dtype=np.uint64)
    keys = np.zeros((2, 1), dtype=np.uint64)
    values = np.array([[1.0, -2.0], [-1.0, 2.0]])
    np.testing.assert_array_equal(er.sdim_pool(query, keys, values, 4), [[0.0, 0.0]])


def test_serial_equals_parallel(num_threads_and_tasks) -> None:  # type: ignore[no-untyped-def]
    rng = np.random.default_rng(5)
    query = rng.integers(0, 2**64, size=(9, 2), dtype=np.uint64)
    keys = near(rng, query[:, None], (9, 40, 2), 100, 0.05)
    values = rng.standard_normal((9, 40, 3)).astype(np.float32)
    want = er.sdim_pool(query, keys, values, 5, bits=100)
    wantb = er.sdim_buckets(keys, values, 5, bits=100)
    for n, t in ((1, 1), (2, 3)):
        with num_threads_and_tasks(n, t):
            np.testing.assert_array_equal(er.sdim_pool(query, keys, values, 5, bits=100), want)
            np.testing.assert_array_equal(er.sdim_buckets(keys, values, 5, bits=100), wantb)


# ----------------------------------------------------------------------------- errors


def _args() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    return np.zeros((2, 2), np.uint64), np.zeros((2, 5, 2), np.uint64), np.zeros((2, 5, 3), np.float32)


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"tau": 0}, ValueError, r"tau must be in 1\.\.16, got 0"),
        ({"tau": 17}, ValueError, r"tau must be in 1\.\.16, got 17"),
        ({"tau": 2.0}, TypeError, "tau must be an integer"),
        ({"tau": True}, TypeError, "tau must be an integer, got bool"),
        ({"tau": 3}, ValueError, "tau must divide bits: tau = 3 does not divide bits = 128"),
        ({"bits": 64}, ValueError, r"bits must be in 65\.\.128 for signatures of W = 2 words, got 64"),
        ({"values": np.zeros((2, 5, 3), np.int32)}, er.DTypeError, "values must have dtype float32 or float64"),
        ({"values": np.zeros((2, 4, 3))}, ValueError, r"values must have shape \(2, 5, d\) or \(5, d\)"),
        ({"values": np.zeros((3, 5, 3))}, ValueError, r"values must have shape \(2, 5, d\)"),
        ({"keys": np.zeros((2, 5, 1), np.uint64)}, ValueError, "keys must have W = 2 words like query"),
        ({"keys": np.zeros((2, 5, 2), np.int64)}, er.DTypeError, "keys must hold packed signatures of dtype uint64"),
        ({"lengths": [1, 6]}, ValueError, r"lengths must lie in 0\.\.5, got lengths\[1\] = 6"),
        ({"mask": np.ones(5, bool), "lengths": [1, 1]}, ValueError, "pass either lengths or mask"),
        ({"mask": np.ones(4, bool)}, ValueError, r"mask must have shape \(2, 5\) or \(5,\)"),
    ],
)
def test_pool_errors(kwargs: dict, error: type, match: str) -> None:
    query, keys, values = _args()
    args = {"query": query, "keys": keys, "values": values, "tau": 4, **kwargs}
    positional = [args.pop(name) for name in ("query", "keys", "values", "tau")]
    for fn in (er.sdim_pool, er.sdim_group_sums):
        with pytest.raises(error, match=match):
            fn(*positional, **args)


def test_bucket_errors() -> None:
    keys = np.zeros((5, 16), np.uint64)
    with pytest.raises(ValueError, match=r"tau = 16 makes a bucket summary of G x 2\*\*tau x d = 64 x 65536 x 32"):
        er.sdim_buckets(keys, np.zeros((5, 32), np.float32), 16)
    with pytest.raises(ValueError, match=r"values must have shape \(1, 5, d\) or \(5, d\)"):
        er.sdim_buckets(keys, np.zeros((4, 32)), 4)
    q = np.zeros((2, 1), np.uint64)
    with pytest.raises(ValueError, match=r"buckets must have shape \(G, 2\*\*tau, d\) or \(2, G, 2\*\*tau, d\)"):
        er.sdim_from_buckets(q, np.zeros((16, 3, 4)))  # 3 is no power of two
    with pytest.raises(ValueError, match=r"buckets must have shape"):
        er.sdim_from_buckets(q, np.zeros((3, 16, 16, 4)))  # batch 3 for 2 targets
    with pytest.raises(ValueError, match="summarise 128-bit signatures, but query has W = 1 words"):
        er.sdim_from_buckets(q, np.zeros((32, 16, 4)))
    with pytest.raises(er.DTypeError, match="buckets must have dtype float32 or float64"):
        er.sdim_from_buckets(q, np.zeros((16, 16, 4), np.int32))


def test_nan_at_a_matching_position_propagates() -> None:
    """Only an exactly zero squared norm skips a group: a NaN is not hidden."""
    query = np.zeros((2, 1), dtype=np.uint64)
    keys = np.array([[[0], [0]], [[0], [1]]], dtype=np.uint64)  # row 1: position 1 differs in group 0
    values = np.array([[[1.0, 0.0], [np.nan, 1.0]], [[1.0, 0.0], [np.nan, 1.0]]])
    out = er.sdim_pool(query, keys, values, 1, bits=2)
    assert np.isnan(out[0]).all()
    assert np.isnan(out[1]).all()  # group 1 of row 1 matches the NaN position
    np.testing.assert_array_equal(er.sdim_pool(query, keys, values, 1, bits=2, lengths=[1, 1]), [[1.0, 0.0]] * 2)
