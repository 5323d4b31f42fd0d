"""The native C++ kernels (etaretrieval.torch.native) equal the Numba kernels bit for bit, raise their errors with
their messages, and serve an exported program compiled by AOTInductor."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

import etaretrieval  # noqa: E402
from etaretrieval.torch import aten, decompositions, native  # noqa: E402

ops = torch.ops.etaretrieval

#: Every test runs against the library built (once per session) and loaded by the fixture.
pytestmark = pytest.mark.usefixtures("native_library")

#: Every integer dtype: of ids, and of lengths.
INTS = [torch.int8, torch.int16, torch.int32, torch.int64, torch.uint8, torch.uint16, torch.uint32, torch.uint64]
#: Numeric mask dtypes besides bool (an attention mask: non-zero = valid).
MASKS = [torch.bool, torch.float32, torch.float64, torch.int32, torch.uint8]
#: 1..8 words run the kernels specialised per word count; above, the generic loop (up to the 16-word maximum).
WORDS = st.integers(1, 10) | st.just(16)


def words(rng: np.random.Generator, shape: tuple[int, ...], few: int | None = None) -> torch.Tensor:
    """int64 tensors of random uint64 bit patterns; with ``few`` only that many low bits vary (0: all equal)."""
    hi = 2**64 if few is None else 2**few
    return torch.from_numpy(rng.integers(0, hi, size=shape, dtype=np.uint64).view(np.int64))


def same(got: tuple[torch.Tensor, ...], want: tuple[torch.Tensor, ...]) -> None:
    assert len(got) == len(want) == 2
    assert got[0].dtype == torch.int64 and got[1].dtype == torch.int32
    for g, w in zip(got, want):
        assert g.dtype == w.dtype and g.shape == w.shape
        assert torch.equal(g, w), (g, w)


def dtype_range(dtype: torch.dtype) -> tuple[int, int]:
    info = torch.iinfo(dtype)
    return int(info.min), int(info.max)


def from_ints(values: np.ndarray, dtype: torch.dtype) -> torch.Tensor:
    """A tensor of ``dtype`` holding the Python-int ``values`` (an object array; each fits the dtype)."""
    name = str(dtype).removeprefix("torch.")
    return torch.from_numpy(np.array(values.tolist(), dtype=np.dtype(name)).reshape(values.shape))


@st.composite
def layout(draw: st.DrawFn, t: torch.Tensor) -> torch.Tensor:
    """``t``'s values in a drawn memory layout: contiguous, transposed, a strided slice, or read-only NumPy memory."""
    kind = draw(st.sampled_from(["contiguous", "transposed", "strided", "read-only"]))
    if kind == "transposed" and t.dim() >= 2:
        return t.transpose(0, -1).contiguous().transpose(0, -1)
    if kind == "strided":  # every other element, from storage offset 1
        return torch.stack([torch.zeros_like(t), t], dim=-1)[..., 1]
    if kind == "read-only":
        a = t.numpy().copy()
        a.flags.writeable = False
        with warnings.catch_warnings():  # torch warns that it cannot mark the tensor read-only
            warnings.simplefilter("ignore", UserWarning)
            return torch.from_numpy(a)
    return t


@st.composite
def validity(draw: st.DrawFn, rng: np.random.Generator, batch: int, length: int) -> dict:
    """``lengths`` of any integer dtype (either padding side), a ``(B, L)`` / shared ``(L,)`` mask of any kind, or
    nothing."""
    kind = draw(st.sampled_from(["all", "lengths", "mask"]))
    if kind == "lengths":
        dtype = draw(st.sampled_from([d for d in INTS if torch.iinfo(d).max >= length]))
        lengths = torch.from_numpy(rng.integers(0, length + 1, size=batch)).to(dtype)
        return {"lengths": lengths, "padding_side": draw(st.sampled_from(["right", "left"]))}
    if kind == "mask":
        shape = (length,) if draw(st.booleans()) else (batch, length)
        values = rng.random(shape) < draw(st.sampled_from([0.0, 0.3, 0.7, 1.0]))
        mask = torch.from_numpy(values).to(draw(st.sampled_from(MASKS)))
        if mask.dtype.is_floating_point:
            mask = mask * torch.from_numpy(rng.choice([-2.5, 0.5, 1.0], size=shape)).to(mask.dtype)  # non-zero: valid
        return {"mask": mask}
    return {}


