"""hamming against the reference, metamorphic properties, errors (API.md section 2)."""

from __future__ import annotations

import numpy as np
import pytest
import reference as ref
from hypothesis import given
from hypothesis import strategies as st

import etaretrieval as er

WORDS = st.one_of(st.integers(1, 5), st.integers(6, 16))
LAYOUT = st.sampled_from(ref.LAYOUTS)
STYLE = st.sampled_from(["random", "pool", "sparse"])


@st.composite
def broadcast_pair(draw: st.DrawFn) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """Two leading shapes that broadcast together (axes of size 1, missing leading axes)."""
    full = draw(st.lists(st.integers(0, 4), min_size=0, max_size=3))
    shapes = []
    for _ in range(2):
        drop = draw(st.integers(0, len(full)))
        shape = [n if draw(st.booleans()) else 1 for n in full[drop:]]
        shapes.append(tuple(shape))
    return shapes[0], shapes[1]


def variant(arr: np.ndarray, layout: str, ro: bool) -> np.ndarray:
    out = ref.relayout(arr, layout)
    return ref.readonly(out) if ro else out


@given(
    shapes=broadcast_pair(),
    words=WORDS,
    style=STYLE,
    layouts=st.tuples(LAYOUT, LAYOUT),
    ro=st.tuples(st.booleans(), st.booleans()),
    seed=st.integers(0, 2**32 - 1),
)
def test_hamming_matches_reference(
    shapes: tuple[tuple[int, ...], tuple[int, ...]],
    words: int,
    style: str,
    layouts: tuple[str, str],
    ro: tuple[bool, bool],
    seed: int,
) -> None:
    rng = np.random.default_rng(seed)
    a0 = ref.random_signatures(rng, shapes[0] + (words,), style=style)
    b0 = ref.random_signatures(rng, shapes[1] + (words,), style=style)
    if style == "pool" and a0.size and b0.size:  # share values between a and b: exact zeros
        b0 = np.broadcast_to(a0.reshape(-1, words)[0], b0.shape).copy()
    a = variant(a0, layouts[0], ro[0])
    b = variant(b0, layouts[1], ro[1])
    d = er.hamming(a, b)
    expected = ref.hamming(a0, b0)
    assert isinstance(d, np.ndarray)
    assert d.dtype == np.int32
    assert d.shape == np.broadcast_shapes(shapes[0], shapes[1])
    np.testing.assert_array_equal(d, expected)
    np.testing.assert_array_equal(a, a0)  # inputs untouched
    np.testing.assert_array_equal(b, b0)


@given(bits=st.one_of(st.integers(1, 300), st.integers(301, 1024)), n=st.integers(0, 6), seed=st.integers(0, 2**32 - 1))
def test_hamming_metamorphic(bits: int, n: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    words = ref.words_for(bits)
    a = ref.random_signatures(rng, (n, words), bits=bits)
    b = ref.random_signatures(rng, (n, words), bits=bits)
    c = ref.random_signatures(rng, (n, words), bits=bits)
    np.testing.assert_array_equal(er.hamming(a, a), np.zeros(n, dtype=np.int32))  # distance to self
    dab = er.hamming(a, b)
    np.testing.assert_array_equal(dab, er.hamming(b, a))  # symmetry
    np.testing.assert_array_equal(er.hamming(a, ref.complement(a, bits)), np.full(n, bits))  # complement
    assert ((0 <= dab) & (dab <= bits)).all()
    assert (er.hamming(a, c) <= dab + er.hamming(b, c)).all()  # triangle inequality
    zero = np.zeros(words, dtype=np.uint64)
    np.testing.assert_array_equal(er.hamming(a, zero), [sum(ref.popcount(w) for w in row) for row in a])
    # x ^ y is an isometry: d(a ^ c, b ^ c) == d(a, b)
    np.testing.assert_array_equal(er.hamming(a ^ c, b ^ c), dab)


def test_hamming_docstring_example() -> None:
    a = np.array([[0b1011]], dtype=np.uint64)
    b = np.array([[0b0001], [0b1111]], dtype=np.uint64)
    np.testing.assert_array_equal(er.hamming(a, b), np.array([2, 1], dtype=np.int32))


def test_hamming_full_words() -> None:
    ones = np.full((2, 16), np.uint64(2**64 - 1))
    np.testing.assert_array_equal(er.hamming(ones, np.zeros_like(ones)), [1024, 1024])
    top = np.array([[2**63]], dtype=np.uint64)
    np.testing.assert_array_equal(er.hamming(top, np.zeros_like(top)), [1])


def test_hamming_1d_gives_0d() -> None:
    d = er.hamming(np.array([5, 1], dtype=np.uint64), np.array([3, 0], dtype=np.uint64))
    assert np.shape(d) == ()
    assert np.asarray(d).dtype == np.int32
    assert int(d) == 3


def test_hamming_broadcast_outer() -> None:
    rng = np.random.default_rng(3)
    a = ref.random_signatures(rng, (4, 1, 2))
    b = ref.random_signatures(rng, (5, 2))
    d = er.hamming(a, b)
    assert d.shape == (4, 5)
    np.testing.assert_array_equal(d, ref.hamming(a, b))


def test_hamming_empty() -> None:
    a = np.zeros((0, 3), dtype=np.uint64)
    assert er.hamming(a, np.zeros((1, 3), dtype=np.uint64)).shape == (0,)
    assert er.hamming(np.zeros((2, 0, 1), dtype=np.uint64), np.zeros((1, 1), dtype=np.uint64)).shape == (2, 0)


# --------------------------------------------------------------------------- errors


@pytest.mark.parametrize("dtype", [np.int64, np.uint32, np.int32, np.float64, np.bool_])
@pytest.mark.parametrize("which", ["a", "b"])
def test_hamming_non_uint64(dtype: type, which: str) -> None:
    good = np.zeros((2, 1), dtype=np.uint64)
    bad = np.zeros((2, 1), dtype=dtype)
    args = (bad, good) if which == "a" else (good, bad)
    with pytest.raises(er.DTypeError, match=rf"\b{which}\b.*uint64") as info:
        er.hamming(*args)
    assert isinstance(info.value, TypeError) and isinstance(info.value, ValueError)


def test_hamming_w_mismatch() -> None:
    with pytest.raises(ValueError, match=r"\bW\b"):
        er.hamming(np.zeros((2, 1), dtype=np.uint64), np.zeros((2, 2), dtype=np.uint64))


def test_hamming_not_broadcastable() -> None:
    with pytest.raises(ValueError, match="broadcast"):
        er.hamming(np.zeros((2, 1), dtype=np.uint64), np.zeros((3, 1), dtype=np.uint64))


@pytest.mark.parametrize("words", [0, 17, 32])
def test_hamming_words_out_of_range(words: int) -> None:
    with pytest.raises(ValueError, match=r"\ba\b.*1\.\.16"):
        er.hamming(np.zeros((2, words), dtype=np.uint64), np.zeros((2, words), dtype=np.uint64))


def test_hamming_scalar() -> None:
    with pytest.raises(ValueError, match=r"\ba\b"):
        er.hamming(np.uint64(3), np.zeros(1, dtype=np.uint64))
