"""Fuzzing the NumPy API: a clean exception naming an argument, or the reference's answer.

Each example builds a valid call of :func:`~etaretrieval.topk_hamming`,
:func:`~etaretrieval.topk_hamming_lookup`, :func:`~etaretrieval.pack_signatures`
or :func:`~etaretrieval.hamming`, then spoils up to two of its arguments: another
dtype (integers of every width, floats, bool, timedelta64, object, complex),
another shape (an axis added, dropped, emptied or lengthened), another layout
(strided, read-only, non-native byte order), another kind (a list, a scalar,
``None``, a string) or out-of-range values. The call must either raise
:class:`ValueError`, :class:`TypeError` or :class:`IndexError` whose message
names an argument, or return exactly what the reference
computes from the same values; the arguments are never modified.

Top-K calls come in three forms: padded rows (``lengths`` / ``mask``), ragged
rows (flat values and ``offsets=``, the offsets also spoilt: decreasing,
negative, past the end, float, of another length) and the small common lookup
that takes :func:`etaretrieval.cpu.topk.lookup_fast` (uint64, C-contiguous,
2-D, no validity arguments), so the fast path and its fallbacks (a bad id, a
spoilt layout) are drawn often.

Bounded for CI: small shapes, and the dtypes and layouts that produce a result
are few, so the number of compiled kernel variants stays small.
``FUZZ_EXAMPLES`` (default 150) sets the examples per test; ``FUZZ_COUNTS``
names a file each call appends its outcome to (``answered`` or the exception
class), for a campaign's totals.
"""

from __future__ import annotations

import copy
import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import pytest
import reference as ref
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

import etaretrieval as er
from etaretrieval.cpu.topk import MAX_WORDS

EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "150"))
FUZZ = settings(
    max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large]
)

#: dtypes an array argument is cast to; the integer ones are all accepted for ids and lengths.
DTYPES = [np.int64, np.int32, np.uint8, np.uint64, np.float32, np.float64, np.bool_, "m8[s]", object, np.complex64]
SCALARS = [None, 0, 1.5, "x", True, np.float64(2.0)]


def spoil_array(draw: Callable[..., Any], a: np.ndarray, name: str) -> Any:
    """``a`` spoilt in one way (some ways leave it valid: the call must then answer)."""
    how = draw(st.sampled_from(["dtype", "add", "drop", "empty", "grow", "strided", "readonly", "byteorder",
                                "list", "scalar", "values"]))
    if how == "dtype":
        dtype = draw(st.sampled_from(DTYPES))
        if np.dtype(dtype).kind == "m":
            return a.astype(np.int64).astype(dtype) if a.dtype.kind in "iub" else a.astype(dtype, casting="unsafe")
        return a.astype(dtype)
    if how == "add":
        return a[None]
    if how == "drop":
        return a[0] if a.ndim and a.shape[0] else a.reshape(-1)[:0]
    if how == "empty":
        axis = draw(st.integers(0, max(a.ndim - 1, 0)))
        return a[(slice(None),) * axis + (slice(0, 0),)] if a.ndim else a
    if how == "grow":
        if not a.ndim:
            return a
        axis = draw(st.integers(0, a.ndim - 1))
        return np.concatenate([a, a.take([0] if a.shape[axis] else [], axis=axis) if a.shape[axis]
                               else np.zeros(a.shape[:axis] + (1,) + a.shape[axis + 1:], a.dtype)], axis=axis)
    if how == "strided":
        return ref.relayout(a, draw(st.sampled_from(["f", "strided", "reversed"])))
    if how == "readonly":
        return ref.readonly(a)
    if how == "byteorder":
        return a.astype(a.dtype.newbyteorder("S")) if a.dtype.kind not in "bO" else a
    if how == "list":
        return a.tolist()
    if how == "scalar":
        return draw(st.sampled_from(SCALARS))
    # values: out of range where there is a range
    out = a.copy()
    if out.size and name in ("ids", "lengths", "offsets"):
        flat = out.reshape(-1)
        flat[draw(st.integers(0, flat.size - 1))] = draw(st.sampled_from([-1, 50, 127])) if out.dtype.kind == "i" \
            else draw(st.sampled_from([50, 255]))
    elif out.size and out.dtype.kind == "f":
        out.reshape(-1)[draw(st.integers(0, out.size - 1))] = draw(st.sampled_from([np.nan, np.inf, -np.inf]))
    return out