def valid_positions(kwargs: dict, batch: int, length: int) -> np.ndarray:
    """The ``(B, L)`` positions that ``lengths`` / ``mask`` leave valid."""
    pos = np.arange(length)
    if "lengths" in kwargs:
        n = kwargs["lengths"].to(torch.int64).numpy()[:, None]
        return pos >= length - n if kwargs["padding_side"] == "left" else pos < n
    if "mask" in kwargs:
        return np.broadcast_to((kwargs["mask"] != 0).numpy(), (batch, length))
    return np.ones((batch, length), dtype=bool)


def numba_lookup(query: torch.Tensor, ids: torch.Tensor, table: torch.Tensor, k: int, padding_id: int | None,
                 **kwargs: torch.Tensor | str) -> tuple[torch.Tensor, torch.Tensor]:
    """``torch.ops.etaretrieval.topk_hamming_lookup``; a uint64 padding id past the op's int64 argument goes
    through the NumPy front end instead (the same Numba kernel)."""
    if padding_id is None or padding_id < 2**63:
        return ops.topk_hamming_lookup(query, ids, table, k, padding_id=padding_id, **kwargs)
    arrays = {name: (v != 0 if name == "mask" else v).numpy() if isinstance(v, torch.Tensor) else v
              for name, v in kwargs.items()}
    idx, dist = etaretrieval.topk_hamming_lookup(query.numpy().view(np.uint64), ids.numpy(),
                                                 table.numpy().view(np.uint64), k, padding_id=padding_id, **arrays)
    return torch.from_numpy(idx), torch.from_numpy(dist)


def snapshot(*tensors: torch.Tensor | None) -> list[torch.Tensor | None]:
    return [None if t is None else t.clone() for t in tensors]


def unchanged(before: list[torch.Tensor | None], after: tuple[torch.Tensor | None, ...]) -> None:
    for b, a in zip(before, after):
        assert (a is None and b is None) or (a is not None and b is not None and torch.equal(a, b))


@settings(max_examples=150)
@given(st.data())
def test_topk_hamming_lookup_equals_the_numba_kernel(data: st.DataObject) -> None:
    rng = np.random.default_rng(data.draw(st.integers(0, 2**32 - 1)))
    batch, length, w = data.draw(st.integers(0, 5)), data.draw(st.integers(0, 40)), data.draw(WORDS)
    nrows = data.draw(st.integers(1, 30))
    few = data.draw(st.sampled_from([None, 2, 0]))  # 2 bits: heavy ties; 0: every distance equal
    query, table = words(rng, (batch, w), few), words(rng, (nrows, w), few)
    dtype = data.draw(st.sampled_from(INTS))
    shape = (length,) if data.draw(st.booleans()) else (batch, length)
    low, high = dtype_range(dtype)
    values = rng.integers(0, nrows, size=shape).astype(object)
    padding_id = data.draw(st.sampled_from(sorted({0, 1, high, low, -1 if low < 0 else 0})) | st.none())
    if padding_id is not None:  # padding at some positions (its id may lie outside the table)
        values[rng.random(shape) < 0.3] = padding_id
    kwargs = data.draw(validity(rng, batch, length))
    valid = valid_positions(kwargs, batch, length)
    unused = ~valid.any(axis=0) if len(shape) == 1 else ~valid  # positions no row reads: any id is allowed there
    garbage = data.draw(st.sampled_from(sorted({nrows, high, low, -1 if low < 0 else high})))
    values[unused & (rng.random(shape) < 0.5)] = garbage
    ids = from_ints(values, dtype)
    k = data.draw(st.integers(0, length + 3))
    want = numba_lookup(query, ids, table, k, padding_id, **kwargs)
    args = [data.draw(layout(t)) for t in (query, ids, table)]
    kw = {name: data.draw(layout(v)) if isinstance(v, torch.Tensor) else v for name, v in kwargs.items()}
    before = snapshot(*args, kw.get("lengths"), kw.get("mask"))
    same(native.topk_hamming_lookup(*args, k, padding_id=padding_id, **kw), want)
    unchanged(before, (*args, kw.get("lengths"), kw.get("mask")))


