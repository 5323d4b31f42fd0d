"""Offline retrieval over Parquet datasets, on a Dask cluster.

Each row of the input holds a behaviour history (a list of item ids, oldest
first) and a target item id; the query of a row is the target's row of a
signature table saved by :meth:`etaretrieval.SignatureTable.save`. The output
keeps every input row and column and adds the top-``k`` of the history by
Hamming distance to the target: ``topk_ids``, ``topk_pos`` and ``topk_dist``
(list columns, nearest first, as :func:`etaretrieval.topk_hamming_lookup`
orders them, only the retrieved entries) and ``error`` (null, or why the row
could not be served: an id outside the table, a null history or target).

Work is split into parts, runs of whole row groups of an input file, one task
each, run by ``dask.distributed`` workers that open the table themselves,
memory-mapped, once per worker process (the OS shares its pages between
processes); tasks carry only the table's path. Each task writes its output
file and then a marker, both by atomic rename, so a re-run skips finished
parts.

Needs the ``dask`` extra: ``pip install "etaretrieval[dask]"`` (dask,
distributed, pyarrow). The command line is ``python -m etaretrieval.offline``.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

try:
    import pyarrow as pa  # type: ignore[import-untyped]
    import pyarrow.parquet as pq  # type: ignore[import-untyped]

    if importlib.util.find_spec("distributed") is None:  # imported only when a cluster runs
        raise ModuleNotFoundError("No module named 'distributed'", name="distributed")
except ImportError as exc:  # pragma: no cover - exercised without the extra
    raise ImportError(
        f"etaretrieval.dask needs dask.distributed and pyarrow ({exc.name} is missing): "
        "pip install 'etaretrieval[dask]'"
    ) from exc

if TYPE_CHECKING:
    import distributed

from ._device import DeviceArray
from ._validate import DTypeError, as_signatures, check_k
from .ragged import topk_hamming_lookup_ragged
from .table import SignatureTable

__all__ = ["OfflineSummary", "retrieve_arrow", "retrieve_parquet"]

#: Columns added to every output row.
OUTPUT_COLUMNS = ("topk_ids", "topk_pos", "topk_dist", "error")
_DONE = "_done"  # marker folder (pyarrow and dask skip names starting with "_" and ".")
_JOB = "_job.json"

#: Retrieved entries per kernel call at most (rows x min(k, longest history)): each call's result lists
#: stay within Arrow's int32 list offsets.
MAX_ENTRIES = (1 << 31) - 1


def _column(batch: pa.Table, name: str) -> pa.Array:
    col = batch.column(name)
    if not isinstance(col, pa.ChunkedArray):
        return col
    return col.combine_chunks() if col.num_chunks else pa.nulls(0, col.type)  # combining no chunks imports pandas


def _check_schema(schema: pa.Schema, history_col: Any, target_col: Any, source: str) -> None:
    """Refuse inputs whose columns cannot be read as (list of integer ids, integer id), naming the argument."""
    for arg, name in (("history_col", history_col), ("target_col", target_col)):
        if not isinstance(name, str):
            raise TypeError(f"{arg} must be a str (a column name), got {type(name).__name__} {name!r}")
        if name not in schema.names:
            raise ValueError(f"{arg} = {name!r} is not a column of {source} (columns: {', '.join(schema.names)})")
        if schema.names.count(name) > 1:
            raise ValueError(f"{arg} = {name!r} names {schema.names.count(name)} columns of {source}; rename them")
    hist = schema.field(history_col).type
    if not (pa.types.is_list(hist) or pa.types.is_large_list(hist)) or not pa.types.is_integer(hist.value_type):
        raise DTypeError(f"history_col = {history_col!r} must name a list of integer item ids, got type {hist}")
    target = schema.field(target_col).type
    if not pa.types.is_integer(target):
        raise DTypeError(f"target_col = {target_col!r} must name a column of integer item ids, got type {target}")
    taken = [c for c in OUTPUT_COLUMNS if c in schema.names]
    if taken:
        raise ValueError(f"{source} already has column(s) {taken}, which the output adds; rename them")


def _signatures_of(name: str, value: Any) -> np.ndarray:
    """The ``(N, W)`` uint64 host signatures of a :class:`SignatureTable` or an array, checked as ``name``."""
    if isinstance(value, SignatureTable):
        value = value.signatures
    sig = as_signatures(name, value, (2,), "(N, W)")
    if isinstance(sig, DeviceArray):
        raise TypeError(f"{name} must be on the host for offline retrieval, got a {sig.family} device array")
    return np.asarray(sig)


def _bits(buffer: pa.Buffer, offset: int, n: int) -> np.ndarray:
    """Bits ``offset .. offset + n`` of an Arrow bitmap (least significant bit first) as booleans."""
    if not n:
        return np.zeros(0, dtype=bool)
    packed = np.frombuffer(buffer, dtype=np.uint8)
    return np.unpackbits(packed, count=offset + n, bitorder="little")[offset:].view(bool)


def _nulls(a: pa.Array) -> np.ndarray | None:
    """The null mask of ``a`` (from its validity bitmap), or None when nothing is null."""
    return ~_bits(a.buffers()[0], a.offset, len(a)) if a.null_count else None


def _numpy(a: pa.Array) -> np.ndarray:
    """The value slots of an integer array as a NumPy view of its buffer (a null's slot holds any value).

    Read from the buffers rather than with ``Array.to_numpy``, which imports
    pandas on its first call in a process (as ``pyarrow.array`` and
    ``pyarrow.scalar`` do).
    """
    dtype = np.dtype(str(a.type))
    if not len(a):
        return np.zeros(0, dtype=dtype)
    return np.frombuffer(a.buffers()[1], dtype=dtype, count=len(a), offset=a.offset * dtype.itemsize)


def _arrow(values: np.ndarray) -> pa.Array:
    """A 1-D integer or boolean NumPy array as Arrow (integers share the buffer; booleans are packed to bits).

    Built from buffers rather than with ``pyarrow.array``, which imports
    pandas on its first call in a process.
    """
    values = np.ascontiguousarray(values)
    if values.dtype == bool:
        bits = pa.py_buffer(np.packbits(values, bitorder="little"))
        return pa.Array.from_buffers(pa.bool_(), len(values), [None, bits])
    return pa.Array.from_buffers(pa.from_numpy_dtype(values.dtype), len(values), [None, pa.py_buffer(values)])


def _strings(messages: np.ndarray, valid: np.ndarray) -> pa.Array:
    """A string array of ``messages`` (an object array) where ``valid``, null elsewhere, built from buffers."""
    rows = np.flatnonzero(valid)
    data = [messages[row].encode() for row in rows.tolist()]
    lengths = np.zeros(len(messages), dtype=np.int64)
    lengths[rows] = [len(d) for d in data]
    offsets = np.zeros(len(messages) + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    validity = pa.py_buffer(np.packbits(valid, bitorder="little"))
    joined = pa.py_buffer(b"".join(data))
    return pa.Array.from_buffers(pa.large_string(), len(messages), [validity, pa.py_buffer(offsets), joined]).cast(
        pa.string())


def _values(a: pa.Array) -> tuple[np.ndarray | None, np.ndarray]:
    """``(null mask or None, values with nulls as 0)`` of an integer array; no copy when nothing is null."""
    null = _nulls(a)
    if null is None:
        return None, _numpy(a)
    values = _numpy(a).copy()
    values[null] = 0
    return null, values


class _Rows:
    """The retrieval of one run of list rows (a chunk of the history column, or a slice of one).

    ``ids`` are the list's whole flat values (zero-copy when none is null) and
    ``offsets`` its ``(B + 1,)`` offsets, ``offsets[0]`` above 0 for a sliced
    array; ``failed`` marks the rows that get an ``error`` message (in ``messages``).
    """

    def __init__(self, hist: pa.Array, targets: np.ndarray, target_null: np.ndarray | None, n_items: int) -> None:
        self.n_rows = len(hist)
        self.offsets = _numpy(hist.offsets)  # int32 (list) or int64 (large_list), no copy
        self.id_null, self.ids = _values(hist.values)
        self.targets, self.n_items = targets, n_items
        bad_target = (targets < 0) | (targets >= n_items)
        self.target_null = target_null
        if target_null is not None:
            bad_target |= target_null
        self.bad_target = bad_target
        self.hist_null = _nulls(hist)
        self.failed = bad_target if self.hist_null is None else bad_target | self.hist_null
        self.messages: np.ndarray | None = None  # filled for the failed rows only

    def find_bad_ids(self, history_col: str) -> None:
        """Fail each row holding a null id or one outside the table, with a message naming its first."""
        lo, hi = int(self.offsets[0]), int(self.offsets[-1])
        span = self.ids[lo:hi]
        out = (span < 0) | (span >= self.n_items)
        if self.id_null is not None:
            out |= self.id_null[lo:hi]
        bad = np.flatnonzero(out) + lo
        rows = np.searchsorted(self.offsets, bad, side="right") - 1  # the row holding each bad id
        rows, first = np.unique(rows, return_index=True)  # one message per row: its first bad id
        messages = np.full(self.n_rows, None, dtype=object)
        for row, at in zip(rows.tolist(), bad[first].tolist()):
            null = self.id_null is not None and self.id_null[at]
            what = "null" if null else f"{self.ids[at]} is outside the table rows [0, {self.n_items})"
            messages[row] = f"{history_col}[{at - int(self.offsets[row])}] = {what}"
        self.messages = messages
        self.failed = self.failed.copy()
        self.failed[rows] = True

    def name_failures(self, history_col: str, target_col: str) -> np.ndarray:
        """The message of each failed row: a bad id, overridden by a bad target, overridden by a null history."""
        if self.messages is None:
            self.messages = np.full(self.n_rows, None, dtype=object)
        messages = self.messages
        for row in np.flatnonzero(self.bad_target).tolist():
            messages[row] = (
                f"{target_col} is null" if self.target_null is not None and self.target_null[row]
                else f"{target_col} = {self.targets[row]} is outside the table rows [0, {self.n_items})"
            )
        if self.hist_null is not None:
            messages[self.hist_null] = f"{history_col} is null"
        return messages

    def lookup(self, signatures: np.ndarray, k: int, history_col: str) -> tuple[np.ndarray, np.ndarray]:
        """``(B, k)`` positions and distances of :func:`~etaretrieval.ragged.topk_hamming_lookup_ragged`.

        Rows are checked only when the call finds a bad id (or a row has
        already failed): their positions are then masked out.
        """
        query_rows = np.where(self.failed, 0, self.targets).astype(np.int64)
        query = signatures[query_rows]
        if not self.failed.any() and self.id_null is None:
            try:
                return topk_hamming_lookup_ragged(query, self.ids, signatures, k, self.offsets)
            except IndexError:  # a row holds an id outside the table: find them all
                pass
        self.find_bad_ids(history_col)
        lo, hi = int(self.offsets[0]), int(self.offsets[-1])
        mask = np.zeros(self.ids.shape[0], dtype=bool)
        mask[lo:hi] = np.repeat(~self.failed, np.diff(self.offsets))
        return topk_hamming_lookup_ragged(query, self.ids, signatures, k, self.offsets, mask=mask)

    def results(self, idx: np.ndarray, dist: np.ndarray) -> tuple[pa.Array, pa.Array, pa.Array]:
        """The ``topk_ids``, ``topk_pos`` and ``topk_dist`` list arrays: the retrieved entries, flat, and offsets."""
        served = idx >= 0
        counts = served.sum(axis=1)
        offsets = np.zeros(self.n_rows + 1, dtype=np.int32)
        np.cumsum(counts, out=offsets[1:])
        pos = idx[served]
        found = self.ids[np.repeat(self.offsets[:-1].astype(np.int64), counts) + pos].astype(np.int64, copy=False)
        offsets_array = _arrow(offsets)
        mask = _arrow(self.failed) if self.failed.any() else None
        ids_list, pos_list, dist_list = (pa.ListArray.from_arrays(offsets_array, _arrow(values), mask=mask)
                                         for values in (found, pos, dist[served]))
        return ids_list, pos_list, dist_list


def retrieve_arrow(
    batch: pa.Table | pa.RecordBatch,
    signatures: SignatureTable | np.ndarray,
    k: int,
    *,
    history_col: str = "history",
    target_col: str = "target",
) -> pa.Table:
    """Top-``k`` retrieval for every row of an Arrow table (what each Dask task runs on its rows).

    The history column is read in place: each chunk's flat values and
    offsets go to :func:`etaretrieval.ragged.topk_hamming_lookup_ragged`
    (a sliced array's offsets start above 0; a ``large_list``'s are int64),
    and the result lists are made from the retrieved entries and their
    offsets, without padding or a Python loop over the rows.

    Parameters
    ----------
    batch : pyarrow.Table or pyarrow.RecordBatch
        Rows with a list-of-integers ``history_col`` (``list`` or
        ``large_list``, oldest first) and an integer ``target_col``.
    signatures : SignatureTable or array_like
        A :class:`~etaretrieval.SignatureTable` (e.g.
        ``SignatureTable.load(path)``) or its ``(N, W)`` uint64 signatures.
    k : int
        Behaviours retrieved per row, ``0..MAX_K`` as in
        :func:`~etaretrieval.topk_hamming_lookup`; a row holds at most its
        history's length, so a ``k`` above the longest history costs nothing more.
    history_col, target_col : str
        Column names.

    Returns
    -------
    pyarrow.Table
        The input columns, then ``topk_ids`` (list<int64>, the retrieved item
        ids), ``topk_pos`` (list<int64>, their positions in the history),
        ``topk_dist`` (list<int32>, Hamming distances), nearest first, at
        most ``k`` each, one chunk per chunk of the history column (a
        chunk whose results would pass 2**31 - 1 entries is split); and
        ``error`` (string, null when the row was served). An empty history is served
        (empty lists). A row with a null history, a null or out-of-range
        target, or a null id or one outside ``[0, N)`` in its history, gets
        null lists and an ``error`` message.

    Raises
    ------
    TypeError, ValueError
        Naming the argument: ``batch`` not an Arrow table, ``signatures``
        not ``(N, W)`` uint64 (:class:`~etaretrieval.DTypeError` for another
        dtype), ``k`` not an integer in ``0..MAX_K``, ``history_col`` /
        ``target_col`` not a column of ``batch`` or of the wrong type.

    Examples
    --------
    >>> import numpy as np, pyarrow as pa, etaretrieval as er
    >>> from etaretrieval.dask import retrieve_arrow
    >>> sig = np.array([[0b00], [0b01], [0b11]], dtype=np.uint64)
    >>> rows = pa.table({"history": [[2, 0, 1], [1, 7], []], "target": [2, 1, 0]})
    >>> out = retrieve_arrow(rows, sig, k=2)
    >>> out.column("topk_ids").to_pylist(), out.column("topk_pos").to_pylist()
    ([[2, 1], None, []], [[0, 2], None, []])
    >>> out.column("error").to_pylist()[1]
    'history[1] = 7 is outside the table rows [0, 3)'
    """
    if not isinstance(batch, (pa.Table, pa.RecordBatch)):
        raise TypeError(f"batch must be a pyarrow.Table or pyarrow.RecordBatch, got {type(batch).__name__}")
    signatures = _signatures_of("signatures", signatures)
    k = check_k(k)
    table = pa.Table.from_batches([batch]) if isinstance(batch, pa.RecordBatch) else batch
    _check_schema(table.schema, history_col, target_col, "batch")
    n_items = signatures.shape[0]
    target_null, targets = _values(_column(table, target_col))
    hist = table.column(history_col)
    chunks: dict[str, list[pa.Array]] = {name: [] for name in OUTPUT_COLUMNS}
    first = 0
    for chunk in hist.chunks:
        lengths = np.diff(_numpy(chunk.offsets))
        null = _nulls(chunk)
        if null is not None:  # a null list's offsets may span values: it has none
            lengths[null] = 0
        longest = int(lengths.max(initial=0))
        step = max(1, MAX_ENTRIES // max(1, min(k, longest)))  # rows per kernel call (int32 result offsets)
        for a in range(0, len(chunk), step):
            piece = chunk.slice(a, step)
            b = first + a + len(piece)
            rows = _Rows(piece, targets[first + a : b], None if target_null is None else target_null[first + a : b],
                         n_items)
            if n_items:  # an empty table: every row failed on its target
                idx, dist = rows.lookup(signatures, min(k, longest), history_col)
            else:
                idx, dist = np.zeros((len(piece), 0), np.int64), np.zeros((len(piece), 0), np.int32)
            for name, lists in zip(OUTPUT_COLUMNS, rows.results(idx, dist)):
                chunks[name].append(lists)
            if rows.failed.any():
                chunks["error"].append(_strings(rows.name_failures(history_col, target_col), rows.failed))
            else:
                chunks["error"].append(pa.nulls(len(piece), pa.string()))
        first += len(chunk)
    types = {"topk_ids": pa.list_(pa.int64()), "topk_pos": pa.list_(pa.int64()),
             "topk_dist": pa.list_(pa.int32()), "error": pa.string()}
    for name in OUTPUT_COLUMNS:
        table = table.append_column(name, pa.chunked_array(chunks[name], type=types[name]))
    return table


# --------------------------------------------------------------------------- per worker process

_OPEN: dict[tuple[str, int, int], np.ndarray] = {}


def _stat_key(real: str) -> tuple[str, int, int]:
    """What identifies a table as saved now: its path, and the inode and mtime of its description (or .npy file)."""
    st = os.stat(real if os.path.isfile(real) else os.path.join(real, "table.json"))
    return real, st.st_ino, st.st_mtime_ns


def _load_signatures(path: str, digest: str | None = None) -> np.ndarray:
    """The signatures of a table directory (memory-mapped) or of a ``.npy`` file, checked as ``table``.

    With ``digest`` (the ``meta_sha256`` the job was started with), a table
    saved again since is refused rather than mixed into the job's output.
    """
    if os.path.isfile(path):
        try:
            signatures = np.load(path, mmap_mode="r", allow_pickle=False)
        except (ValueError, EOFError, OSError) as exc:
            raise ValueError(f"table {path!r} is neither a table directory nor a readable .npy file ({exc})") from None
        return _signatures_of("table", signatures)
    table = SignatureTable.load(path, mmap=True)
    if digest is not None and table._saved_digest != digest:
        raise ValueError(f"the SignatureTable at {path!r} was saved again while the job ran; run the job again")
    return table.signatures


def _open_table(path: str, digest: str | None = None) -> np.ndarray:
    """The signatures at ``path``, memory-mapped once per process (reopened if the table was saved again)."""
    key = _stat_key(os.path.realpath(path))
    signatures = _OPEN.get(key)
    if signatures is None:
        _OPEN.clear()
        signatures = _OPEN[key] = _load_signatures(key[0], digest)
    return signatures


def _atomic_write_text(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def _input_stamp(source: Path) -> dict[str, Any]:
    st = source.stat()
    return {"input": str(source), "size": st.st_size, "mtime_ns": st.st_mtime_ns}


@dataclass(frozen=True)
class _Part:
    """A unit of work: row groups ``[first, stop)`` of one input file, written to ``<name>.parquet``."""

    source: Path
    name: str
    first: int
    stop: int

    def stamp(self) -> dict[str, Any]:
        """What a marker must match for the part to count as done: the input file as it is, and its row groups."""
        return {**_input_stamp(self.source), "row_groups": [self.first, self.stop]}


def _parts(files: list[Path], rows_per_part: int) -> list[_Part]:
    """Split each file into runs of whole row groups of about ``rows_per_part`` rows (at least one part per file)."""
    parts = []
    for i, source in enumerate(files):
        meta = pq.ParquetFile(source).metadata
        sizes = [meta.row_group(g).num_rows for g in range(meta.num_row_groups)]
        first, rows, j = 0, 0, 0
        for g, size in enumerate(sizes):
            rows += size
            if rows >= rows_per_part or g == len(sizes) - 1:
                parts.append(_Part(source, f"part-{i:05d}-{j:04d}", first, g + 1))
                first, rows, j = g + 1, 0, j + 1
        if not sizes:
            parts.append(_Part(source, f"part-{i:05d}-0000", 0, 0))
    return parts


#: Codecs the output files may be written with (``"none"``: uncompressed).
COMPRESSIONS = ("snappy", "zstd", "lz4", "gzip", "brotli", "none")

#: Distinct int64 ids a Parquet dictionary page holds at pyarrow's default limit (1 MiB): with a larger
#: table, the id columns' dictionaries overflow and fall back to plain encoding, after the work of building them.
_DICTIONARY_IDS = (1 << 20) // 8


@dataclass(frozen=True)
class _Task:
    """What every part of a job is run with (sent to the workers with each part)."""

    output: str
    digest: str | None
    k: int
    history_col: str
    target_col: str
    batch_rows: int
    compression: str
    dictionary_ids: bool  # dictionary-encode the id columns (the table fits a dictionary page)

    def retrieve(self, batch: pa.Table | pa.RecordBatch, signatures: np.ndarray) -> pa.Table:
        """The output rows of ``batch`` (:func:`retrieve_arrow`)."""
        return retrieve_arrow(batch, signatures, self.k, history_col=self.history_col, target_col=self.target_col)

    def writer(self, path: Path, schema: pa.Schema) -> pq.ParquetWriter:
        """A writer of the output: dictionary encoding for every column but the ids of a large table."""
        dictionary: bool | list[str] = True
        if not self.dictionary_ids:
            id_columns = pa.schema([schema.field(name) for name in (self.history_col, self.target_col, "topk_ids")])
            ids = set(_leaf_paths(id_columns))
            dictionary = [leaf for leaf in _leaf_paths(schema) if leaf not in ids]
        return pq.ParquetWriter(path, schema, compression=self.compression, use_dictionary=dictionary)


def _empty(schema: pa.Schema) -> pa.Table:
    """A table of no rows (``Schema.empty_table`` imports pandas)."""
    return pa.Table.from_batches([], schema=schema)


def _leaf_paths(schema: pa.Schema) -> list[str]:
    """The Parquet column paths (``history.list.element``, ...) that ``schema`` is written as."""
    sink = pa.BufferOutputStream()
    pq.write_table(_empty(schema), sink)
    parquet = pq.ParquetFile(pa.BufferReader(sink.getvalue())).schema
    return [parquet.column(i).path for i in range(len(parquet))]


def _run_part(part: _Part, table: str | np.ndarray, task: _Task) -> dict[str, Any]:
    """One task: retrieve for every row of one part, write its file and then its marker.

    ``table`` is a path the worker opens (once per process) or the signatures themselves (scattered).
    """
    signatures = _open_table(table, task.digest) if isinstance(table, str) else table
    out_dir = Path(task.output)
    final = out_dir / f"{part.name}.parquet"
    tmp = out_dir / f".{final.name}.{uuid.uuid4().hex}.tmp"
    rows = errors = 0
    reader = pq.ParquetFile(part.source)
    writer = None
    try:
        groups = list(range(part.first, part.stop))
        for batch in reader.iter_batches(batch_size=task.batch_rows, row_groups=groups) if groups else ():
            result = task.retrieve(batch, signatures)
            if writer is None:
                writer = task.writer(tmp, result.schema)
            writer.write_table(result)
            rows += result.num_rows
            errors += result.num_rows - result.column("error").null_count
        if writer is None:  # no rows: an empty part with the output's columns
            writer = task.writer(tmp, task.retrieve(_empty(reader.schema_arrow), signatures).schema)
        writer.close()
        writer = None
        os.replace(tmp, final)
    finally:
        if writer is not None:
            writer.close()
        tmp.unlink(missing_ok=True)
    marker = {**part.stamp(), "rows": rows, "errors": errors}
    _atomic_write_text(out_dir / _DONE / f"{part.name}.json", json.dumps(marker))
    return {"name": part.name, "rows": rows, "errors": errors}


# --------------------------------------------------------------------------- driver


@dataclass(frozen=True)
class OfflineSummary:
    """What :func:`retrieve_parquet` did.

    Attributes
    ----------
    partitions : int
        Parts (runs of row groups of an input file; one task and one output file each).
    skipped : int
        Parts already finished by an earlier run, left as they were.
    rows : int
        Rows written, all parts together (equal to the rows read).
    errors : int
        Rows with an ``error`` message.
    seconds : float
        Wall time of the call.

    Examples
    --------
    >>> from etaretrieval.dask import OfflineSummary
    >>> OfflineSummary(partitions=4, skipped=1, rows=1000, errors=2, seconds=1.5).rows
    1000
    """

    partitions: int
    skipped: int
    rows: int
    errors: int
    seconds: float


def _input_files(source: Path) -> list[Path]:
    if source.is_file():
        return [source]
    if not source.is_dir():
        raise FileNotFoundError(f"input {str(source)!r} is neither a Parquet file nor a directory")
    files = sorted(
        p for p in source.rglob("*.parquet")
        if not any(part.startswith(("_", ".")) for part in p.relative_to(source).parts)
    )
    if not files:
        raise FileNotFoundError(f"input directory {str(source)!r} holds no *.parquet files")
    return files


def _finished(out_dir: Path, part: _Part) -> dict[str, Any] | None:
    """The marker of ``part`` if it was written from this very input file and row groups, else None."""
    try:
        marker = json.loads((out_dir / _DONE / f"{part.name}.json").read_text(encoding="utf-8"))
    except (FileNotFoundError, json.JSONDecodeError):
        return None
    if (out_dir / f"{part.name}.parquet").is_file() and all(
        marker.get(key) == value for key, value in part.stamp().items()
    ):
        return dict(marker)
    return None


def _content_sha256(signatures: np.ndarray) -> str:
    """SHA-256 of an ``(N, W)`` signature array: its shape and little-endian bytes."""
    data = np.ascontiguousarray(signatures, dtype="<u8")
    digest = hashlib.sha256(repr(data.shape).encode())
    digest.update(data.reshape(-1).data)
    return digest.hexdigest()


def _job_table(table: Any, verify: bool) -> tuple[Any, str | None, dict[str, Any]]:
    """What the tasks read (a path or the signatures), the digest workers check, and the job's table identity."""
    if isinstance(table, (str, os.PathLike)):
        path = str(Path(table).resolve())
        if os.path.isfile(path):
            signatures = _load_signatures(path)
            return path, None, {"table_rows": signatures.shape[0], "table_sha256": _content_sha256(signatures)}
        opened = SignatureTable.load(path, verify=verify)
        digest = opened._saved_digest  # every checksum of the saved table (None: format version 1)
        content = digest if digest is not None else _content_sha256(opened.signatures)
        return path, digest, {"table_rows": len(opened), "table_sha256": content}
    signatures = _signatures_of("table", table)
    return signatures, None, {"table_rows": signatures.shape[0], "table_sha256": _content_sha256(signatures)}


def _run_here(todo: list[_Part], source: Any, task: _Task) -> Iterator[dict[str, Any]]:
    """Run the parts one after the other in this process (one worker: no cluster to start)."""
    signatures = _load_signatures(source, task.digest) if isinstance(source, str) and todo else source
    for part in todo:
        yield _run_part(part, signatures, task)


def _run_on_cluster(todo: list[_Part], source: Any, task: _Task, client: distributed.Client | None,
                    scheduler: str | None, workers: int | None, processes: bool) -> Iterator[dict[str, Any]]:
    """Run the parts as tasks of ``client``'s cluster, the one at ``scheduler``, or a local one started for them."""
    if not todo:
        return
    import distributed

    own = None
    if client is None:
        if scheduler is not None:
            client = own = distributed.Client(scheduler)
        else:
            n = workers or min(os.cpu_count() or 1, 8)
            cluster = distributed.LocalCluster(
                n_workers=n, threads_per_worker=1, processes=processes, dashboard_address=":0"
            )
            client = own = distributed.Client(cluster)
    try:
        if not isinstance(source, str):  # the signatures themselves: one copy to each worker
            source = client.scatter(source, broadcast=True)
        futures = [
            client.submit(_run_part, part, source, task, key=f"etaretrieval-{part.name}-{uuid.uuid4().hex}")
            for part in todo
        ]
        for future in distributed.as_completed(futures):
            yield future.result()
    finally:
        if own is not None:
            cluster_of_own = own.cluster
            own.close()
            if cluster_of_own is not None:
                cluster_of_own.close()


def retrieve_parquet(
    input: str | os.PathLike[str],
    table: str | os.PathLike[str] | SignatureTable | np.ndarray,
    output: str | os.PathLike[str],
    k: int,
    *,
    history_col: str = "history",
    target_col: str = "target",
    verify: bool = True,
    client: distributed.Client | None = None,
    scheduler: str | None = None,
    workers: int | None = None,
    processes: bool = True,
    progress: bool = True,
    batch_rows: int = 65536,
    rows_per_part: int = 1_000_000,
    compression: str = "snappy",
) -> OfflineSummary:
    """Retrieve the top-``k`` history items of every row of a Parquet dataset, on Dask.

    Parameters
    ----------
    input : str or os.PathLike
        A Parquet file, or a directory of them (read recursively; names
        starting with ``_`` or ``.`` are skipped).
    table : str, os.PathLike, SignatureTable or array_like
        A directory written by :meth:`etaretrieval.SignatureTable.save` or a
        ``.npy`` file of ``(N, W)`` uint64 signatures, readable at the same
        path by every worker (shared storage; each worker process maps it
        once); or a :class:`~etaretrieval.SignatureTable` or its signatures,
        sent to every worker (each then holds a copy).
    output : str or os.PathLike
        Directory for ``part-FFFFF-PPPP.parquet`` (part ``P`` of the ``F``-th
        input file in sorted order: in name order, the parts hold the input
        rows in order; see :func:`retrieve_arrow` for the columns), the
        markers of finished parts (``_done/``) and the job description
        (``_job.json``).
    k : int
        Behaviours retrieved per row.
    history_col, target_col : str
        Input column names.
    verify : bool, default True
        Check the saved table's signatures against their checksums once,
        before any task runs (:meth:`etaretrieval.SignatureTable.verify`).
        Workers check that the table they open is the one verified.
    client : distributed.Client, optional
        Run on this client's cluster.
    scheduler : str, optional
        Or connect to the scheduler at this address. Without either, a
        ``LocalCluster`` is started for the call and closed after it.
    workers : int, optional
        Workers of that local cluster (one thread each); default: the CPUs, up to 8.
    processes : bool, default True
        Local workers in processes (True) or threads of this process.
    progress : bool, default True
        Print a line to stderr as each part finishes.
    batch_rows : int, default 65536
        Rows read and retrieved at a time within a part (bounds each task's memory).
    rows_per_part : int, default 1000000
        A file is split into parts of whole row groups of about this many
        rows (one task each), so one large file still keeps every worker busy.
    compression : str, default "snappy"
        Codec of the output files: ``"snappy"``, ``"zstd"``, ``"lz4"``,
        ``"gzip"``, ``"brotli"`` or ``"none"`` (uncompressed: the fastest to
        write, the largest; see :ref:`scaling`).

    Returns
    -------
    OfflineSummary

    Raises
    ------
    TableFileError
        ``table`` is no table or a damaged one (:class:`ValueError`).
    ValueError
        ``output`` holds parts of another job (other table, ``k`` or columns),
        or an argument is out of range (named).

    Examples
    --------
    >>> import os, tempfile, numpy as np, pyarrow as pa, pyarrow.parquet as pq, etaretrieval as er
    >>> from etaretrieval.dask import retrieve_parquet
    >>> root = tempfile.mkdtemp()
    >>> weight = np.random.default_rng(0).standard_normal((100, 8)).astype(np.float32)
    >>> er.SignatureTable(weight, er.SimHasher(8, 64)).save(os.path.join(root, "table"))
    >>> os.mkdir(os.path.join(root, "in"))
    >>> rows = pa.table({"history": [[1, 2, 3], [4, 5], [99, 100]], "target": [3, 4, 5]})
    >>> pq.write_table(rows, os.path.join(root, "in", "a.parquet"))
    >>> summary = retrieve_parquet(os.path.join(root, "in"), os.path.join(root, "table"),
    ...                            os.path.join(root, "out"), k=2, workers=1, processes=False, progress=False)
    >>> summary.rows, summary.errors
    (3, 1)
    >>> out = pq.read_table(os.path.join(root, "out"))
    >>> out.column("topk_pos").to_pylist()[0], out.column("error").to_pylist()[2]
    ([2, 0], 'history[1] = 100 is outside the table rows [0, 100)')
    """
    start = time.perf_counter()
    k = check_k(k)
    if batch_rows < 1 or rows_per_part < 1:
        raise ValueError(f"batch_rows and rows_per_part must be >= 1, got {batch_rows} and {rows_per_part}")
    if client is not None and scheduler is not None:
        raise ValueError("pass either client or scheduler, not both")
    if compression not in COMPRESSIONS:
        raise ValueError(f"compression must be one of {', '.join(map(repr, COMPRESSIONS))}, got {compression!r}")
    files = _input_files(Path(input))
    _check_schema(pq.read_schema(files[0]), history_col, target_col, "the input")
    source, digest, identity = _job_table(table, verify)  # fails here, not in every task, if it is no table
    out_dir = Path(output)
    (out_dir / _DONE).mkdir(parents=True, exist_ok=True)
    job = {"k": k, "history_col": history_col, "target_col": target_col, "rows_per_part": rows_per_part, **identity}
    job_file = out_dir / _JOB
    if job_file.is_file():
        earlier = json.loads(job_file.read_text(encoding="utf-8"))
        if earlier != job:
            raise ValueError(
                f"output {str(out_dir)!r} holds parts of another job ({earlier}); this one is {job}: "
                "use another output directory, or delete it to start over"
            )
    else:
        _atomic_write_text(job_file, json.dumps(job))

    parts = _parts(files, rows_per_part)
    done = [_finished(out_dir, part) for part in parts]
    todo = [part for part, marker in zip(parts, done) if marker is None]
    rows = sum(m["rows"] for m in done if m is not None)
    errors = sum(m["errors"] for m in done if m is not None)
    if progress and len(todo) < len(parts):
        print(f"etaretrieval.offline: {len(parts) - len(todo)} of {len(parts)} parts already done", file=sys.stderr)
    task = _Task(str(out_dir.resolve()), digest, k, history_col, target_col, batch_rows, compression,
                 identity["table_rows"] <= _DICTIONARY_IDS)
    if client is None and scheduler is None and (workers or min(os.cpu_count() or 1, 8)) == 1:
        results = _run_here(todo, source, task)
    else:
        results = _run_on_cluster(todo, source, task, client, scheduler, workers, processes)
    for count, result in enumerate(results, 1):
        rows += result["rows"]
        errors += result["errors"]
        if progress:
            print(
                f"etaretrieval.offline: {result['name']} done ({result['rows']} rows, "
                f"{result['errors']} errors) [{count}/{len(todo)}, {time.perf_counter() - start:.1f} s]",
                file=sys.stderr,
            )
    return OfflineSummary(len(parts), len(parts) - len(todo), rows, errors, time.perf_counter() - start)