SPOILT_K = [-1, 2.5, True, None, "3", np.int64(2), np.uint64(3), 2**61, 2**70, 40]
SPOILT_PAD = [-1, 2**64, 1.5, True, 0, np.int8(3), "0", 300]
SPOILT_SIDE = ["left", "LEFT", None, 1]


def spoil_offsets(draw: Callable[..., Any], o: np.ndarray, total: int, generic: bool = True) -> Any:
    """``(B + 1,)`` offsets into ``total`` values spoilt: decreasing, negative, past the end, float, another length.

    ``generic``: also as any array argument (:func:`spoil_array`).
    """
    how = draw(st.sampled_from(["decreasing", "negative", "past", "float", "shorter", "longer", "2-d"]
                               + (["array"] if generic else [])))
    out = o.astype(np.int64) if how in ("negative", "past") else o.copy()
    if how == "decreasing" and o.size >= 2:
        i = draw(st.integers(1, o.size - 1))
        out[i] = out[i - 1] - draw(st.integers(1, 3))
    elif how == "negative":
        out[draw(st.integers(0, o.size - 1))] = -draw(st.integers(1, 2**40))
    elif how == "past":
        out[draw(st.integers(0, o.size - 1))] = total + draw(st.sampled_from([1, 7, 2**31, 2**62]))
    elif how == "float":
        return out.astype(draw(st.sampled_from([np.float64, np.float32])))
    elif how == "shorter":
        return out[:-1]
    elif how == "longer":
        return np.append(out, out[-1])
    elif how == "2-d":
        return out[None]
    elif how == "array":
        return spoil_array(draw, out, "offsets")
    return out


@dataclass(frozen=True)
class Spoilers:
    """How :func:`spoil` spoils each kind of argument (NumPy arrays here; tensors in ``test_fuzz_torch.py``)."""

    array: Callable[..., Any] = spoil_array  # (draw, value, name) -> spoilt value
    offsets: Callable[..., Any] = spoil_offsets  # (draw, offsets, total) -> spoilt offsets
    optional: tuple[Any, ...] = ([1, 2], np.ones((2, 2)), 3)  # what an optional array left out is given
    k: tuple[Any, ...] = tuple(SPOILT_K)
    padding_id: tuple[Any, ...] = tuple(SPOILT_PAD)
    padding_side: tuple[Any, ...] = tuple(SPOILT_SIDE)


def spoil(draw: Callable[..., Any], args: dict[str, Any], names: list[str], how: Spoilers = Spoilers()) -> list[str]:
    """Spoil up to two of ``names`` in ``args``, in place; return the spoilt names."""
    chosen = draw(st.lists(st.sampled_from(names), max_size=2, unique=True))
    for name in chosen:
        value = args[name]
        if name in ("k", "padding_id", "padding_side"):
            args[name] = draw(st.sampled_from(getattr(how, name)))
        elif name == "check_finite":
            args[name] = draw(st.sampled_from([False, True]))
        elif name == "offsets" and value is not None:
            values = np.shape(args["ids"] if "ids" in args else args["keys"])  # maybe spoilt already: any shape
            total = values[0] if values else 0
            args[name] = how.offsets(draw, value, total)
        elif value is None:  # an optional array: give one, maybe a wrong one
            args[name] = draw(st.sampled_from(how.optional))
        else:
            args[name] = how.array(draw, value, name)
    return chosen


def snapshot(args: dict[str, Any]) -> dict[str, Any]:
    return {name: (v.copy(), v.flags.writeable) if isinstance(v, np.ndarray) else copy.deepcopy(v)
            for name, v in args.items()}


