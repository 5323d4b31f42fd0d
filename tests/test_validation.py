"""Every validation rule of topk_hamming / topk_hamming_lookup: exception type and a message naming the argument.

(The rules of hyperplanes / pack_signatures / hamming / SignatureTable are tested next
to their functions: test_simhash.py, test_hamming.py, test_table.py.)
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

import etaretrieval as er

B, L, W, N = 3, 6, 2, 5


def good() -> dict[str, Any]:
    rng = np.random.default_rng(0)
    return {
        "query": rng.integers(0, 2**64, size=(B, W), dtype=np.uint64),
        "keys": rng.integers(0, 2**64, size=(B, L, W), dtype=np.uint64),
        "ids": rng.integers(0, N, size=(B, L)),
        "table": rng.integers(0, 2**64, size=(N, W), dtype=np.uint64),
        "k": 2,
    }


def call(fn: str, **overrides: Any) -> Any:
    a = good()
    kwargs = {name: overrides.pop(name) for name in ("lengths", "mask", "padding_id") if name in overrides}
    a.update(overrides)
    if fn == "topk":
        return er.topk_hamming(a["query"], a["keys"], a["k"], **kwargs)
    return er.topk_hamming_lookup(a["query"], a["ids"], a["table"], a["k"], **kwargs)


BOTH = pytest.mark.parametrize("fn", ["topk", "lookup"])


def test_dtype_error_is_type_and_value_error() -> None:
    assert issubclass(er.DTypeError, TypeError)
    assert issubclass(er.DTypeError, ValueError)


def test_valid_defaults_run() -> None:
    for fn in ("topk", "lookup"):
        idx, dist = call(fn)
        assert idx.shape == (B, 2) and dist.shape == (B, 2)


# --------------------------------------------------------------------------- signatures


NON_UINT64 = [np.int64, np.uint32, np.int32, np.float64, np.bool_, object]


@BOTH
@pytest.mark.parametrize("dtype", NON_UINT64, ids=lambda d: np.dtype(d).name)
def test_query_not_uint64(fn: str, dtype: type) -> None:
    query = np.zeros((B, W), dtype=dtype)
    with pytest.raises(er.DTypeError, match=r"query.*uint64"):
        call(fn, query=query)
    with pytest.raises(ValueError, match="query"):  # what API.md promises
        call(fn, query=query)


@pytest.mark.parametrize("dtype", NON_UINT64, ids=lambda d: np.dtype(d).name)
def test_keys_not_uint64(dtype: type) -> None:
    with pytest.raises(er.DTypeError, match=r"keys.*uint64"):
        call("topk", keys=np.zeros((B, L, W), dtype=dtype))
    with pytest.raises(er.DTypeError, match=r"keys.*uint64"):
        call("topk", keys=np.zeros((L, W), dtype=dtype))


@pytest.mark.parametrize("dtype", NON_UINT64, ids=lambda d: np.dtype(d).name)
def test_table_not_uint64(dtype: type) -> None:
    with pytest.raises(er.DTypeError, match=r"table.*uint64"):
        call("lookup", table=np.zeros((N, W), dtype=dtype))


def test_int64_signatures_are_rejected_even_with_same_bits() -> None:
    """Signed signatures (e.g. a torch int64 tensor's numpy view) must be viewed as uint64 first."""
    g = good()
    with pytest.raises(er.DTypeError, match="query"):
        er.topk_hamming(g["query"].view(np.int64), g["keys"], 2)
    with pytest.raises(er.DTypeError, match="keys"):
        er.topk_hamming(g["query"], g["keys"].view(np.int64), 2)
    with pytest.raises(er.DTypeError, match="table"):
        er.topk_hamming_lookup(g["query"], g["ids"], g["table"].view(np.int64), 2)


@BOTH
@pytest.mark.parametrize("shape", [(W,), (B, 1, W), ()])
def test_query_wrong_ndim(fn: str, shape: tuple[int, ...]) -> None:
    with pytest.raises(ValueError, match=r"query.*\(B, W\)"):
        call(fn, query=np.zeros(shape, dtype=np.uint64))


@pytest.mark.parametrize("shape", [(W,), (1, B, L, W), ()])
def test_keys_wrong_ndim(shape: tuple[int, ...]) -> None:
    with pytest.raises(ValueError, match=r"keys.*\(B, L, W\)"):
        call("topk", keys=np.zeros(shape, dtype=np.uint64))


@pytest.mark.parametrize("shape", [(N,), (1, N, W)])
def test_table_wrong_ndim(shape: tuple[int, ...]) -> None:
    with pytest.raises(ValueError, match=r"table.*\(N, W\)"):
        call("lookup", table=np.zeros(shape, dtype=np.uint64))


@pytest.mark.parametrize("shape", [(B, L, W + 1), (L, W + 1), (B, L, 1), (L, 1)])
def test_keys_w_mismatch(shape: tuple[int, ...]) -> None:
    with pytest.raises(ValueError, match=r"keys.*W"):
        call("topk", keys=np.zeros(shape, dtype=np.uint64))


@pytest.mark.parametrize("words", [1, W + 1])
def test_table_w_mismatch(words: int) -> None:
    with pytest.raises(ValueError, match=r"table.*W"):
        call("lookup", table=np.zeros((N, words), dtype=np.uint64))


@pytest.mark.parametrize("batch", [B - 1, B + 1, 1])
def test_keys_batch_mismatch(batch: int) -> None:
    with pytest.raises(ValueError, match=r"keys.*\(3, L, 2\)"):
        call("topk", keys=np.zeros((batch, L, W), dtype=np.uint64))


@BOTH
@pytest.mark.parametrize("words", [17, 32, 0])
def test_too_many_or_no_words(fn: str, words: int) -> None:
    """W must be 1..16 (bits 1..1024), for query and for keys/table alike."""
    query = np.zeros((B, words), dtype=np.uint64)
    other = {"keys": np.zeros((B, L, words), dtype=np.uint64), "table": np.zeros((N, words), dtype=np.uint64)}
    with pytest.raises(ValueError, match=r"query.*1\.\.16"):
        call(fn, query=query, **other)
    name = "keys" if fn == "topk" else "table"
    with pytest.raises(ValueError, match=rf"{name}.*1\.\.16"):
        call(fn, **{name: other[name]})


# --------------------------------------------------------------------------- k


@BOTH
@pytest.mark.parametrize("k", [-1, -100, np.int64(-2)])
def test_k_negative(fn: str, k: Any) -> None:
    with pytest.raises(ValueError, match=r"\bk\b.*>= 0"):
        call(fn, k=k)


@BOTH
@pytest.mark.parametrize("k", [2.0, 2.5, "2", None, np.float64(2.0), [2]])
def test_k_not_an_integer(fn: str, k: Any) -> None:
    with pytest.raises(TypeError, match=r"\bk\b"):
        call(fn, k=k)


@BOTH
@pytest.mark.parametrize("k", [True, False, np.bool_(True)])
def test_k_bool(fn: str, k: Any) -> None:
    with pytest.raises(TypeError, match=r"\bk\b.*bool"):
        call(fn, k=k)


@BOTH
def test_k_zero_and_beyond_length(fn: str) -> None:
    idx, dist = call(fn, k=0)
    assert idx.shape == (B, 0) and dist.shape == (B, 0)
    assert idx.dtype == np.int64 and dist.dtype == np.int32
    idx, dist = call(fn, k=L + 5)
    assert (idx[:, L:] == -1).all() and (dist[:, L:] == -1).all()
    assert (idx[:, :L] >= 0).all()


# --------------------------------------------------------------------------- lengths / mask


@BOTH
@pytest.mark.parametrize(("lengths", "bad"), [([0, L + 1, 1], 1), ([-1, 0, 0], 0), ([L, L, 2**40], 2)])
def test_lengths_out_of_range(fn: str, lengths: list[int], bad: int) -> None:
    with pytest.raises(ValueError, match=rf"lengths.*0\.\.{L}.*lengths\[{bad}\]"):
        call(fn, lengths=np.array(lengths))


@BOTH
@pytest.mark.parametrize("lengths", [np.zeros(B + 1, int), np.zeros((B, 1), int), np.array(2), np.zeros(0, int)])
def test_lengths_wrong_shape(fn: str, lengths: np.ndarray) -> None:
    with pytest.raises(ValueError, match=r"lengths.*\(3,\)"):
        call(fn, lengths=lengths)


@BOTH
@pytest.mark.parametrize("lengths", [np.full(B, 2.0), np.ones(B, dtype=bool), np.array(["1"] * B)])
def test_lengths_not_integer(fn: str, lengths: np.ndarray) -> None:
    with pytest.raises(TypeError, match=r"lengths.*integer"):
        call(fn, lengths=lengths)


@BOTH
def test_lengths_and_mask_together(fn: str) -> None:
    with pytest.raises(ValueError, match=r"lengths.*mask|mask.*lengths"):
        call(fn, lengths=np.full(B, L), mask=np.ones((B, L), dtype=bool))
    with pytest.raises(ValueError, match=r"lengths.*mask|mask.*lengths"):
        call(fn, lengths=[0, 0, 0], mask=np.ones(L, dtype=bool))


@BOTH
@pytest.mark.parametrize("dtype", [np.int64, np.uint8, np.float32])
def test_mask_not_bool(fn: str, dtype: type) -> None:
    with pytest.raises(TypeError, match=r"mask.*bool"):
        call(fn, mask=np.ones((B, L), dtype=dtype))


@BOTH
@pytest.mark.parametrize("shape", [(B, L + 1), (L + 1,), (B,), (1, L), (B, L, 1), ()])
def test_mask_wrong_shape(fn: str, shape: tuple[int, ...]) -> None:
    with pytest.raises(ValueError, match=r"mask.*\(3, 6\).*\(6,\)"):
        call(fn, mask=np.ones(shape, dtype=bool))


@BOTH
def test_mask_as_python_lists(fn: str) -> None:
    idx, _ = call(fn, mask=[[True] * L, [False] * L, [False, True] + [False] * (L - 2)], k=L)
    assert (idx[1] == -1).all()
    np.testing.assert_array_equal(idx[2], [1] + [-1] * (L - 1))


# --------------------------------------------------------------------------- ids / padding_id


@pytest.mark.parametrize("ids", [np.zeros((B, L)), np.zeros((B, L), dtype=bool), np.zeros((B, L), dtype=object),
                                 np.zeros((B, L), dtype=np.complex64)])
def test_ids_not_integer(ids: np.ndarray) -> None:
    with pytest.raises(TypeError, match=r"ids.*integer"):
        call("lookup", ids=ids)


@pytest.mark.parametrize("shape", [(B + 1, L), (1, L), (B, L, 1), ()])
def test_ids_wrong_shape(shape: tuple[int, ...]) -> None:
    with pytest.raises(ValueError, match=r"ids.*\(B, L\).*\(L,\)"):
        call("lookup", ids=np.zeros(shape, dtype=np.int64))


@pytest.mark.parametrize(
    ("dtype", "pad"),
    [
        (np.uint8, -1),
        (np.uint8, 256),
        (np.int8, 128),
        (np.int8, -129),
        (np.int16, 2**15),
        (np.uint16, 2**16),
        (np.int32, 2**31),
        (np.uint32, -1),
        (np.int64, 2**63),
        (np.int64, -(2**63) - 1),
        (np.uint64, -1),
        (np.uint64, 2**64),
    ],
)
def test_padding_id_not_representable(dtype: type, pad: int) -> None:
    with pytest.raises(ValueError, match=r"padding_id.*" + np.dtype(dtype).name):
        call("lookup", ids=np.zeros((B, L), dtype=dtype), padding_id=pad)
    with pytest.raises(ValueError, match="padding_id"):
        call("lookup", ids=np.zeros(L, dtype=dtype), padding_id=pad)


@pytest.mark.parametrize("pad", [1.0, 0.5, "0", True, np.bool_(False), [0]])
def test_padding_id_not_an_integer(pad: Any) -> None:
    with pytest.raises(TypeError, match="padding_id"):
        call("lookup", padding_id=pad)


def test_padding_id_at_dtype_limits_is_fine() -> None:
    for dtype in (np.uint8, np.int8, np.int64, np.uint64):
        info = np.iinfo(dtype)
        for pad in (int(info.min), int(info.max)):
            ids = np.full((B, L), pad, dtype=dtype)
            ids[:, 0] = 1
            idx, _ = call("lookup", ids=ids, padding_id=pad, k=3)
            np.testing.assert_array_equal(idx, [[0, -1, -1]] * B)


# --------------------------------------------------------------------------- out-of-range ids


@pytest.mark.parametrize("bad", [N, N + 100, -1, -(2**40)])
def test_out_of_range_id_names_first_row_position(bad: int) -> None:
    ids = np.zeros((B, L), dtype=np.int64)
    ids[1, 3] = bad
    ids[2, 0] = bad
    with pytest.raises(IndexError, match=r"ids\[1, 3\]"):
        call("lookup", ids=ids)


def test_out_of_range_shared_id_names_its_position() -> None:
    ids = np.zeros(L, dtype=np.int32)
    ids[4] = N
    with pytest.raises(IndexError, match=r"ids\[4\] \(shared"):
        call("lookup", ids=ids)


def test_out_of_range_shared_id_names_the_first_row_that_reads_it() -> None:
    """Shared ids are gathered once for all rows; a bad id still names the first row where it is valid."""
    ids = np.zeros(L, dtype=np.int64)
    ids[4] = N
    with pytest.raises(IndexError, match=r"ids\[4\] \(shared, met in batch row 1\)"):
        call("lookup", ids=ids, lengths=[3, 6, 5])
    ids[4] = 2**40  # beyond every length: never read
    call("lookup", ids=ids, lengths=[3, 4, 2])
    call("lookup", ids=ids, mask=np.arange(L) != 4)
    call("lookup", ids=ids, padding_id=2**40)


@BOTH
def test_empty_batch_accepts_empty_lengths_list(fn: str) -> None:
    empty = {"query": np.zeros((0, W), dtype=np.uint64), "keys": np.zeros((0, L, W), dtype=np.uint64),
             "ids": np.zeros((0, L), dtype=np.int64)}
    idx, dist = call(fn, lengths=[], **empty)
    assert idx.shape == (0, 2) and dist.shape == (0, 2)


@BOTH
def test_empty_batch_with_huge_k(fn: str) -> None:
    """No rows: (0, k) results without per-row work space (k far beyond any memory)."""
    empty = {"query": np.zeros((0, W), dtype=np.uint64), "keys": np.zeros((0, L, W), dtype=np.uint64),
             "ids": np.zeros((0, L), dtype=np.int64)}
    idx, dist = call(fn, k=10**12, **empty)
    assert idx.shape == (0, 10**12) and idx.dtype == np.int64 and dist.dtype == np.int32


def test_out_of_range_ids_at_invalid_positions_are_not_read() -> None:
    ids = np.zeros((B, L), dtype=np.int64)
    ids[0, 5] = 10**12  # beyond lengths[0] / masked
    ids[2, 4] = N  # padding
    call("lookup", ids=ids, lengths=[5, L, L], padding_id=N)
    ids[1, 2] = -5  # masked
    mask = np.ones((B, L), dtype=bool)
    mask[0, 5] = mask[1, 2] = False
    call("lookup", ids=ids, mask=mask, padding_id=N)
    with pytest.raises(IndexError, match=r"ids\[1, 2\]"):
        call("lookup", ids=ids, lengths=[5, L, L], padding_id=N)
    with pytest.raises(IndexError, match=r"ids\[2, 4\]"):
        call("lookup", ids=ids, mask=mask)


@pytest.mark.parametrize("bad", [2**63, 2**64 - 1])
def test_uint64_ids_beyond_int64(bad: int) -> None:
    ids = np.zeros((B, L), dtype=np.uint64)
    ids[2, 1] = bad
    with pytest.raises(IndexError, match=r"ids\[2, 1\]"):
        call("lookup", ids=ids)
    call("lookup", ids=ids, lengths=[L, L, 1])


def test_errors_do_not_modify_inputs() -> None:
    g = good()
    ids = g["ids"].copy()
    ids[0, 0] = -3
    snapshot = {name: np.copy(v) for name, v in g.items()}
    ids_before = ids.copy()
    lengths = np.array([L, L, L + 1])
    with pytest.raises(ValueError):
        er.topk_hamming(g["query"], g["keys"], 2, lengths=lengths)
    with pytest.raises(IndexError):
        er.topk_hamming_lookup(g["query"], ids, g["table"], 2)
    for name, v in g.items():
        np.testing.assert_array_equal(v, snapshot[name])
    np.testing.assert_array_equal(ids, ids_before)
    np.testing.assert_array_equal(lengths, [L, L, L + 1])
