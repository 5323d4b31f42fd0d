"""hyperplanes, pack_signatures and SimHasher against the reference (API.md section 1)."""

from __future__ import annotations

import hashlib
import warnings

import numpy as np
import pytest
import reference as ref
from hypothesis import given
from hypothesis import strategies as st

import etaretrieval as er

BITS = st.one_of(
    st.integers(1, 300),
    st.sampled_from([63, 64, 65, 127, 128, 129, 383, 511, 512, 513, 700, 1023, 1024]),
)
FLOATS = st.sampled_from([np.float32, np.float64])
LAYOUT = st.sampled_from(ref.LAYOUTS)


@st.composite
def lead_shapes(draw: st.DrawFn, max_rows: int = 24) -> tuple[int, ...]:
    """Leading axes of x: 0..3 axes (x of ndim 1..4), sizes 0..5, at most ``max_rows`` rows."""
    shape = tuple(draw(st.lists(st.integers(0, 5), min_size=0, max_size=3)))
    if int(np.prod(shape, dtype=np.int64)) > max_rows:
        shape = shape[:1]
    return shape


def integer_valued(rng: np.random.Generator, shape: tuple[int, ...], dtype: type, span: int = 3) -> np.ndarray:
    """Small integers as floats: every projection is exact in float32 and float64 (and often exactly 0)."""
    return rng.integers(-span, span + 1, size=shape).astype(dtype)


def as_layout(arr: np.ndarray, layout: str, ro: bool) -> np.ndarray:
    out = ref.relayout(arr, layout)
    return ref.readonly(out) if ro else out


