"""SignatureTable: build, full and row-subset refresh, errors (API.md section 4)."""

from __future__ import annotations

import numpy as np
import pytest
import reference as ref
from hypothesis import given
from hypothesis import strategies as st

import etaretrieval as er

FLOATS = st.sampled_from([np.float32, np.float64])


def assert_matches_reference(sig: np.ndarray, weight: np.ndarray, planes: np.ndarray) -> None:
    """Exactly the library's own packing, and the exact reference wherever a projection is clearly nonzero."""
    np.testing.assert_array_equal(sig, er.pack_signatures(weight, planes))
    bits = planes.shape[1]
    proj = ref.projection(weight, planes)
    sure = np.abs(proj) > 1e-4 * ref.projection(np.abs(weight), np.abs(planes)) + 1e-30
    j = np.arange(bits)
    got = ((sig[:, j // 64] >> (j % 64).astype(np.uint64)) & np.uint64(1)).astype(bool)
    np.testing.assert_array_equal(got[sure], (proj > 0)[sure])
    assert (ref.clear_unused_bits(sig, bits) == sig).all()


@given(
    n=st.integers(0, 20),
    dim=st.integers(1, 8),
    bits=st.one_of(st.integers(1, 150), st.sampled_from([256, 300])),
    dtype=FLOATS,
    seed=st.integers(0, 2**32 - 1),
    updates=st.lists(st.one_of(st.none(), st.lists(st.integers(0, 19), max_size=6)), max_size=4),
)
def test_table_build_and_refresh(
    n: int, dim: int, bits: int, dtype: type, seed: int, updates: list[list[int] | None]
) -> None:
    rng = np.random.default_rng(seed)
    weight = rng.standard_normal((n, dim)).astype(dtype)
    hasher = er.SimHasher(dim, bits, seed=seed % 7)
    table = er.SignatureTable(weight, hasher)
    assert table.signatures.shape == (n, ref.words_for(bits))
    assert table.signatures.dtype == np.uint64
    assert_matches_reference(table.signatures, weight, hasher.planes)
    model = ref.RefSignatureTable(weight, hasher.planes)
    model.signatures = table.signatures.copy()  # the exact reference may differ at near-zero projections
    for rows in updates:
        if rows is not None:
            rows = np.array([r for r in rows if r < n], dtype=np.int64)
        changed = rng.integers(0, n, size=3) if n else np.zeros(0, dtype=np.int64)
        weight[changed] = rng.standard_normal((changed.size, dim)).astype(dtype)  # in place: held by reference
        table.refresh(rows)
        if rows is None:
            np.testing.assert_array_equal(table.signatures, er.pack_signatures(weight, hasher.planes))
            model.signatures = table.signatures.copy()
        else:
            for r in rows:  # the given rows are rehashed from the current weights ...
                model.signatures[r] = er.pack_signatures(weight[r], hasher.planes)
            np.testing.assert_array_equal(table.signatures, model.signatures)  # ... and only those


def test_table_refresh_only_given_rows() -> None:
    rng = np.random.default_rng(0)
    weight = rng.standard_normal((10, 4)).astype(np.float32)
    hasher = er.SimHasher(4, 70, seed=1)
    table = er.SignatureTable(weight, hasher)
    old = table.signatures.copy()
    weight[[2, 5, 7]] *= -1.0  # flips every bit whose projection is not zero
    table.refresh(rows=[5])
    np.testing.assert_array_equal(table.signatures[5], ref.complement(old[5], 70))
    untouched = [i for i in range(10) if i != 5]
    np.testing.assert_array_equal(table.signatures[untouched], old[untouched])  # 2 and 7: stale until refreshed
    table.refresh(np.array([7, 2, 7], dtype=np.uint8))  # duplicates and any integer dtype
    np.testing.assert_array_equal(table.signatures[[2, 7]], ref.complement(old[[2, 7]], 70))
    table.refresh(np.zeros(0, dtype=np.int64))
    np.testing.assert_array_equal(table.signatures, hasher(weight))
    weight[[2, 5, 7]] *= -1.0  # back to the original weights
    table.refresh()
    np.testing.assert_array_equal(table.signatures, old)


def test_table_integer_valued_exact() -> None:
    """With integer-valued weights and planes every bit is exact: compare with the plain reference."""
    rng = np.random.default_rng(4)
    hasher = er.SimHasher(5, 130, seed=0)
    hasher_planes = np.round(hasher.planes * 2)  # integer-valued float32 planes, zeros included
    weight = rng.integers(-2, 3, size=(12, 5)).astype(np.float64)

    class IntHasher(er.SimHasher):
        def __init__(self) -> None:
            super().__init__(5, 130, seed=0)
            self.planes = hasher_planes

    table = er.SignatureTable(weight, IntHasher())
    model = ref.RefSignatureTable(weight, hasher_planes)
    np.testing.assert_array_equal(table.signatures, model.signatures)
    weight[[1, 4]] = rng.integers(-2, 3, size=(2, 5))
    table.refresh([4, 1])
    model.refresh([4, 1])
    np.testing.assert_array_equal(table.signatures, model.signatures)


def test_table_non_contiguous_weight_held_by_reference() -> None:
    rng = np.random.default_rng(2)
    base = rng.standard_normal((12, 16))
    weight = base[::2, 3:11]  # (6, 8), strided view
    hasher = er.SimHasher(8, 100, seed=3)
    table = er.SignatureTable(weight, hasher)
    np.testing.assert_array_equal(table.signatures, hasher(np.ascontiguousarray(weight)))
    base[4, 3:11] = rng.standard_normal(8)  # row 2 of the view, changed through the base
    table.refresh([2])
    np.testing.assert_array_equal(table.signatures, hasher(np.ascontiguousarray(weight)))


def test_table_readonly_weight() -> None:
    weight = ref.readonly(np.random.default_rng(1).standard_normal((5, 4)).astype(np.float32))
    hasher = er.SimHasher(4, 64)
    table = er.SignatureTable(weight, hasher)
    table.refresh()
    table.refresh([1, 3])
    np.testing.assert_array_equal(table.signatures, hasher(weight))


def test_table_feeds_lookup() -> None:
    rng = np.random.default_rng(9)
    weight = rng.standard_normal((50, 8)).astype(np.float32)
    hasher = er.SimHasher(8, 96, seed=5)
    table = er.SignatureTable(weight, hasher)
    ids = rng.integers(0, 50, size=(4, 30))
    query = hasher(weight[[3, 10, 11, 49]])
    idx, dist = er.topk_hamming_lookup(query, ids, table.signatures, 8, lengths=[30, 0, 12, 29])
    ridx, rdist = ref.topk_hamming_lookup(query, ids, table.signatures, 8, lengths=[30, 0, 12, 29])
    np.testing.assert_array_equal(idx, ridx)
    np.testing.assert_array_equal(dist, rdist)


def test_table_empty() -> None:
    hasher = er.SimHasher(4, 70)
    table = er.SignatureTable(np.zeros((0, 4), dtype=np.float32), hasher)
    assert table.signatures.shape == (0, 2) and table.signatures.dtype == np.uint64
    table.refresh()
    table.refresh(np.zeros(0, dtype=np.intp))
    with pytest.raises(IndexError, match="rows"):
        table.refresh([0])


@pytest.mark.parametrize("rows", [[], ()], ids=["list", "tuple"])
def test_table_refresh_empty_sequence(rows: object) -> None:
    """No changed rows (an empty Python list, as collected by a training loop) refreshes nothing."""
    weight = np.ones((5, 4))
    table = er.SignatureTable(weight, er.SimHasher(4, 64))
    old = table.signatures.copy()
    weight[2] = -1.0
    table.refresh(rows)
    np.testing.assert_array_equal(table.signatures, old)


# --------------------------------------------------------------------------- errors


@pytest.mark.parametrize("bad", [[10], [3, -1], [-11], np.array([2**40])])
def test_table_refresh_rows_out_of_range(bad: object) -> None:
    table = er.SignatureTable(np.ones((10, 4)), er.SimHasher(4, 64))
    with pytest.raises(IndexError, match="rows"):
        table.refresh(bad)


@pytest.mark.parametrize("bad", [[1.0, 2.0], np.array([True, False]), ["1"]])
def test_table_refresh_rows_not_integer(bad: object) -> None:
    table = er.SignatureTable(np.ones((10, 4)), er.SimHasher(4, 64))
    with pytest.raises(TypeError, match="rows"):
        table.refresh(bad)


def test_table_refresh_nonfinite_raises() -> None:
    weight = np.ones((5, 4))
    table = er.SignatureTable(weight, er.SimHasher(4, 64))
    weight[3, 1] = np.nan
    with pytest.raises(ValueError, match="non-finite|NaN"):
        table.refresh()


def test_table_refresh_rows_nonfinite_names_the_weight_row() -> None:
    weight = np.ones((6, 4))
    table = er.SignatureTable(weight, er.SimHasher(4, 64))
    old = table.signatures.copy()
    weight[4, 2] = np.inf
    with pytest.raises(ValueError, match=r"weight holds a non-finite value \(NaN or inf\) in row 4"):
        table.refresh([1, 4])
    np.testing.assert_array_equal(table.signatures, old)  # nothing half-written


@pytest.mark.parametrize("shape", [(5, 3), (5,), (2, 5, 4)])
def test_table_weight_wrong_shape(shape: tuple[int, ...]) -> None:
    with pytest.raises(ValueError, match=r"weight.*\(N, 4\)"):
        er.SignatureTable(np.ones(shape), er.SimHasher(4, 64))


def test_table_weight_wrong_dtype() -> None:
    with pytest.raises(TypeError, match=r"weight must have dtype float32 or float64"):
        er.SignatureTable(np.ones((5, 4), dtype=np.int64), er.SimHasher(4, 64))


def test_table_hasher_wrong_type() -> None:
    with pytest.raises(TypeError, match="hasher"):
        er.SignatureTable(np.ones((5, 4)), er.hyperplanes(4, 64))  # type: ignore[arg-type]


@pytest.mark.parametrize("bad", [np.array([[0, 1]]), [[0], [1]], np.zeros((2, 0), dtype=np.int64), np.int64(3), 3,
                                 np.arange(4).reshape(2, 2)[:, ::-1]])
def test_table_refresh_rows_not_one_dimensional(bad: object) -> None:
    """Issue 21.4: rows is checked like every id argument; 2-D (or 0-D) rows are refused, naming rows."""
    weight = np.ones((10, 4))
    table = er.SignatureTable(weight, er.SimHasher(4, 64))
    old = table.signatures.copy()
    weight[:] = -1.0
    with pytest.raises(ValueError, match=r"rows must have shape \(R,\) \(row ids of weight\), got shape"):
        table.refresh(bad)
    np.testing.assert_array_equal(table.signatures, old)  # nothing rehashed


@pytest.mark.parametrize("bad", [np.array([1.5]), np.array([0, 1], dtype=np.float32), [True, False, True],
                                 np.array([None, 1], dtype=object), np.array([1], dtype="m8[s]"), [1 + 2j]])
def test_table_refresh_rows_dtype_named(bad: object) -> None:
    table = er.SignatureTable(np.ones((10, 4)), er.SimHasher(4, 64))
    with pytest.raises(er.DTypeError, match="rows must have an integer dtype, got dtype"):
        table.refresh(bad)


def test_table_refresh_rows_any_layout_and_dtype() -> None:
    """Strided, read-only, big-endian and uint ids are fine; the out-of-range one is named by its position."""
    rng = np.random.default_rng(4)
    weight = rng.standard_normal((9, 4))
    hasher = er.SimHasher(4, 64)
    table = er.SignatureTable(weight, hasher)
    weight[:] = rng.standard_normal((9, 4))
    for rows in (np.arange(9)[::4], ref.readonly(np.array([1, 5])), np.array([2, 6], dtype=">i4"),
                 np.array([3, 7], dtype=np.uint64)):
        table.refresh(rows)
    np.testing.assert_array_equal(table.signatures[[0, 1, 2, 3, 4, 5, 6, 7, 8]], hasher(weight))
    with pytest.raises(IndexError, match=r"rows must lie in \[0, 9\) \(the rows of weight\), got rows\[2\] = 9"):
        table.refresh(np.array([0, 1, 9, 10], dtype=np.uint8))
