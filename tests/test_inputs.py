"""Input kinds a real code base hands the NumPy API, and front-padded sequences.

Byte order, integer-like dtypes that are not integers, tensors and lists, sizes
beyond memory, the names in the messages, ``padding_side="left"`` against the
reference (with the equivalent mask) and float16 embeddings.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import reference as ref
from hypothesis import given, settings
from hypothesis import strategies as st

import etaretrieval as er

B, L, W, N = 3, 6, 2, 5


def data(seed: int = 0) -> dict[str, Any]:
    rng = np.random.default_rng(seed)
    return {
        "query": rng.integers(0, 2**64, size=(B, W), dtype=np.uint64),
        "keys": rng.integers(0, 2**64, size=(B, L, W), dtype=np.uint64),
        "ids": rng.integers(0, N, size=(B, L)),
        "table": rng.integers(0, 2**64, size=(N, W), dtype=np.uint64),
    }


def swapped(a: np.ndarray) -> np.ndarray:
    """The same values in the non-native byte order."""
    out = a.astype(a.dtype.newbyteorder("S"))
    assert not out.dtype.isnative and (out == a).all()
    return out


# --------------------------------------------------------------------------- byte order


@pytest.mark.parametrize("dtype", [np.int64, np.int32, np.uint16, np.uint64])
@pytest.mark.parametrize("shared", [False, True])
def test_non_native_ids(dtype: type, shared: bool) -> None:
    g = data()
    ids = g["ids"].astype(dtype)
    if shared:
        ids = ids[1]
    want = er.topk_hamming_lookup(g["query"], ids, g["table"], 4, padding_id=2, lengths=[6, 3, 0])
    big = swapped(ids)
    before = big.copy()
    got = er.topk_hamming_lookup(g["query"], big, g["table"], 4, padding_id=2, lengths=swapped(np.array([6, 3, 0])))
    for a, b in zip(got, want):
        np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(big, before)
    assert big.dtype == before.dtype


def test_non_native_signatures_and_embeddings() -> None:
    g = data()
    want = er.topk_hamming(g["query"], g["keys"], 3)
    got = er.topk_hamming(swapped(g["query"]), swapped(g["keys"]), 3)
    np.testing.assert_array_equal(got[0], want[0])
    want = er.topk_hamming_lookup(g["query"], g["ids"], g["table"], 3)
    got = er.topk_hamming_lookup(swapped(g["query"]), g["ids"], swapped(g["table"]), 3)
    np.testing.assert_array_equal(got[0], want[0])
    np.testing.assert_array_equal(er.hamming(swapped(g["query"]), g["query"][::-1]),
                                  er.hamming(g["query"], g["query"][::-1]))
    x = np.random.default_rng(1).standard_normal((4, 8))
    planes = er.hyperplanes(8, 70)
    np.testing.assert_array_equal(er.pack_signatures(swapped(x), swapped(planes)), er.pack_signatures(x, planes))


# --------------------------------------------------------------------------- sizes


@pytest.mark.parametrize("fn", ["topk", "lookup"])
@pytest.mark.parametrize("k", [2**45, 2**59, 2**60 - 1, np.int64(2**50), np.uint64(2**55)])
def test_huge_k_names_k(fn: str, k: Any) -> None:
    g = data()
    with pytest.raises(ValueError, match=r"k = \d+ is too large: the \(3, k\) results .* cannot be allocated"):
        if fn == "topk":
            er.topk_hamming(g["query"], g["keys"], k)
        else:
            er.topk_hamming_lookup(g["query"], g["ids"], g["table"], k)


@pytest.mark.parametrize("k", [2**60, 2**62, 2**63, 2**64, np.uint64(2**63), np.int64(2**62), 10**30])
def test_k_beyond_an_array_axis_names_the_limit(k: Any) -> None:
    g = data()
    for batch in (B, 0):
        with pytest.raises(ValueError, match=rf"k must be at most {2**60 - 1} \(the longest int64 array axis\)"):
            er.topk_hamming(g["query"][:batch], g["keys"][:batch], k)


def test_empty_batch_with_the_largest_k() -> None:
    g = data()
    idx, dist = er.topk_hamming(g["query"][:0], g["keys"][:0], 2**60 - 1)
    assert idx.shape == (0, 2**60 - 1) and dist.dtype == np.int32


@pytest.mark.parametrize(("dim", "bits"), [(2**40, 64), (2**31, 1), (2**18 + 1, 1024), (2**22 + 1, 64)])
def test_huge_dim_names_dim_and_the_limit(dim: int, bits: int) -> None:
    limit = 2**28 // bits
    with pytest.raises(ValueError, match=rf"dim must be at most {limit} for bits = {bits} .*got dim = {dim}"):
        er.hyperplanes(dim, bits)
    with pytest.raises(ValueError, match="dim must be at most"):
        er.SimHasher(dim, bits)


# --------------------------------------------------------------------------- messages naming the right argument


@pytest.mark.parametrize("shape", [(4, 0), (4, 1025), (0, 8)])
def test_planes_of_bad_shape_are_named(shape: tuple[int, int]) -> None:
    message = rf"planes must have shape \(dim, bits\) .*1\.\.1024, got shape \({shape[0]}, {shape[1]}\)"
    with pytest.raises(ValueError, match=message):
        er.pack_signatures(np.zeros((2, 4)), np.zeros(shape))


def test_table_nonfinite_names_weight_row_and_option() -> None:
    rng = np.random.default_rng(2)
    weight = rng.standard_normal((6, 8)).astype(np.float32)
    weight[4, 1] = np.nan
    hasher = er.SimHasher(8, 64)
    message = r"weight holds a non-finite value \(NaN or inf\) in row 4; pass check_finite=False to SignatureTable"
    with pytest.raises(ValueError, match=message):
        er.SignatureTable(weight, hasher)
    table = er.SignatureTable(weight, hasher, check_finite=False)
    np.testing.assert_array_equal(table.signatures[[0, 1, 2, 3, 5]], hasher(weight[[0, 1, 2, 3, 5]]))
    weight[2, 0] = np.inf
    table.refresh(rows=[2, 4])
    table.refresh()
    strict = er.SignatureTable(np.nan_to_num(weight), hasher)
    strict.weight[2, 3] = -np.inf
    with pytest.raises(ValueError, match=r"weight holds .* in row 2; pass check_finite=False"):
        strict.refresh()
    with pytest.raises(ValueError, match=r"weight holds .* in row 2; pass check_finite=False"):
        strict.refresh(rows=[5, 2])


# --------------------------------------------------------------------------- dtypes and argument kinds


@pytest.mark.parametrize("dtype", ["m8[s]", "m8[ns]", "M8[s]", bool])
@pytest.mark.parametrize("padding_id", [None, 0])
def test_time_and_bool_ids_are_not_integers(dtype: Any, padding_id: Any) -> None:
    g = data()
    with pytest.raises(er.DTypeError, match=r"ids must have an integer dtype, got dtype"):
        er.topk_hamming_lookup(g["query"], g["ids"].astype(dtype), g["table"], 2, padding_id=padding_id)


@pytest.mark.parametrize("dtype", ["m8[s]", "M8[s]"])
def test_time_lengths_are_not_integers(dtype: str) -> None:
    g = data()
    with pytest.raises(er.DTypeError, match=r"lengths must have an integer dtype"):
        er.topk_hamming(g["query"], g["keys"], 2, lengths=np.array([1, 2, 3]).astype(dtype))


@pytest.mark.parametrize("requires_grad", [False, True])
def test_cpu_tensors_point_to_the_torch_ops(requires_grad: bool) -> None:
    th = pytest.importorskip("torch")
    g = data()
    as_tensor = th.from_numpy
    cases = {
        "query": lambda t: er.topk_hamming(t, g["keys"], 2),
        "ids": lambda t: er.topk_hamming_lookup(g["query"], t, g["table"], 2),
        "lengths": lambda t: er.topk_hamming(g["query"], g["keys"], 2, lengths=t),
        "mask": lambda t: er.topk_hamming(g["query"], g["keys"], 2, mask=t),
        "x": lambda t: er.pack_signatures(t, er.hyperplanes(4, 8)),
        "a": lambda t: er.hamming(t, g["query"]),
    }
    values = {
        "query": as_tensor(g["query"].view(np.int64)), "ids": as_tensor(g["ids"]),
        "lengths": th.tensor([1, 2, 3]), "mask": th.ones(B, L, dtype=th.bool), "x": th.ones(3, 4),
        "a": as_tensor(g["query"].view(np.int64)),
    }
    for name, call in cases.items():
        t = values[name]
        if requires_grad:
            if not t.dtype.is_floating_point:
                continue
            t = t.requires_grad_()
        with pytest.raises(TypeError, match=rf"^{name} is a torch\.Tensor on cpu: .*torch\.ops\.etaretrieval.*"
                                            rf"{name}\.detach\(\)\.numpy\(\)"):
            call(t)


def test_table_points_cpu_tensors_to_the_signature_cache() -> None:
    th = pytest.importorskip("torch")
    message = r"weight must be a numpy\.ndarray .*got Tensor; .*etaretrieval\.torch\.SignatureCache"
    with pytest.raises(TypeError, match=message):
        er.SignatureTable(th.ones(4, 8), er.SimHasher(8, 64))
    table = er.SignatureTable(np.ones((4, 8)), er.SimHasher(8, 64))
    with pytest.raises(er.DTypeError, match="rows must have an integer dtype"):
        table.refresh(rows=np.array([1, 2], dtype="m8[s]"))


def test_python_lists() -> None:
    """Lists of ints work where an integer dtype is expected; signatures say how to build uint64."""
    g = data()
    want = er.topk_hamming_lookup(g["query"], g["ids"], g["table"], 3, lengths=np.array([6, 2, 0]))
    got = er.topk_hamming_lookup(g["query"], g["ids"].tolist(), g["table"], 3, lengths=[6, 2, 0])
    np.testing.assert_array_equal(got[0], want[0])
    for name in ("query", "table"):
        args = dict(g)
        args[name] = [[1, 2], [3, 4]] if name == "table" else [[1, 2]] * B
        message = rf"{name} must hold .*uint64.*numpy\.asarray\({name}, dtype=numpy\.uint64\)"
        with pytest.raises(er.DTypeError, match=message):
            er.topk_hamming_lookup(args["query"], args["ids"], args["table"], 2)


def test_float16_embeddings_hash_in_float32() -> None:
    rng = np.random.default_rng(5)
    x = rng.integers(-4, 5, size=(7, 3, 8)).astype(np.float16)
    planes = er.hyperplanes(8, 100)
    before = x.copy()
    np.testing.assert_array_equal(er.pack_signatures(x, planes), er.pack_signatures(x.astype(np.float32), planes))
    np.testing.assert_array_equal(x, before)
    np.testing.assert_array_equal(er.pack_signatures(x, planes), ref.pack(x.astype(np.float64), planes))
    x[2, 1, 0] = np.inf
    with pytest.raises(ValueError, match=r"x holds a non-finite value \(NaN or inf\) in row \(2, 1\)"):
        er.pack_signatures(x, planes)
    with pytest.raises(er.DTypeError, match="planes"):
        er.pack_signatures(x, planes.astype(np.float16))


# --------------------------------------------------------------------------- padding_side


def left_mask(lengths: Any, length: int) -> np.ndarray:
    """Reference: row ``b`` is valid on its last ``lengths[b]`` positions (a plain loop)."""
    out = np.zeros((len(lengths), length), dtype=bool)
    for b, n in enumerate(lengths):
        for pos in range(length - int(n), length):
            out[b, pos] = True
    return out


@settings(deadline=None, max_examples=30)
@given(
    seed=st.integers(0, 2**32 - 1),
    batch=st.integers(0, 4),
    length=st.integers(0, 12),
    k=st.integers(0, 14),
    shared=st.booleans(),
    pad=st.sampled_from([None, 0, 3]),
)
def test_left_padding_equals_the_reference(seed: int, batch: int, length: int, k: int, shared: bool,
                                           pad: int | None) -> None:
    rng = np.random.default_rng(seed)
    query = ref.random_signatures(rng, (batch, 1), style="pool")
    keys = ref.random_signatures(rng, (length, 1) if shared else (batch, length, 1), style="pool")
    ids = rng.integers(0, N, size=(length,) if shared else (batch, length)).astype(np.int32)
    table = ref.random_signatures(rng, (N, 1), style="pool")
    lengths = rng.integers(0, length + 1, size=batch).astype(np.int16)
    mask = left_mask(lengths, length)
    got = er.topk_hamming(query, keys, k, lengths=lengths, padding_side="left")
    want = ref.topk_hamming(query, keys, k, mask=mask)
    ref.check_topk(*got, want, mask, k)
    got = er.topk_hamming_lookup(query, ids, table, k, lengths=lengths, padding_id=pad, padding_side="left")
    want = ref.topk_hamming_lookup(query, ids, table, k, mask=mask, padding_id=pad)
    valid = ref.valid_positions(batch, length, mask=mask, ids=np.broadcast_to(ids, (batch, length)), padding_id=pad)
    ref.check_topk(*got, want, valid, k)


def test_left_padding_fixed_case_and_right_unchanged() -> None:
    """Newest last: a front-padded row of 2 behaviours is read at positions 3 and 4, newer first among ties."""
    query = np.zeros((2, 1), dtype=np.uint64)
    keys = np.array([[0], [0], [0], [1], [1]], dtype=np.uint64)
    idx, dist = er.topk_hamming(query, keys, 3, lengths=[2, 4], padding_side="left")
    np.testing.assert_array_equal(idx, [[4, 3, -1], [2, 1, 4]])
    np.testing.assert_array_equal(dist, [[1, 1, -1], [0, 0, 1]])
    right = er.topk_hamming(query, keys, 3, lengths=[2, 4])
    np.testing.assert_array_equal(right[0], [[1, 0, -1], [2, 1, 0]])
    np.testing.assert_array_equal(er.topk_hamming(query, keys, 3, lengths=[2, 4], padding_side="right")[0], right[0])
    same = er.topk_hamming(query, keys, 3, lengths=[3, 3], padding_side="left")  # one suffix for both rows
    np.testing.assert_array_equal(same[0], [[2, 4, 3]] * 2)
    ids = np.array([0, 0, 0, 1, 1])
    table = np.array([[0], [1]], dtype=np.uint64)
    shared = er.topk_hamming_lookup(query, ids, table, 3, lengths=[3, 3], padding_side="left")
    np.testing.assert_array_equal(shared[0], [[2, 4, 3]] * 2)


def test_left_padding_ids_beyond_the_valid_suffix_are_not_read() -> None:
    g = data()
    ids = g["ids"].copy()
    ids[0, :4] = 10**9  # front padding, never read
    ids[1, 0] = -1
    er.topk_hamming_lookup(g["query"], ids, g["table"], 2, lengths=[2, 5, 0], padding_side="left")
    with pytest.raises(IndexError, match=r"ids\[0, 3\]"):
        er.topk_hamming_lookup(g["query"], ids, g["table"], 2, lengths=[3, 5, 0], padding_side="left")


@pytest.mark.parametrize("side", ["LEFT", "both", None, 0, "r"])
def test_padding_side_must_be_left_or_right(side: Any) -> None:
    g = data()
    with pytest.raises(ValueError, match=r"padding_side must be 'right' or 'left'"):
        er.topk_hamming(g["query"], g["keys"], 2, padding_side=side)
    with pytest.raises(ValueError, match=r"padding_side must be 'right' or 'left'"):
        er.topk_hamming_lookup(g["query"], g["ids"], g["table"], 2, lengths=[1, 1, 1], padding_side=side)


def test_left_padding_lengths_errors_as_right() -> None:
    g = data()
    for side in ("left", "right"):
        with pytest.raises(ValueError, match=rf"lengths must lie in 0\.\.{L}, got lengths\[1\] = 7"):
            er.topk_hamming(g["query"], g["keys"], 2, lengths=[0, 7, 1], padding_side=side)
    with pytest.raises(ValueError, match="either lengths or mask"):
        er.topk_hamming(g["query"], g["keys"], 2, lengths=[0, 1, 1], mask=np.ones(L, bool), padding_side="left")


@pytest.mark.cudasim
@pytest.mark.parametrize("shared", [False, True])
def test_left_padding_on_the_device_equals_the_cpu(shared: bool) -> None:
    from numba import cuda

    rng = np.random.default_rng(8)
    g = data(3)
    keys = g["keys"][0] if shared else g["keys"]
    ids = g["ids"][0] if shared else g["ids"]
    for lengths in (np.array([6, 2, 0]), np.array([1, 3, 5], dtype=np.uint8), rng.integers(0, 7, size=B)):
        want = er.topk_hamming(g["query"], keys, 4, lengths=lengths, padding_side="left")
        got = er.topk_hamming(cuda.to_device(g["query"]), cuda.to_device(keys), 4,
                              lengths=cuda.to_device(lengths), padding_side="left")
        np.testing.assert_array_equal(got[0].copy_to_host(), want[0])
        np.testing.assert_array_equal(got[1].copy_to_host(), want[1])
        want = er.topk_hamming_lookup(g["query"], ids, g["table"], 4, lengths=lengths, padding_side="left",
                                      padding_id=1)
        got = er.topk_hamming_lookup(cuda.to_device(g["query"]), cuda.to_device(ids), cuda.to_device(g["table"]),
                                     4, lengths=cuda.to_device(lengths), padding_side="left", padding_id=1)
        np.testing.assert_array_equal(got[0].copy_to_host(), want[0])
    for bad in ([0, 7, 1], [-1, 0, 0]):
        with pytest.raises(ValueError) as cpu:
            er.topk_hamming(g["query"], keys, 2, lengths=np.array(bad), padding_side="left")
        with pytest.raises(ValueError) as gpu:
            er.topk_hamming(cuda.to_device(g["query"]), cuda.to_device(keys), 2,
                            lengths=cuda.to_device(np.array(bad)), padding_side="left")
        assert str(gpu.value) == str(cpu.value)