def unchanged(args: dict[str, Any], before: dict[str, Any]) -> None:
    for name, v in args.items():
        if isinstance(v, np.ndarray):
            old, writeable = before[name]
            assert v.dtype == old.dtype and v.shape == old.shape and v.flags.writeable == writeable, name
            np.testing.assert_array_equal(v, old, err_msg=name)
        elif isinstance(v, list):
            assert v == before[name], name


def count(kind: str) -> None:
    """Record one call's outcome: a hypothesis event, and a line in the ``FUZZ_COUNTS`` file if set."""
    event(kind)
    path = os.environ.get("FUZZ_COUNTS")
    if path:
        with open(path, "a") as f:
            f.write(kind + "\n")


def outcome(call: Callable[[], Any], spoilt: list[str], names: list[str]) -> Any:
    """The call's result, or ``None`` after a clean error naming an argument.

    The argument named may be another than the spoilt one: a spoilt ``ids``
    of another length makes the (valid) ``mask`` the one of the wrong shape.
    """
    try:
        result = call()
    except Exception as err:
        message = str(err)
        if not isinstance(err, (ValueError, TypeError, IndexError)):
            count(f"unclean: {type(err).__name__}")
            raise
        clean = any(re.search(rf"\b{re.escape(n)}\b", message) for n in names)
        count(f"raised {type(err).__name__}" if clean else "unclean: names no argument")
        assert clean, (spoilt, message)
        return None
    count("answered")
    return result


def native(value: Any) -> Any:
    """``value`` as a NumPy array in native byte order, for the reference (``None`` stays ``None``)."""
    if value is None:
        return None
    a = np.asarray(value)
    return a.astype(a.dtype.newbyteorder("="))


# --------------------------------------------------------------------------- top-K


def ragged_offsets(rng: np.random.Generator, batch: int, length: int) -> tuple[np.ndarray, int]:
    """``(B + 1,)`` offsets of rows of ``0..length`` values, starting anywhere in ``0..2``, and the flat total.

    The total runs up to 2 values past ``offsets[-1]`` (Arrow semantics: values no row holds).
    """
    sizes = rng.integers(0, length + 1, size=batch)
    offsets = np.concatenate([[0], np.cumsum(sizes)]) + rng.integers(0, 3)
    dtype = np.int32 if rng.random() < 0.5 else np.int64
    return offsets.astype(dtype), int(offsets[-1] + rng.integers(0, 3))


@st.composite
def topk_call(draw: Callable[..., Any], lookup: bool, spoiling: bool = True) -> tuple[dict[str, Any], list[str]]:
    """A top-K call's arguments (padded, ragged or fast-path form), up to two spoilt if ``spoiling``."""
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    form = draw(st.sampled_from(["padded", "ragged", "fast"] if lookup else ["padded", "ragged"]))
    batch, length, words, nrows = draw(st.integers(0, 3)), draw(st.integers(0, 5)), draw(st.sampled_from([1, 2])), 4
    shared = form == "padded" and draw(st.booleans())
    args: dict[str, Any] = {"query": ref.random_signatures(rng, (batch, words), style="pool")}
    args["k"] = draw(st.integers(0, 7))
    if form == "ragged":
        args["offsets"], total = ragged_offsets(rng, batch, length)
        shape: tuple[int, ...] = (total,)
    else:
        shape = (length,) if shared else (batch, length)
    if lookup:
        ids_dtype = draw(st.sampled_from([np.int64, np.int32])) if form == "fast" else np.int64
        args["ids"] = rng.integers(0, nrows, size=shape).astype(ids_dtype)
        args["table"] = ref.random_signatures(rng, (nrows, words), style="pool")
        args["padding_id"] = None if form == "fast" else draw(st.sampled_from([None, 1]))
    else:
        args["keys"] = ref.random_signatures(rng, shape + (words,), style="pool")
    validity = "none" if form == "fast" else draw(st.sampled_from(["none", "mask"] if form == "ragged"
                                                                   else ["none", "lengths", "mask"]))
    args["lengths"] = rng.integers(0, length + 1, size=batch) if validity == "lengths" else None
    args["mask"] = (rng.random(shape) < 0.6 if form == "ragged" else rng.random((batch, length)) < 0.6) \
        if validity == "mask" else None
    args["padding_side"] = draw(st.sampled_from(["right", "left"])) if form == "padded" else "right"
    event(f"form {form}")
    if form == "fast":
        fast_fallback(draw, rng, args)
    return args, spoil(draw, args, list(args)) if spoiling else []