@settings(max_examples=150)
@given(st.data())
def test_topk_hamming_equals_the_numba_kernel(data: st.DataObject) -> None:
    rng = np.random.default_rng(data.draw(st.integers(0, 2**32 - 1)))
    batch, length, w = data.draw(st.integers(0, 5)), data.draw(st.integers(0, 40)), data.draw(WORDS)
    few = data.draw(st.sampled_from([None, 3, 0]))  # 3 bits: heavy ties; 0: every distance equal
    query = words(rng, (batch, w), few)
    keys = words(rng, (length, w) if data.draw(st.booleans()) else (batch, length, w), few)
    k = data.draw(st.integers(0, length + 3))
    kwargs = data.draw(validity(rng, batch, length))
    want = ops.topk_hamming(query, keys, k, **kwargs)
    args = [data.draw(layout(t)) for t in (query, keys)]
    kw = {name: data.draw(layout(v)) if isinstance(v, torch.Tensor) else v for name, v in kwargs.items()}
    before = snapshot(*args, kw.get("lengths"), kw.get("mask"))
    same(native.topk_hamming(*args, k, **kw), want)
    unchanged(before, (*args, kw.get("lengths"), kw.get("mask")))


def test_all_equal_signatures_come_newest_first_in_every_specialisation() -> None:
    for w in (1, 2, 3, 4, 5, 6, 7, 8, 9, 16):
        query, keys = torch.zeros(3, w, dtype=torch.int64), torch.full((3, 50, w), -1, dtype=torch.int64)
        idx, dist = native.topk_hamming(query, keys, 52)
        assert idx[:, :50].tolist() == [list(range(49, -1, -1))] * 3 and idx[:, 50:].eq(-1).all()
        assert dist[:, :50].eq(64 * w).all() and dist[:, 50:].eq(-1).all()
        same((idx, dist), ops.topk_hamming(query, keys, 52))


def assert_same_error(call) -> None:
    """``call(ops)`` raises; ``call(native)`` raises the same exception type with the same message."""
    with pytest.raises((ValueError, IndexError)) as want:
        call(ops)
    with pytest.raises(type(want.value)) as got:
        call(native)
    assert str(got.value) == str(want.value)


LENGTH_ERRORS = [(torch.int8, -1), (torch.int8, 6), (torch.int16, -300), (torch.int32, 2**31 - 1),
                 (torch.int64, -(2**63)), (torch.uint8, 255), (torch.uint16, 7), (torch.uint32, 2**32 - 1),
                 (torch.uint64, 6), (torch.uint64, 2**63 + 2), (torch.uint64, 2**64 - 1)]


@pytest.mark.parametrize("padding_side", ["right", "left"])
@pytest.mark.parametrize(("dtype", "bad"), LENGTH_ERRORS, ids=[f"{d}-{v}"[6:] for d, v in LENGTH_ERRORS])
def test_lengths_outside_0_to_l_raise_the_numba_value_error(dtype: torch.dtype, bad: int, padding_side: str) -> None:
    rng = np.random.default_rng(0)
    query, keys, table = words(rng, (3, 2)), words(rng, (3, 5, 2)), words(rng, (4, 2))
    ids = torch.from_numpy(rng.integers(0, 4, size=(3, 5)))
    lengths = from_ints(np.array([5, 0, bad], dtype=object), dtype)
    with pytest.raises(ValueError, match=r"lengths must lie in 0\.\.5, got lengths\[2\] = "):
        native.topk_hamming(query, keys, 2, lengths=lengths, padding_side=padding_side)
    assert_same_error(lambda f: f.topk_hamming(query, keys, 2, lengths=lengths, padding_side=padding_side))
    assert_same_error(lambda f: f.topk_hamming_lookup(query, ids, table, 2, lengths=lengths,
                                                      padding_side=padding_side))


