"""Fuzzing where data live on disk and where the offline path meets them (issue 21).

Three harnesses, each checked against a plain reference:

- **Saved tables.** A table is saved (with checksum blocks of 64 bytes to
  16 MiB), then damaged: a bit flipped anywhere in any of its files, a file
  truncated, lengthened, emptied, deleted or replaced by another valid
  ``.npy`` file, a field of ``table.json`` deleted or given a value of another
  type, or the whole description replaced. It is loaded in every mode
  (memory-mapped or read, ``verify`` False / True / ``"background"``) and
  verified. The outcome is a :class:`~etaretrieval.TableFileError` naming the
  path, or a verified table whose signatures and planes equal what was saved,
  bit for bit: never a wrong table, never another exception.
- **``SignatureTable.refresh(rows)``** with ``rows`` spoilt as ``tests/test_fuzz.py``
  spoils ids: a clean error naming ``rows`` that leaves the table as it was,
  or exactly the given rows rehashed.
- **``retrieve_arrow``** with its arguments spoilt (``batch``, ``signatures``,
  ``k``, the column names): a clean error naming an argument, or each row
  equal to the reference; the signatures are never modified.

Bounded for ``make test`` (``FUZZ_TABLES_EXAMPLES``, default 40 examples per
harness, a few seconds). A campaign: ``FUZZ_TABLES_EXAMPLES=3334`` runs
10,002 calls.
"""

from __future__ import annotations

import json
import os
import re
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import reference as ref
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from test_fuzz import SPOILT_K, native, spoil_array

import etaretrieval as er
from etaretrieval import _tablefile