def fast_fallback(draw: Callable[..., Any], rng: np.random.Generator, args: dict[str, Any]) -> None:
    """Maybe give the fast path's inputs what sends it to the general path: a bad id, a shape it leaves alone."""
    how = draw(st.sampled_from(["none", "none", "bad id", "ids rows", "table words", "empty table", "wide"]))
    event(f"fast path: {how}")
    ids, table = args["ids"], args["table"]
    if how == "bad id" and ids.size:
        ids.reshape(-1)[rng.integers(ids.size)] = draw(st.sampled_from([-1, table.shape[0], 2**31 - 1]))
    elif how == "ids rows":
        args["ids"] = np.concatenate([ids, ids[:1] if ids.shape[0] else np.zeros((1, ids.shape[1]), ids.dtype)])
    elif how == "table words":
        args["table"] = np.concatenate([table, table[:, :1]], axis=1)
    elif how == "empty table":
        args["table"] = table[:0]
    elif how == "wide":  # more words than any signature has: the fast path leaves it, the general one refuses it
        words = MAX_WORDS + 1
        args["query"] = ref.random_signatures(rng, (args["query"].shape[0], words), style="pool")
        args["table"] = ref.random_signatures(rng, (table.shape[0], words), style="pool")


def reference_topk(
    args: dict[str, Any], lookup: bool, signatures: Callable[[Any], Any] = native, values: Callable[[Any], Any] = native
) -> tuple[np.ndarray, np.ndarray]:
    """The reference's answer to an answered call; ``signatures`` / ``values`` turn arguments into NumPy arrays."""
    query, k = signatures(args["query"]), int(args["k"])
    lengths = None if args["lengths"] is None else values(args["lengths"])
    mask = None if args["mask"] is None else values(args["mask"]) != 0  # a numeric (attention) mask: non-zero valid
    other = values(args["ids"]) if lookup else signatures(args["keys"])
    table = signatures(args["table"]) if lookup else None
    padding_id = None if not lookup or args["padding_id"] is None else int(args["padding_id"])
    if args.get("offsets") is not None:  # ragged rows take neither lengths nor a padding side
        assert lengths is None and args["padding_side"] == "right", "ragged call answered with lengths/padding_side"
        offsets = values(args["offsets"])
        if lookup:
            return ref.topk_hamming_lookup_ragged(query, other, table, k, offsets, mask=mask, padding_id=padding_id)
        return ref.topk_hamming_ragged(query, other, k, offsets, mask=mask)
    length = other.shape[-1] if lookup else other.shape[-2]
    if lengths is not None and args["padding_side"] == "left":
        mask = np.arange(length) >= length - lengths.astype(np.int64)[:, None]
        lengths = None
    if lookup:
        return ref.topk_hamming_lookup(query, other, table, k, lengths=lengths, mask=mask, padding_id=padding_id)
    return ref.topk_hamming(query, other, k, lengths=lengths, mask=mask)


TOPK_NAMES = ["query", "keys", "k", "lengths", "mask", "padding_side", "offsets"]
LOOKUP_NAMES = ["query", "ids", "table", "k", "lengths", "mask", "padding_id", "padding_side", "offsets"]