@settings(max_examples=100)
@given(st.data())
def test_ids_outside_the_table_raise_the_numba_index_error_where_valid(data: st.DataObject) -> None:
    """A bad id at a valid position raises (shared or per-row ids; the same position and row named); at a masked,
    padded or padding position it is ignored: both kernels then return the same results."""
    rng = np.random.default_rng(data.draw(st.integers(0, 2**32 - 1)))
    batch, length, w = data.draw(st.integers(1, 4)), data.draw(st.integers(1, 20)), data.draw(st.integers(1, 9))
    nrows = data.draw(st.integers(0, 10))
    dtype = data.draw(st.sampled_from(INTS))
    low, high = dtype_range(dtype)
    shape = (length,) if data.draw(st.booleans()) else (batch, length)
    values = rng.integers(0, max(nrows, 1), size=shape).astype(object)
    wide = [2**63 + 5] if dtype == torch.uint64 else [-1, low] if low < 0 else []  # negative, or past int64
    bad = data.draw(st.sampled_from([nrows, nrows + 3, high, *wide]))
    flat = values.reshape(-1)
    flat[rng.choice(flat.size, size=data.draw(st.integers(1, 3)))] = bad
    padding_id = data.draw(st.sampled_from([None, bad, 0]))
    ids = data.draw(layout(from_ints(values, dtype)))
    query, table = words(rng, (batch, w), 3), words(rng, (nrows, w), 3)
    kwargs = data.draw(validity(rng, batch, length))
    try:
        want = numba_lookup(query, ids, table, 3, padding_id, **kwargs)
    except IndexError as error:
        assert "outside the table's rows" in str(error)
        with pytest.raises(IndexError) as got:
            native.topk_hamming_lookup(query, ids, table, 3, padding_id=padding_id, **kwargs)
        assert str(got.value) == str(error)
    else:
        same(native.topk_hamming_lookup(query, ids, table, 3, padding_id=padding_id, **kwargs), want)


def test_index_error_messages_name_the_position_as_the_numba_kernel_does() -> None:
    rng = np.random.default_rng(2)
    query, table = words(rng, (3, 1)), words(rng, (4, 1))
    shared = torch.tensor([0, 1, 9, 2], dtype=torch.int64)
    mask = torch.tensor([[True, True, False, True], [True, False, True, True], [True] * 4])
    with pytest.raises(IndexError, match=re.escape("ids[2] (shared, met in batch row 1) = 9 is outside the table's "
                                                   "rows [0, 4)")):
        native.topk_hamming_lookup(query, shared, table, 2, mask=mask)
    per_row = torch.tensor([[0, 1, 2, 3], [1, 2, 2**63 + 7, 3], [2**64 - 1, 0, 0, 0]], dtype=torch.uint64)
    with pytest.raises(IndexError, match=re.escape(f"ids[1, 2] = {2**63 + 7} is outside the table's rows [0, 4)")):
        native.topk_hamming_lookup(query, per_row, table, 2, lengths=torch.tensor([4, 4, 0]))
    assert_same_error(lambda f: f.topk_hamming_lookup(query, shared, table, 2, mask=mask))
    assert_same_error(lambda f: f.topk_hamming_lookup(query, per_row, table, 2))
    assert_same_error(lambda f: f.topk_hamming_lookup(query, per_row, table[:0], 2, mask=torch.tensor([0, 1, 0, 0])))
    # a bad id where no row reads it is no error: masked, past the lengths (either side), or the padding id
    short = torch.tensor([2, 1, 0])
    for kwargs in ({"mask": torch.tensor([True, True, False, True])}, {"lengths": short},
                   {"lengths": short.flip(0), "padding_side": "left"}, {"padding_id": 9}):
        if "padding_side" in kwargs:
            row = torch.tensor([9, 9, 1, 2])
        elif "lengths" in kwargs:
            row = torch.tensor([0, 1, 9, 9])
        else:
            row = shared
        same(native.topk_hamming_lookup(query, row, table, 3, **kwargs), ops.topk_hamming_lookup(query, row, table, 3,
                                                                                                 **kwargs))
    u64 = torch.tensor([3, 2**64 - 1, 1], dtype=torch.uint64)
    same(native.topk_hamming_lookup(query, u64, table, 3, padding_id=2**64 - 1),
         numba_lookup(query, u64, table, 3, 2**64 - 1))


