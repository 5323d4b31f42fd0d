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
import json
import os
import sys
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

try:
    import distributed
    import pyarrow as pa  # type: ignore[import-untyped]
    import pyarrow.compute as pc  # type: ignore[import-untyped]
    import pyarrow.parquet as pq  # type: ignore[import-untyped]
except ImportError as exc:  # pragma: no cover - exercised without the extra
    raise ImportError(
        f"etaretrieval.dask needs dask.distributed and pyarrow ({exc.name} is missing): "
        "pip install 'etaretrieval[dask]'"
    ) from exc

from ._device import DeviceArray
from ._validate import DTypeError, as_signatures, check_k
from .table import SignatureTable
from .topk import topk_hamming_lookup

__all__ = ["OfflineSummary", "retrieve_arrow", "retrieve_parquet"]

#: Columns added to every output row.
OUTPUT_COLUMNS = ("topk_ids", "topk_pos", "topk_dist", "error")
_DONE = "_done"  # marker folder (pyarrow and dask skip names starting with "_" and ".")
_JOB = "_job.json"

#: Padded ids built per lookup call, at most (rows x longest history), in elements.
MAX_CELLS = 1 << 24


def _column(batch: pa.Table, name: str) -> pa.Array:
    col = batch.column(name)
    return col.combine_chunks() if isinstance(col, pa.ChunkedArray) else col


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


def _values(a: pa.Array) -> tuple[np.ndarray | None, np.ndarray]:
    """``(null mask or None, values with nulls as 0)`` of an integer array; no copy when nothing is null."""
    if a.null_count == 0:
        return None, a.to_numpy()
    return a.is_null().to_numpy(zero_copy_only=False), pc.fill_null(a, 0).to_numpy()


def _first_per_row(rows: np.ndarray, *values: np.ndarray) -> tuple[np.ndarray, ...]:
    """For sorted-by-appearance ``rows``, each distinct row with the values of its first entry."""
    first_rows, first = np.unique(rows, return_index=True)
    return (first_rows, *(v[first] for v in values))


def _lists(values: np.ndarray, offsets: np.ndarray, null: np.ndarray, arrow_type: pa.DataType) -> pa.Array:
    """A list array of the flat ``values`` cut at ``offsets``, null where ``null``."""
    return pa.ListArray.from_arrays(pa.array(offsets), pa.array(values, type=arrow_type), mask=pa.array(null))