def bits_of(sig: np.ndarray, bits: int) -> np.ndarray:
    """Unpack ``(..., W)`` uint64 to ``(..., bits)`` bool, bit j from word j // 64, bit j % 64."""
    sig = np.asarray(sig)
    j = np.arange(bits)
    return ((sig[..., j // 64] >> (j % 64).astype(np.uint64)) & np.uint64(1)).astype(bool)


# --------------------------------------------------------------------------- hyperplanes

#: sha256 of ``hyperplanes(8, 70, seed=0)`` as little-endian float32 bytes, pinned when
#: the library was written: "same seed, same planes, on every platform and version".
PLANES_8_70_SEED0_SHA256 = "f1d67487300ea7a4eb8f085cc5bc8ea53bca338a8bc22634a6c6df551a1eacfd"


def test_hyperplanes_pinned_checksum() -> None:
    planes = er.hyperplanes(8, 70, seed=0)
    digest = hashlib.sha256(np.ascontiguousarray(planes, dtype="<f4").tobytes()).hexdigest()
    assert digest == PLANES_8_70_SEED0_SHA256


@given(dim=st.integers(1, 40), bits=BITS, seed=st.integers(0, 2**63))
def test_hyperplanes_shape_dtype_deterministic(dim: int, bits: int, seed: int) -> None:
    planes = er.hyperplanes(dim, bits, seed=seed)
    assert planes.shape == (dim, bits)
    assert planes.dtype == np.float32
    assert np.isfinite(planes).all()
    np.testing.assert_array_equal(planes, er.hyperplanes(dim, bits, seed=seed))
    np.testing.assert_array_equal(planes, er.hyperplanes(np.int64(dim), np.int32(bits), seed=np.uint64(seed)))


def test_hyperplanes_default_seed_is_zero() -> None:
    np.testing.assert_array_equal(er.hyperplanes(5, 9), er.hyperplanes(5, 9, seed=0))


def test_hyperplanes_seeds_differ() -> None:
    assert not np.array_equal(er.hyperplanes(8, 64, seed=0), er.hyperplanes(8, 64, seed=1))


def test_hyperplanes_standard_normal() -> None:
    z = er.hyperplanes(64, 1024, seed=3).astype(np.float64).ravel()  # 65536 entries
    assert abs(z.mean()) < 0.02
    assert abs(z.std() - 1.0) < 0.02
    assert abs(np.mean(np.abs(z) < 1.0) - 0.6827) < 0.01  # P(|z| < 1) of N(0, 1)
    assert (z > 0).mean() == pytest.approx(0.5, abs=0.01)


def test_hyperplanes_generator_seed() -> None:
    a = er.hyperplanes(6, 100, seed=np.random.default_rng(42))
    b = er.hyperplanes(6, 100, seed=np.random.default_rng(42))
    assert a.shape == (6, 100) and a.dtype == np.float32
    np.testing.assert_array_equal(a, b)  # same generator state, same planes
    gen = np.random.default_rng(42)
    first = er.hyperplanes(6, 100, seed=gen)
    second = er.hyperplanes(6, 100, seed=gen)  # the generator was advanced
    np.testing.assert_array_equal(first, a)
    assert not np.array_equal(first, second)


@pytest.mark.parametrize("bits", [0, -1, 1025, 4096])
def test_hyperplanes_bits_out_of_range(bits: int) -> None:
    with pytest.raises(ValueError, match="bits"):
        er.hyperplanes(4, bits)


@pytest.mark.parametrize("bits", [8.0, "8", None, True])
def test_hyperplanes_bits_not_an_int(bits: object) -> None:
    with pytest.raises(TypeError, match="bits"):
        er.hyperplanes(4, bits)  # type: ignore[arg-type]


@pytest.mark.parametrize("dim", [0, -3])
def test_hyperplanes_dim_out_of_range(dim: int) -> None:
    with pytest.raises(ValueError, match="dim"):
        er.hyperplanes(dim, 64)


@pytest.mark.parametrize("dim", [4.0, "4", None, True])
def test_hyperplanes_dim_not_an_int(dim: object) -> None:
    with pytest.raises(TypeError, match="dim"):
        er.hyperplanes(dim, 64)  # type: ignore[arg-type]


def test_hyperplanes_negative_seed() -> None:
    with pytest.raises(ValueError, match="seed"):
        er.hyperplanes(4, 64, seed=-1)


@pytest.mark.parametrize("seed", [1.5, "0", None])
def test_hyperplanes_bad_seed_type(seed: object) -> None:
    with pytest.raises(TypeError, match="seed"):
        er.hyperplanes(4, 64, seed=seed)  # type: ignore[arg-type]


# --------------------------------------------------------------------------- pack_signatures: exact cases


@given(
    lead=lead_shapes(),
    dim=st.integers(1, 9),
    bits=BITS,
    xdtype=FLOATS,
    pdtype=FLOATS,
    xlayout=LAYOUT,
    playout=LAYOUT,
    ro=st.booleans(),
    seed=st.integers(0, 2**32 - 1),
)
def test_pack_matches_reference_integer_valued(
    lead: tuple[int, ...],
    dim: int,
    bits: int,
    xdtype: type,
    pdtype: type,
    xlayout: str,
    playout: str,
    ro: bool,
    seed: int,
) -> None:
    """Integer-valued x and planes: every projection is exact, so the bits must match exactly (zeros give 0)."""
    rng = np.random.default_rng(seed)
    x0 = integer_valued(rng, lead + (dim,), xdtype)
    p0 = integer_valued(rng, (dim, bits), pdtype)
    x = as_layout(x0, xlayout, ro)
    planes = as_layout(p0, playout, ro)
    sig = er.pack_signatures(x, planes)
    expected = ref.pack(x0, p0)
    assert sig.dtype == np.uint64
    assert sig.shape == lead + (ref.words_for(bits),)
    np.testing.assert_array_equal(sig, expected)
    np.testing.assert_array_equal(x, x0)  # inputs untouched
    np.testing.assert_array_equal(planes, p0)
    assert (ref.clear_unused_bits(sig, bits) == sig).all()  # unused high bits are 0


@given(
    lead=lead_shapes(),
    dim=st.integers(1, 12),
    bits=st.integers(1, 300),
    xdtype=FLOATS,
    seed=st.integers(0, 2**32 - 1),
    hseed=st.integers(0, 1000),
)
def test_pack_matches_reference_gaussian(
    lead: tuple[int, ...], dim: int, bits: int, xdtype: type, seed: int, hseed: int
) -> None:
    """Real-valued x with real hyperplanes: bits agree wherever the projection is clearly away from 0."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(lead + (dim,)).astype(xdtype)
    planes = er.hyperplanes(dim, bits, seed=hseed)
    sig = er.pack_signatures(x, planes)
    proj = ref.projection(x, planes)
    scale = ref.projection(np.abs(x), np.abs(planes))
    sure = np.abs(proj) > 1e-4 * scale + 1e-30
    np.testing.assert_array_equal(bits_of(sig, bits)[sure], (proj > 0)[sure])
    assert (ref.clear_unused_bits(sig, bits) == sig).all()


def test_pack_docstring_example_bit_layout() -> None:
    planes = np.array([[1.0, -1.0, 0.0]], dtype=np.float32)  # dim 1, 3 bits
    sig = er.pack_signatures(np.array([[2.0], [-1.0], [0.0]]), planes)
    np.testing.assert_array_equal(sig, np.array([[1], [2], [0]], dtype=np.uint64))


@pytest.mark.parametrize("bits", [1, 63, 64, 65, 100, 128, 200, 1000, 1024])
def test_pack_bit_positions_lsb_first(bits: int) -> None:
    """Plane j = e_j-ish: x = unit vector on plane j sets exactly bit j (word j // 64, bit j % 64)."""
    planes = -np.ones((bits, bits), dtype=np.float32) + 2 * np.eye(bits, dtype=np.float32)  # +1 diag, -1 off
    x = np.eye(bits, dtype=np.float64)  # x_r @ planes[:, j] = +1 if j == r else -1
    sig = er.pack_signatures(x, planes)
    for r in range(bits):
        expect = np.zeros(ref.words_for(bits), dtype=np.uint64)
        expect[r // 64] = np.uint64(1) << np.uint64(r % 64)
        np.testing.assert_array_equal(sig[r], expect)


@pytest.mark.parametrize("bits", [1, 5, 64, 65, 130, 1024])
def test_pack_all_ones_leaves_high_bits_clear(bits: int) -> None:
    planes = np.ones((3, bits), dtype=np.float32)
    sig = er.pack_signatures(np.ones((2, 3), dtype=np.float32), planes)
    full = ref.clear_unused_bits(np.full((2, ref.words_for(bits)), np.uint64(2**64 - 1)), bits)
    np.testing.assert_array_equal(sig, full)
    np.testing.assert_array_equal(er.pack_signatures(-np.ones((2, 3)), planes), np.zeros_like(full))


def test_pack_exact_zero_projection_gives_zero() -> None:
    planes = np.array([[1.0, -1.0, 2.0, 0.0], [1.0, -1.0, -1.0, 5.0]], dtype=np.float32)
    x = np.array([[1.0, -1.0], [0.0, 0.0], [2.0, 1.0]], dtype=np.float32)
    # projections: row0 [0, 0, 3, -5], row1 [0, 0, 0, 0], row2 [3, -3, 3, 5]
    np.testing.assert_array_equal(er.pack_signatures(x, planes).ravel(), np.array([0b0100, 0, 0b1101], dtype=np.uint64))


def test_pack_negation_complements() -> None:
    """x -> -x flips every bit whose projection is clearly away from 0 (and only the low `bits` bits)."""
    rng = np.random.default_rng(5)
    hasher = er.SimHasher(16, 200, seed=2)
    x = rng.standard_normal((30, 16))
    proj = ref.projection(x, hasher.planes)
    sure = np.abs(proj) > 1e-6 * ref.projection(np.abs(x), np.abs(hasher.planes))
    pos, neg = hasher(x), hasher(-x)
    np.testing.assert_array_equal(bits_of(neg, 200)[sure], bits_of(ref.complement(pos, 200), 200)[sure])
    assert (ref.clear_unused_bits(neg, 200) == neg).all()


# --------------------------------------------------------------------------- shapes, layouts, chunks


def test_pack_x_ndim_1_and_3() -> None:
    rng = np.random.default_rng(1)
    planes = integer_valued(rng, (5, 130), np.float32)
    x1 = integer_valued(rng, (5,), np.float64)
    s1 = er.pack_signatures(x1, planes)
    assert s1.shape == (3,) and s1.dtype == np.uint64
    np.testing.assert_array_equal(s1, ref.pack(x1, planes))
    x3 = integer_valued(rng, (2, 3, 5), np.float32)
    s3 = er.pack_signatures(x3, planes)
    assert s3.shape == (2, 3, 3)
    np.testing.assert_array_equal(s3, ref.pack(x3, planes))


@pytest.mark.parametrize("lead", [(0,), (0, 3), (3, 0), (2, 0, 4)])
def test_pack_empty(lead: tuple[int, ...]) -> None:
    planes = er.hyperplanes(4, 70)
    sig = er.pack_signatures(np.zeros(lead + (4,), dtype=np.float32), planes)
    assert sig.shape == lead + (2,)
    assert sig.dtype == np.uint64


def _unreshapable_views(rng: np.random.Generator, dim: int, dtype: type) -> list[np.ndarray]:
    """Views of x whose leading axes cannot be merged without a copy."""
    big = integer_valued(rng, (3, 5, 2 * dim), dtype)
    views = [
        big[:, :4, :dim],  # truncated inner axis
        np.transpose(big[:, :, :dim], (1, 0, 2)),  # leading axes swapped
        big[::-1, 1::2, ::2],  # reversed, stepped, last axis strided
        np.transpose(big[..., :dim], (2, 0, 1)).T,  # all axes permuted
    ]
    for v in views:
        assert not np.shares_memory(v.reshape(-1, dim), v)  # really not expressible as a 2-D view
    return views


@pytest.mark.parametrize("xdtype", [np.float32, np.float64])
@pytest.mark.parametrize("ro", [False, True])
def test_pack_unreshapable_x(xdtype: type, ro: bool, tiny_pack_chunks: int) -> None:
    rng = np.random.default_rng(11)
    dim = 4
    planes = integer_valued(rng, (dim, 75), np.float32)
    for v in _unreshapable_views(rng, dim, xdtype):
        x = ref.readonly(v) if ro else v
        before = x.copy()
        sig = er.pack_signatures(x, planes)
        assert sig.shape == x.shape[:-1] + (2,)
        np.testing.assert_array_equal(sig, ref.pack(before, planes))
        np.testing.assert_array_equal(x, before)


@given(
    lead=lead_shapes(max_rows=30),
    dim=st.integers(1, 6),
    bits=BITS,
    chunk=st.integers(1, 300),
    layout=LAYOUT,
    seed=st.integers(0, 2**32 - 1),
)
def test_pack_chunking_does_not_change_results(
    pack_chunk_elements,  # noqa: ANN001
    lead: tuple[int, ...],
    dim: int,
    bits: int,
    chunk: int,
    layout: str,
    seed: int,
) -> None:
    rng = np.random.default_rng(seed)
    x = ref.relayout(integer_valued(rng, lead + (dim,), np.float32), layout)
    planes = integer_valued(rng, (dim, bits), np.float64)
    with pack_chunk_elements(chunk):
        small = er.pack_signatures(x, planes)
    np.testing.assert_array_equal(small, er.pack_signatures(x, planes))
    np.testing.assert_array_equal(small, ref.pack(x, planes))


def test_pack_tiny_chunks_many_rows(tiny_pack_chunks: int) -> None:
    rng = np.random.default_rng(2)
    x = integer_valued(rng, (4, 13, 3), np.float64)
    planes = integer_valued(rng, (3, 67), np.float32)
    np.testing.assert_array_equal(er.pack_signatures(x, planes), ref.pack(x, planes))


# --------------------------------------------------------------------------- check_finite


NONFINITE = [np.nan, np.inf, -np.inf]


@pytest.mark.parametrize("bad", NONFINITE)
@pytest.mark.parametrize("xdtype", [np.float32, np.float64])
def test_pack_nonfinite_raises_naming_row(bad: float, xdtype: type) -> None:
    planes = er.hyperplanes(4, 70)
    x = np.ones((6, 4), dtype=xdtype)
    x[3, 2] = bad
    x[5, 0] = bad
    with pytest.raises(ValueError, match=r"row \(?3\b"):
        er.pack_signatures(x, planes)


@pytest.mark.parametrize("bad", NONFINITE)
def test_pack_nonfinite_3d_names_row(bad: float, tiny_pack_chunks: int) -> None:
    planes = er.hyperplanes(4, 70)
    x = np.ones((2, 3, 4), dtype=np.float32)
    x[1, 2, 0] = bad
    with pytest.raises(ValueError, match=r"row \(1, 2\)"):
        er.pack_signatures(x, planes)
    x[0, 1, 3] = bad  # now an earlier row, in an earlier chunk when chunks are tiny
    with pytest.raises(ValueError, match=r"row \(0, 1\)"):
        er.pack_signatures(x, planes)


@pytest.mark.parametrize("bad", NONFINITE)
def test_pack_nonfinite_1d_raises(bad: float) -> None:
    planes = er.hyperplanes(4, 70)
    x = np.array([1.0, bad, 0.5, 2.0])
    with pytest.raises(ValueError, match=r"x holds a non-finite value \(NaN or inf\); pass check_finite"):
        er.pack_signatures(x, planes)


@pytest.mark.parametrize("bad", NONFINITE)
@pytest.mark.parametrize("xdtype", [np.float32, np.float64])
def test_pack_check_finite_false(bad: float, xdtype: type) -> None:
    """check_finite=False hashes non-finite rows without raising (nor warning); other rows are unaffected."""
    rng = np.random.default_rng(4)
    planes = integer_valued(rng, (4, 70), np.float32)
    x = integer_valued(rng, (6, 4), xdtype)
    x[3, 2] = bad
    sig = er.pack_signatures(x, planes, check_finite=False)
    assert sig.shape == (6, 2)
    good = [0, 1, 2, 4, 5]
    np.testing.assert_array_equal(sig[good], ref.pack(x[good], planes))
    hasher = er.SimHasher(4, 70)
    hasher(x, check_finite=False)
    with pytest.raises(ValueError, match=r"row \(?3\b"):
        hasher(x)


def test_pack_large_finite_values_do_not_raise() -> None:
    """Finite x whose projection overflows is not a non-finite *input*: no ValueError."""
    planes = np.ones((4, 10), dtype=np.float32)
    x = np.full((2, 4), 3e38, dtype=np.float32)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # overflow inside the projection is not our contract
        sig = er.pack_signatures(x, planes)
    np.testing.assert_array_equal(sig, np.full((2, 1), 2**10 - 1, dtype=np.uint64))


# --------------------------------------------------------------------------- SimHasher


@given(dim=st.integers(1, 10), bits=BITS, seed=st.integers(0, 10**6), lead=lead_shapes(), xdtype=FLOATS)
def test_simhasher_is_planes_plus_pack(dim: int, bits: int, seed: int, lead: tuple[int, ...], xdtype: type) -> None:
    hasher = er.SimHasher(dim, bits, seed=seed)
    planes = er.hyperplanes(dim, bits, seed=seed)
    np.testing.assert_array_equal(hasher.planes, planes)
    assert hasher.planes.shape == (dim, bits) and hasher.planes.dtype == np.float32
    x = np.random.default_rng(seed).standard_normal(lead + (dim,)).astype(xdtype)
    sig = hasher(x)
    assert sig.shape == lead + (ref.words_for(bits),) and sig.dtype == np.uint64
    np.testing.assert_array_equal(sig, er.pack_signatures(x, planes))


def test_simhasher_generator_seed_and_default() -> None:
    a = er.SimHasher(8, 64, seed=np.random.default_rng(9))
    b = er.SimHasher(8, 64, seed=np.random.default_rng(9))
    np.testing.assert_array_equal(a.planes, b.planes)
    np.testing.assert_array_equal(er.SimHasher(8, 64).planes, er.hyperplanes(8, 64, seed=0))


@pytest.mark.parametrize(("dim", "bits", "name"), [(0, 64, "dim"), (4, 0, "bits"), (4, 1025, "bits")])
def test_simhasher_bad_arguments(dim: int, bits: int, name: str) -> None:
    with pytest.raises(ValueError, match=name):
        er.SimHasher(dim, bits)


# --------------------------------------------------------------------------- pack_signatures errors


@pytest.mark.parametrize("shape", [(5, 3), (5, 5), (3,), (2, 3, 6)])
def test_pack_wrong_dim_states_expected_shape(shape: tuple[int, ...]) -> None:
    planes = er.hyperplanes(4, 70)
    with pytest.raises(ValueError, match=r"x.*\(\.\.\., 4\)"):
        er.pack_signatures(np.zeros(shape, dtype=np.float32), planes)


def test_pack_scalar_x() -> None:
    with pytest.raises(ValueError, match=r"x"):
        er.pack_signatures(np.float32(1.0), er.hyperplanes(1, 8))


@pytest.mark.parametrize("dtype", [np.int32, np.int64, np.uint8, np.bool_, np.complex128])
def test_pack_x_not_float(dtype: type) -> None:
    with pytest.raises(TypeError, match=r"\bx\b.*float32 or float64"):
        er.pack_signatures(np.ones((2, 4), dtype=dtype), er.hyperplanes(4, 8))


@pytest.mark.parametrize("dtype", [np.int32, np.float16, np.bool_])
def test_pack_planes_not_float(dtype: type) -> None:
    with pytest.raises(TypeError, match=r"planes.*float32 or float64"):
        er.pack_signatures(np.ones((2, 4)), np.ones((4, 8), dtype=dtype))


@pytest.mark.parametrize("shape", [(8,), (1, 4, 8), (0, 8)])
def test_pack_planes_wrong_ndim(shape: tuple[int, ...]) -> None:
    with pytest.raises(ValueError, match=r"planes.*\(dim, bits\)"):
        er.pack_signatures(np.ones((2, 4)), np.ones(shape, dtype=np.float32))


@pytest.mark.parametrize("bits", [0, 1025])
def test_pack_planes_bits_out_of_range(bits: int) -> None:
    with pytest.raises(ValueError, match="bits"):
        er.pack_signatures(np.ones((2, 4)), np.ones((4, bits), dtype=np.float32))


@pytest.mark.parametrize("bad", NONFINITE)
def test_pack_planes_nonfinite(bad: float) -> None:
    planes = er.hyperplanes(4, 8).copy()
    planes[2, 5] = bad
    with pytest.raises(ValueError, match="planes must be finite"):
        er.pack_signatures(np.ones((2, 4)), planes)


def test_simhasher_pickle_round_trip_keeps_planes_read_only() -> None:
    import pickle

    hasher = er.SimHasher(6, 90, seed=4)
    again = pickle.loads(pickle.dumps(hasher))
    np.testing.assert_array_equal(again.planes, hasher.planes)
    assert not again.planes.flags.writeable
    x = np.random.default_rng(0).standard_normal((5, 6))
    np.testing.assert_array_equal(again(x), hasher(x))