def _z(*shape: int, dtype: torch.dtype = torch.int64) -> torch.Tensor:
    return torch.zeros(shape, dtype=dtype)


@pytest.mark.parametrize("call", [
    lambda f: f.topk_hamming(_z(2, 1), _z(3, 1), -1),
    lambda f: f.topk_hamming(_z(2, 1, dtype=torch.int32), _z(3, 1), 1),
    lambda f: f.topk_hamming(_z(2, 1, 1), _z(3, 1), 1),
    lambda f: f.topk_hamming(_z(2, 17), _z(3, 17), 1),
    lambda f: f.topk_hamming(_z(2, 1), _z(3, 2), 1),
    lambda f: f.topk_hamming(_z(2, 1), _z(3, 3, 1), 1),
    lambda f: f.topk_hamming(_z(2, 1), _z(3, 1, dtype=torch.uint64), 1),
    lambda f: f.topk_hamming(_z(2, 1), _z(3, 1), 1, lengths=_z(3)),
    lambda f: f.topk_hamming(_z(2, 1), _z(3, 1), 1, lengths=_z(2, dtype=torch.float32)),
    lambda f: f.topk_hamming(_z(2, 1), _z(3, 1), 1, mask=_z(2, 4, dtype=torch.bool)),
    lambda f: f.topk_hamming(_z(2, 1), _z(3, 1), 1, mask=_z(3, dtype=torch.complex64)),
    lambda f: f.topk_hamming(_z(2, 1), _z(3, 1), 1, lengths=_z(2), mask=_z(3, dtype=torch.bool)),
    lambda f: f.topk_hamming(_z(2, 1), _z(3, 1), 1, padding_side="middle"),
    lambda f: f.topk_hamming_lookup(_z(2, 1), _z(2, 3, dtype=torch.float32), _z(4, 1), 1),
    lambda f: f.topk_hamming_lookup(_z(2, 1), _z(2, 3, dtype=torch.bool), _z(4, 1), 1),
    lambda f: f.topk_hamming_lookup(_z(2, 1), _z(2, 3, 1), _z(4, 1), 1),
    lambda f: f.topk_hamming_lookup(_z(2, 1), _z(3, 3), _z(4, 1), 1),
    lambda f: f.topk_hamming_lookup(_z(2, 1), _z(2, 3), _z(4, 2), 1),
    lambda f: f.topk_hamming_lookup(_z(2, 1), _z(2, 3), _z(4, 1, dtype=torch.int32), 1),
    lambda f: f.topk_hamming_lookup(_z(2, 1), _z(2, 3), _z(4, 1), -2),
    lambda f: f.topk_hamming_lookup(_z(2, 1), _z(2, 3), _z(4, 1), 1, mask=_z(2, dtype=torch.bool)),
    lambda f: f.topk_hamming_lookup(_z(2, 1), _z(3), _z(4, 1), 1, lengths=_z(2, 1)),
    lambda f: f.topk_hamming_lookup(_z(2, 1), _z(2, 3), _z(4, 1), 1, padding_side="top"),
    lambda f: f.topk_hamming_lookup(_z(2, 1), _z(2, 3, dtype=torch.uint8), _z(4, 1), 1, padding_id=256),
    lambda f: f.topk_hamming_lookup(_z(2, 1), _z(2, 3, dtype=torch.int8), _z(4, 1), 1, padding_id=-129),
    lambda f: f.topk_hamming_lookup(_z(2, 1), _z(2, 3, dtype=torch.uint64), _z(4, 1), 1, padding_id=-1),
])
def test_argument_errors_are_the_etaretrieval_ops(call) -> None:
    with pytest.raises((ValueError, TypeError)) as want:
        call(ops)
    with pytest.raises(type(want.value), match=re.escape(str(want.value))):
        call(native)