def retrieve_arrow(
    batch: pa.Table | pa.RecordBatch,
    signatures: SignatureTable | np.ndarray,
    k: int,
    *,
    history_col: str = "history",
    target_col: str = "target",
) -> pa.Table:
    """Top-``k`` retrieval for every row of an Arrow table (what each Dask task runs on its rows).

    Vectorised over the rows: the histories are read through the list
    offsets, padded per block of rows to the longest history of the block
    and passed with their lengths to :func:`etaretrieval.topk_hamming_lookup`.

    Parameters
    ----------
    batch : pyarrow.Table or pyarrow.RecordBatch
        Rows with a list-of-integers ``history_col`` (oldest first) and an
        integer ``target_col``.
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
        most ``k`` each; and ``error`` (string, null when the row was
        served). A row with a null history or target, or an id outside
        ``[0, N)``, gets null lists and an ``error`` message.

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
    >>> rows = pa.table({"history": [[2, 0, 1], [1, 7]], "target": [2, 1]})
    >>> out = retrieve_arrow(rows, sig, k=2)
    >>> out.column("topk_ids").to_pylist(), out.column("topk_pos").to_pylist()
    ([[2, 1], None], [[0, 2], None])
    >>> out.column("error").to_pylist()[1]
    'history[1] = 7 is outside the table rows [0, 3)'
    """
    if not isinstance(batch, (pa.Table, pa.RecordBatch)):
        raise TypeError(f"batch must be a pyarrow.Table or pyarrow.RecordBatch, got {type(batch).__name__}")
    signatures = _signatures_of("signatures", signatures)
    k = check_k(k)
    table = pa.Table.from_batches([batch]) if isinstance(batch, pa.RecordBatch) else batch
    _check_schema(table.schema, history_col, target_col, "batch")
    n_rows, n_items = table.num_rows, signatures.shape[0]
    hist, target = _column(table, history_col), _column(table, target_col)

    lengths = pc.fill_null(pc.list_value_length(hist), 0).to_numpy().astype(np.int64)
    starts = np.zeros(n_rows, dtype=np.int64)
    np.cumsum(lengths[:-1], out=starts[1:])
    flat = pc.list_flatten(hist)  # the ids of every row, in order (null histories give none)
    parent = pc.list_parent_indices(hist).to_numpy()
    flat_null, ids = _values(flat)
    out_of_range = (ids < 0) | (ids >= n_items)
    if flat_null is not None:
        out_of_range |= flat_null
    target_null, targets = _values(target)
    if target_null is None:
        target_null = np.zeros(n_rows, dtype=bool)

    messages = np.full(n_rows, None, dtype=object)  # filled for the failed rows only
    failed = np.zeros(n_rows, dtype=bool)
    bad = np.flatnonzero(out_of_range)
    if bad.size:  # one message per row: its first bad id
        rows, where = _first_per_row(parent[bad], bad)
        failed[rows] = True
        for row, at in zip(rows.tolist(), where.tolist()):
            null = flat_null is not None and flat_null[at]
            what = "null" if null else f"{ids[at]} is outside the table rows [0, {n_items})"
            messages[row] = f"{history_col}[{at - int(starts[row])}] = {what}"
    bad_target = target_null | (targets < 0) | (targets >= n_items)
    failed |= bad_target
    for row in np.flatnonzero(bad_target).tolist():
        messages[row] = (
            f"{target_col} is null" if target_null[row]
            else f"{target_col} = {targets[row]} is outside the table rows [0, {n_items})"
        )
    if hist.null_count:
        hist_null = hist.is_null().to_numpy(zero_copy_only=False)
        failed |= hist_null
        messages[hist_null] = f"{history_col} is null"

    served = np.where(failed, 0, lengths)
    query_rows = np.where(failed, 0, targets).astype(np.int64)
    counts = np.zeros(n_rows, dtype=np.int64)
    found, positions, distances = [], [], []  # the retrieved entries of each block of rows, flat
    longest = int(lengths.max()) if n_rows else 0
    block = max(1, MAX_CELLS // max(1, longest))
    for a in range(0, n_rows, block) if n_items else ():  # an empty table: every row failed above
        b = min(a + block, n_rows)
        n = lengths[a:b]  # the ids of rows a..b-1 are one run of the flat ids: copy it into the padded rows
        width = int(n.max())
        padded = np.zeros((b - a, width), dtype=np.int64)
        first = int(starts[a])
        run = ids[first : first + int(n.sum())]
        padded.reshape(-1)[np.arange(run.size) + np.repeat(np.arange(b - a) * width - (starts[a:b] - first), n)] = run
        # a row holds at most `width` entries: asking for more would only add -1 slots
        i, d = topk_hamming_lookup(signatures[query_rows[a:b]], padded, signatures, min(k, width),
                                   lengths=served[a:b])
        keep = i >= 0
        counts[a:b] = keep.sum(axis=1)
        found.append(padded[np.nonzero(keep)[0], i[keep]])
        positions.append(i[keep])
        distances.append(d[keep])
    offsets = np.zeros(n_rows + 1, dtype=np.int32)
    np.cumsum(counts, out=offsets[1:])
    return (
        table.append_column("topk_ids", _lists(_flat(found, np.int64), offsets, failed, pa.int64()))
        .append_column("topk_pos", _lists(_flat(positions, np.int64), offsets, failed, pa.int64()))
        .append_column("topk_dist", _lists(_flat(distances, np.int32), offsets, failed, pa.int32()))
        .append_column("error", pa.array(messages, type=pa.string()))
    )


def _flat(parts: list[np.ndarray], dtype: type) -> np.ndarray:
    return np.concatenate(parts) if parts else np.zeros(0, dtype=dtype)


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


def _run_part(
    part: _Part, output: str, table: str | np.ndarray, digest: str | None, k: int, history_col: str,
    target_col: str, batch_rows: int,
) -> dict[str, Any]:
    """One task: retrieve for every row of one part, write its file and then its marker.

    ``table`` is a path the worker opens (once per process) or the signatures themselves (scattered).
    """
    signatures = _open_table(table, digest) if isinstance(table, str) else table
    out_dir = Path(output)
    final = out_dir / f"{part.name}.parquet"
    tmp = out_dir / f".{final.name}.{uuid.uuid4().hex}.tmp"
    rows = errors = 0
    reader = pq.ParquetFile(part.source)
    writer = None
    try:
        groups = list(range(part.first, part.stop))
        for batch in reader.iter_batches(batch_size=batch_rows, row_groups=groups) if groups else ():
            result = retrieve_arrow(batch, signatures, k, history_col=history_col, target_col=target_col)
            if writer is None:
                writer = pq.ParquetWriter(tmp, result.schema)
            writer.write_table(result)
            rows += result.num_rows
            errors += result.num_rows - result.column("error").null_count
        if writer is None:  # no rows: an empty part with the output's columns
            empty = retrieve_arrow(reader.schema_arrow.empty_table(), signatures, k,
                                   history_col=history_col, target_col=target_col)
            pq.write_table(empty, tmp)
        else:
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
    if todo:
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
                client.submit(
                    _run_part, part, str(out_dir.resolve()), source, digest, k,
                    history_col, target_col, batch_rows, key=f"etaretrieval-{part.name}-{uuid.uuid4().hex}",
                )
                for part in todo
            ]
            for count, future in enumerate(distributed.as_completed(futures), 1):
                result = future.result()
                rows += result["rows"]
                errors += result["errors"]
                if progress:
                    print(
                        f"etaretrieval.offline: {result['name']} done ({result['rows']} rows, "
                        f"{result['errors']} errors) [{count}/{len(todo)}, {time.perf_counter() - start:.1f} s]",
                        file=sys.stderr,
                    )
        finally:
            if own is not None:
                cluster_of_own = own.cluster
                own.close()
                if cluster_of_own is not None:
                    cluster_of_own.close()
    return OfflineSummary(len(parts), len(parts) - len(todo), rows, errors, time.perf_counter() - start)