def call_topk(api: Any, args: dict[str, Any], lookup: bool, spoilt: list[str]) -> Any:
    """:func:`outcome` of ``api.topk_hamming_lookup`` (``lookup``) or ``api.topk_hamming`` on ``args``."""
    kw = {"lengths": args["lengths"], "mask": args["mask"], "padding_side": args["padding_side"]}
    if "offsets" in args:
        kw["offsets"] = args["offsets"]
    if lookup:
        return outcome(lambda: api.topk_hamming_lookup(args["query"], args["ids"], args["table"], args["k"],
                                                       padding_id=args["padding_id"], **kw),
                       spoilt, LOOKUP_NAMES)
    return outcome(lambda: api.topk_hamming(args["query"], args["keys"], args["k"], **kw), spoilt, TOPK_NAMES)


@pytest.mark.parametrize("lookup", [False, True], ids=["topk_hamming", "topk_hamming_lookup"])
@FUZZ
@given(data=st.data())
def test_fuzz_topk(lookup: bool, data: st.DataObject) -> None:
    args, spoilt = data.draw(topk_call(lookup))
    before = snapshot(args)
    got = call_topk(er, args, lookup, spoilt)
    unchanged(args, before)
    if got is not None:
        want = reference_topk(args, lookup)
        assert got[0].dtype == np.int64 and got[1].dtype == np.int32
        np.testing.assert_array_equal(got[0], want[0])
        np.testing.assert_array_equal(got[1], want[1])


# --------------------------------------------------------------------------- packing and Hamming


@st.composite
def pack_call(draw: Callable[..., Any], spoiling: bool = True) -> tuple[dict[str, Any], list[str]]:
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    lead = tuple(draw(st.lists(st.integers(0, 3), max_size=2)))
    dim, bits = draw(st.integers(1, 4)), draw(st.sampled_from([1, 64, 70]))
    xdtype = draw(st.sampled_from([np.float32, np.float64, np.float16]))
    args = {"x": rng.integers(-3, 4, size=lead + (dim,)).astype(xdtype),
            "planes": rng.integers(-2, 3, size=(dim, bits)).astype(draw(st.sampled_from([np.float32, np.float64]))),
            "check_finite": True}
    return args, spoil(draw, args, list(args)) if spoiling else []


@FUZZ
@given(pack_call())
def test_fuzz_pack_signatures(case: tuple[dict[str, Any], list[str]]) -> None:
    args, spoilt = case
    before = snapshot(args)
    got = outcome(lambda: er.pack_signatures(args["x"], args["planes"], check_finite=args["check_finite"]),
                  spoilt, ["x", "planes"])
    unchanged(args, before)
    if got is not None:
        x = np.asarray(args["x"], dtype=np.float64)
        finite = np.isfinite(x).all(axis=-1)  # non-finite rows (check_finite=False) hash to anything
        want = ref.pack(np.where(finite[..., None], x, 0.0), np.asarray(args["planes"], dtype=np.float64))
        assert got.dtype == np.uint64
        np.testing.assert_array_equal(got[finite], want[finite])


@st.composite
def hamming_call(draw: Callable[..., Any]) -> tuple[dict[str, Any], list[str]]:
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    words = draw(st.sampled_from([1, 3]))
    lead = tuple(draw(st.lists(st.integers(0, 3), max_size=2)))
    other = tuple(draw(st.sampled_from([n, 1])) for n in lead)
    args = {"a": ref.random_signatures(rng, lead + (words,)), "b": ref.random_signatures(rng, other + (words,))}
    return args, spoil(draw, args, list(args))


@FUZZ
@given(hamming_call())
def test_fuzz_hamming(case: tuple[dict[str, Any], list[str]]) -> None:
    args, spoilt = case
    before = snapshot(args)
    got = outcome(lambda: er.hamming(args["a"], args["b"]), spoilt, ["a", "b"])
    unchanged(args, before)
    if got is not None:
        assert got.dtype == np.int32
        np.testing.assert_array_equal(got, ref.hamming(native(args["a"]), native(args["b"])))