def test_inputs_off_the_cpu_are_refused() -> None:
    with pytest.raises(ValueError, match=re.escape("etaretrieval::topk_hamming (native) has no kernel for device "
                                                   "meta")):
        native.topk_hamming(_z(2, 1).to("meta"), _z(3, 1).to("meta"), 1)
    with pytest.raises(ValueError, match=re.escape("etaretrieval::topk_hamming_lookup (native) has no kernel")):
        native.topk_hamming_lookup(_z(2, 1).to("meta"), _z(3).to("meta"), _z(4, 1).to("meta"), 1)


def test_decompositions_native_map_the_topk_ops_to_the_native_kernels() -> None:
    table, plain = decompositions(native=True), decompositions()
    assert table == native.decompositions()
    assert table.keys() == plain.keys()
    assert table[ops.topk_hamming.default] is native.topk_hamming
    assert table[ops.topk_hamming_lookup.default] is native.topk_hamming_lookup
    others = set(table) - {ops.topk_hamming.default, ops.topk_hamming_lookup.default}
    assert others
    for op in others:
        assert table[op] is plain[op] is getattr(aten, op.name().split("::")[1]), op


def test_without_the_library_loaded_the_wrappers_say_how_to_load_it(monkeypatch: pytest.MonkeyPatch,
                                                                     native_library: Path) -> None:
    assert native.is_loaded()
    native.load(native_library)  # already loaded: a no-op
    monkeypatch.setattr(native, "is_loaded", lambda: False)
    for call in (lambda: native.topk_hamming(_z(2, 1), _z(3, 1), 1),
                 lambda: native.topk_hamming_lookup(_z(2, 1), _z(3), _z(4, 1), 1),
                 native.decompositions, lambda: decompositions(native=True)):
        with pytest.raises(RuntimeError, match=r"native kernels are not loaded .* etaretrieval\.torch\.native\.load"):
            call()
    with pytest.raises(FileNotFoundError, match="build it first"):
        native.load(native_library.parent / "missing.so")


def test_rows_split_over_threads_equal_the_numba_kernel() -> None:
    """Enough rows of long sequences for several parallel tasks (of about 64 Ki distances: 32 rows), two threads."""
    rng = np.random.default_rng(5)
    batch, length = 200, 2000
    query, table = words(rng, (batch, 1), 6), words(rng, (500, 1), 6)
    ids = torch.from_numpy(rng.integers(0, 500, size=(batch, length)))
    lengths = torch.from_numpy(rng.integers(0, length + 1, size=batch))
    keys = words(rng, (batch, length, 1), 6)
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        same(native.topk_hamming_lookup(query, ids, table, 48, lengths=lengths, padding_id=7, padding_side="left"),
             ops.topk_hamming_lookup(query, ids, table, 48, lengths=lengths, padding_id=7, padding_side="left"))
        same(native.topk_hamming_lookup(query, ids[0], table, 48), ops.topk_hamming_lookup(query, ids[0], table, 48))
        same(native.topk_hamming(query, keys, 2100), ops.topk_hamming(query, keys, 2100))
        bad = ids.clone()
        bad[40, 1500], bad[9, 3] = 500, -1  # rows in different tasks: the first row's position is named
        assert_same_error(lambda f: f.topk_hamming_lookup(query, bad, table, 48))
    finally:
        torch.set_num_threads(threads)


def test_sequences_past_the_16_bit_count_blocks_equal_the_numba_kernel() -> None:
    """More than 65,536 positions, most at the same few distances: the kernel counts them in 16-bit blocks."""
    rng = np.random.default_rng(7)
    length = 70_000
    query, table = words(rng, (3, 1), 2), words(rng, (4, 1), 2)
    ids = torch.from_numpy(rng.integers(0, 4, size=length).astype(np.int32))
    keys = words(rng, (length, 1), 2)
    for k in (1, 40_000, length + 1):
        same(native.topk_hamming(query, keys, k), ops.topk_hamming(query, keys, k))
        lengths = torch.tensor([length, 66_000, 3])
        same(native.topk_hamming_lookup(query, ids, table, k, lengths=lengths, padding_side="left"),
             ops.topk_hamming_lookup(query, ids, table, k, lengths=lengths, padding_side="left"))
        per_row = ids.expand(3, length).to(torch.int64)
        same(native.topk_hamming_lookup(query, per_row, table, k, padding_id=3),
             ops.topk_hamming_lookup(query, per_row, table, k, padding_id=3))