EXAMPLES = int(os.environ.get("FUZZ_TABLES_EXAMPLES", "40"))
FUZZ = settings(
    max_examples=EXAMPLES, deadline=None, database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
FILES = ["signatures.npy", "planes.npy", "table.json"]
#: Values a field of table.json is given: each of another type or out of range somewhere.
JSON_VALUES = [None, -1, 0, 1, 2**70, 1.5, "x", "", [], {}, True, [0, 0], "0" * 64]


@contextmanager
def block_bytes(size: int) -> Iterator[None]:
    """Checksum blocks of ``size`` bytes for the tables saved in the block (a monkeypatch hypothesis allows)."""
    saved = _tablefile.BLOCK_BYTES
    _tablefile.BLOCK_BYTES = size
    try:
        yield
    finally:
        _tablefile.BLOCK_BYTES = saved


def _json_paths(node: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Every key path (dict keys and list indices) of a parsed description."""
    paths = []
    items = node.items() if isinstance(node, dict) else enumerate(node) if isinstance(node, list) else []
    for key, value in items:
        paths.append(prefix + (key,))
        paths.extend(_json_paths(value, prefix + (key,)))
    return paths


def damage(draw: Callable[..., Any], path: Path, signatures: np.ndarray) -> str:
    """Damage the table at ``path`` in one drawn way; return the way's name."""
    how = draw(st.sampled_from(["none", "flip", "flip", "flip", "truncate", "append", "empty", "delete",
                                "other npy", "json field", "json text"]))
    name = draw(st.sampled_from(FILES))
    target = path / name
    raw = target.read_bytes()
    if how == "flip":
        at = draw(st.integers(0, len(raw) - 1))
        flipped = bytearray(raw)
        flipped[at] ^= 1 << draw(st.integers(0, 7))
        target.write_bytes(bytes(flipped))
        if name == "signatures.npy" and at >= len(raw) - signatures.nbytes:
            how = "flip in data"  # found only by reading the data (verify)
    elif how == "truncate":
        target.write_bytes(raw[: draw(st.integers(0, len(raw) - 1))])
    elif how == "append":
        target.write_bytes(raw + bytes(draw(st.integers(1, 16))))
    elif how == "empty":
        target.write_bytes(b"")
    elif how == "delete":
        target.unlink()
    elif how == "other npy":  # a valid .npy file of the same shape (same header) or of another dtype/shape
        other = draw(st.sampled_from(["same shape", "int64", "fewer rows", "fortran"]))
        rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
        data = rng.integers(0, 2**63, size=signatures.shape, dtype=np.uint64)
        if other == "int64":
            data = data.astype(np.int64)
        elif other == "fewer rows":
            data = data[:-1]
        elif other == "fortran":
            data = np.asfortranarray(data)
        np.save(path / "signatures.npy", data)
        how = f"other npy ({other})"
    elif how == "json field":
        meta = json.loads((path / "table.json").read_text())
        where = draw(st.sampled_from(_json_paths(meta)))
        node = meta
        for key in where[:-1]:
            node = node[key]
        if draw(st.booleans()) and isinstance(node, dict):
            del node[where[-1]]
        else:
            node[where[-1]] = draw(st.sampled_from(JSON_VALUES))
        (path / "table.json").write_text(json.dumps(meta))
    elif how == "json text":
        (path / "table.json").write_text(draw(st.sampled_from(["{", "", "[]", "null", "1", '"x"', "{}", "\0"])))
    return how


@FUZZ
@given(data=st.data())
def test_fuzz_saved_tables(data: st.DataObject) -> None:
    draw = data.draw
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    n, dim, bits = draw(st.integers(0, 40)), draw(st.integers(1, 4)), draw(st.sampled_from([1, 64, 70, 130]))
    hasher = er.SimHasher(dim, bits, seed=draw(st.integers(0, 3)))
    table = er.SignatureTable(rng.standard_normal((n, dim)).astype(np.float32), hasher)
    with tempfile.TemporaryDirectory() as root:
        path = Path(root) / "t"
        with block_bytes(draw(st.sampled_from([64, 200, 1 << 24]))):
            table.save(path)
        how = damage(draw, path, table.signatures)
        event(how)
        mmap, verify = draw(st.booleans()), draw(st.sampled_from([False, True, "background"]))
        try:
            loaded = er.SignatureTable.load(path, mmap=mmap, verify=verify,
                                            hasher=hasher if draw(st.booleans()) else None)
            if not verify and draw(st.booleans()):  # a caller who serves without verifying ...
                np.asarray(loaded.signatures).sum()
            assert loaded.verify() is True  # ... still learns before trusting the data
        except er.TableFileError as err:
            assert err.path == str(path) and f"the SignatureTable at {str(path)!r}" in str(err), str(err)
            event("TableFileError")
            return
        assert how != "flip in data", "a flipped bit of the signatures passed verification"
        np.testing.assert_array_equal(loaded.signatures, table.signatures)
        assert loaded.signatures.shape == table.signatures.shape and loaded.signatures.dtype == np.uint64
        np.testing.assert_array_equal(loaded.hasher.planes, hasher.planes)
        event("loaded, verified and equal")


# --------------------------------------------------------------------------- refresh(rows)


@FUZZ
@given(data=st.data())
def test_fuzz_refresh_rows(data: st.DataObject) -> None:
    draw = data.draw
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    n, dim = draw(st.integers(1, 12)), draw(st.integers(1, 4))
    weight = rng.integers(-3, 4, size=(n, dim)).astype(np.float32)  # integer-valued: exact signs
    hasher = er.SimHasher(dim, draw(st.sampled_from([1, 64, 70])))
    table = er.SignatureTable(weight, hasher)
    before = table.signatures.copy()
    weight[:] = rng.integers(-3, 4, size=(n, dim))  # changed in place: only refreshed rows follow
    rows: Any = rng.integers(0, n, size=draw(st.integers(0, 5))).astype(draw(st.sampled_from(
        [np.int64, np.int32, np.uint8, np.uint64, np.int16])))
    if draw(st.booleans()):
        rows = spoil_array(draw, rows, "ids")  # out-of-range values like ids
    rows_before = rows.copy() if isinstance(rows, np.ndarray) else rows
    try:
        table.refresh(rows)
    except (ValueError, TypeError, IndexError) as err:
        assert re.search(r"\brows\b", str(err)), str(err)
        np.testing.assert_array_equal(table.signatures, before)  # nothing half-done
        event(f"raised {type(err).__name__}")
        return
    finally:
        if isinstance(rows, np.ndarray):
            np.testing.assert_array_equal(rows, rows_before)
    want = before.copy()  # the library's own packing (its exactness is tested elsewhere): which rows changed
    if rows is None:
        want = hasher(weight)
    elif np.size(rows):  # an empty rows of any dtype is a no-op ([] is float64 to NumPy)
        given_rows = native(rows).reshape(-1).astype(np.int64)
        want[given_rows] = hasher(weight[given_rows])
    np.testing.assert_array_equal(table.signatures, want)
    event("refreshed")


# --------------------------------------------------------------------------- the offline API

pa = pytest.importorskip("pyarrow")
edask = pytest.importorskip("etaretrieval.dask")

OFFLINE_NAMES = ["batch", "signatures", "k", "history_col", "target_col"]


def offline_reference(batch: Any, signatures: np.ndarray, k: int) -> list[dict[str, Any]]:
    """Each row as retrieve_arrow should give it, from the plain reference (None lists for a failed row)."""
    rows = []
    nrows = signatures.shape[0]
    for row in batch.to_pylist():
        history, target = row["history"], row["target"]
        bad = history is None or target is None or not 0 <= target < nrows or any(
            i is None or not 0 <= i < nrows for i in history)
        if bad:
            rows.append({"topk_ids": None, "topk_pos": None, "topk_dist": None, "failed": True})
            continue
        ids = np.asarray(history, dtype=np.int64).reshape(1, -1)
        idx, dist = ref.topk_hamming_lookup(signatures[[target]], ids, signatures, min(k, ids.shape[1]))
        keep = idx[0] >= 0
        rows.append({"topk_ids": ids[0, idx[0][keep]].tolist(), "topk_pos": idx[0][keep].tolist(),
                     "topk_dist": dist[0][keep].tolist(), "failed": False})
    return rows


@FUZZ
@given(data=st.data())
def test_fuzz_retrieve_arrow(data: st.DataObject) -> None:
    draw = data.draw
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    nrows, words = draw(st.integers(1, 6)), draw(st.sampled_from([1, 2]))
    sig = ref.random_signatures(rng, (nrows, words), style="pool")
    histories = [rng.integers(-1, nrows + 1, size=draw(st.integers(0, 5))).tolist()
                 for _ in range(draw(st.integers(0, 4)))]
    histories = [None if draw(st.integers(0, 9)) == 0 else h for h in histories]
    targets = [int(t) for t in rng.integers(0, nrows + 1, size=len(histories))]
    args: dict[str, Any] = {
        "batch": pa.table({"history": pa.array(histories, type=pa.list_(pa.int64())),
                           "target": pa.array(targets, type=pa.int64())}),
        "signatures": sig, "k": draw(st.integers(0, 6)), "history_col": "history", "target_col": "target",
    }
    for name in draw(st.lists(st.sampled_from(OFFLINE_NAMES), max_size=2, unique=True)):
        if name == "batch":
            valid = args["batch"]
            args[name] = {"record batch": valid.to_batches()[0] if valid.num_rows else valid, "none": None,
                          "dict": {"history": histories}, "list": histories}[
                draw(st.sampled_from(["record batch", "none", "dict", "list"]))]
        elif name == "signatures":
            kind = draw(st.sampled_from(["array", "array", "table", "none"]))
            if kind == "table":
                weight = rng.standard_normal((nrows, 3)).astype(np.float32)
                args[name] = er.SignatureTable(weight, er.SimHasher(3, 64 * words))
            else:
                args[name] = None if kind == "none" else spoil_array(draw, sig, name)
        elif name == "k":
            args[name] = draw(st.sampled_from([*SPOILT_K, 10**12]))
        else:
            args[name] = draw(st.sampled_from(["missing", 3, None, "error", "history", "target"]))
    given_sig = args["signatures"]
    snapshot = given_sig.copy() if isinstance(given_sig, np.ndarray) else None
    try:
        out = edask.retrieve_arrow(args["batch"], given_sig, args["k"], history_col=args["history_col"],
                                   target_col=args["target_col"])
    except (ValueError, TypeError) as err:
        assert any(re.search(rf"\b{n}\b", str(err)) for n in OFFLINE_NAMES), str(err)
        event(f"raised {type(err).__name__}")
        return
    finally:
        if snapshot is not None:
            np.testing.assert_array_equal(given_sig, snapshot)
    table_sig = native(given_sig.signatures if isinstance(given_sig, er.SignatureTable) else given_sig)
    want = offline_reference(args["batch"], table_sig, int(args["k"]))
    got = out.to_pylist()
    assert len(got) == len(want)
    for row, expected in zip(got, want):
        assert (row["error"] is not None) == expected["failed"], (row, expected)
        assert [row[c] for c in ("topk_ids", "topk_pos", "topk_dist")] == \
            [expected[c] for c in ("topk_ids", "topk_pos", "topk_dist")], (row, expected)
    event("answered")