PORTABLE = """
import sys
from etaretrieval.torch import native
native.load(sys.argv[1])
import test_native as t
t.test_topk_hamming_lookup_equals_the_numba_kernel()
t.test_topk_hamming_equals_the_numba_kernel()
t.test_ids_outside_the_table_raise_the_numba_index_error_where_valid()
t.test_all_equal_signatures_come_newest_first_in_every_specialisation()
t.test_sequences_past_the_16_bit_count_blocks_equal_the_numba_kernel()
print("portable ok")
"""


@pytest.mark.slow  # a second build (about 20 s) and a process of its own
def test_portable_build_equals_the_numba_kernel(tmp_path: Path) -> None:
    """``build(native_arch=False)`` compiles the portable code paths (no AVX2): the property tests pass on them
    too, in a process of their own (the operators of one library are registered once per process)."""
    library = native.build(tmp_path / "portable", native_arch=False)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(__file__).parent), os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run([sys.executable, "-W", "error", "-c", PORTABLE, str(library)], capture_output=True, text=True,
                          cwd=tmp_path, env=env, timeout=600, check=False)
    assert done.returncode == 0 and "portable ok" in done.stdout, done.stdout + done.stderr


K = 5


class Retrieve(torch.nn.Module):
    """The top-K by id over a signature table buffer, left-padded lengths and a padding id."""

    def __init__(self, table: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("table", table)

    def forward(self, query: torch.Tensor, ids: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return ops.topk_hamming_lookup(query, ids, self.table, K, lengths, None, 0, "left")


def _request(rng: np.random.Generator, batch: int, length: int = 30) -> tuple[torch.Tensor, ...]:
    """Random ids (0: padding) and lengths; row 0 holds 2 valid positions, one not padding: fewer than K."""
    ids = torch.from_numpy(rng.integers(0, 40, size=(batch, length)))
    ids[0, -1] = 5
    lengths = torch.from_numpy(rng.integers(0, length + 1, size=batch))
    lengths[0] = 2
    return words(rng, (batch, 2), 5), ids, lengths


@pytest.mark.filterwarnings("ignore:`torch.jit.script_method` is deprecated:DeprecationWarning")
@pytest.mark.filterwarnings(r"ignore:`isinstance\(treespec, LeafSpec\)` is deprecated:FutureWarning")
def test_exported_program_on_the_native_kernel_compiles_with_aotinductor(tmp_path: Path) -> None:
    rng = np.random.default_rng(6)
    model = Retrieve(words(rng, (40, 2), 5))
    batch = torch.export.Dim("batch", min=1, max=1024)
    program = torch.export.export(model, _request(rng, 4), dynamic_shapes=({0: batch}, {0: batch}, {0: batch}))
    program = program.run_decompositions(decompositions(native=True))
    names = [n.target.name() for n in program.graph.nodes if isinstance(n.target, torch._ops.OpOverload)]
    assert "etaretrieval_native::topk_hamming_lookup" in names
    assert not [name for name in names if name.startswith("etaretrieval::")]
    for request in (_request(rng, 4), _request(rng, 9)):
        same(program.module()(*request), model(*request))
    path = torch._inductor.aoti_compile_and_package(program, package_path=str(tmp_path / "retrieve.pt2"))
    runner = torch._inductor.aoti_load_package(path)
    for request in (_request(rng, 4), _request(rng, 1), _request(rng, 17)):
        got = tuple(runner(*request))
        want = model(*request)
        same(got, want)
        assert (want[0] == -1).any() and (want[0] >= 0).any()
