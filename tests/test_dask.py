"""Offline retrieval over Parquet: etaretrieval.dask and python -m etaretrieval.offline.

Every output row equals the numpy API's answer for that row; rows out == rows in; bad rows get an error
message; a re-run skips finished parts.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

pa = pytest.importorskip("pyarrow")
pq = pytest.importorskip("pyarrow.parquet")
pytest.importorskip("distributed")

from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

import etaretrieval as er  # noqa: E402
from etaretrieval import dask as edask  # noqa: E402

N, DIM, BITS, K = 300, 8, 70, 6


def expected(signatures: np.ndarray, history: list[int], target: int, k: int) -> tuple[list, list, list]:
    """The numpy API on one row: (ids, positions, distances) of the retrieved entries."""
    ids = np.asarray(history, dtype=np.int64).reshape(1, -1)
    idx, dist = er.topk_hamming_lookup(signatures[[target]], ids, signatures, k)
    keep = idx[0] >= 0
    return ids[0, idx[0][keep]].tolist(), idx[0][keep].tolist(), dist[0][keep].tolist()


def check_rows(out: pa.Table, signatures: np.ndarray, k: int) -> None:
    """Each served row equals the numpy API; each failed row has null lists and a message."""
    for row in out.to_pylist():
        if row["error"] is None:
            want = expected(signatures, row["history"], row["target"], k)
            assert (row["topk_ids"], row["topk_pos"], row["topk_dist"]) == want, row
        else:
            assert row["topk_ids"] is None and row["topk_pos"] is None and row["topk_dist"] is None


@pytest.fixture(scope="module")
def table(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, np.ndarray]:
    root = tmp_path_factory.mktemp("table")
    weight = np.random.default_rng(0).standard_normal((N, DIM)).astype(np.float32)
    t = er.SignatureTable(weight, er.SimHasher(DIM, BITS, seed=2))
    t.save(root / "items")
    return root / "items", t.signatures


def _rows(rng: np.random.Generator, n: int, start: int) -> dict[str, list]:
    lengths = rng.integers(0, 60, size=n)
    lengths[::7] = 0  # empty histories
    return {
        "request": list(range(start, start + n)),  # an extra column, kept as it is
        "history": [rng.integers(0, N, size=m).tolist() for m in lengths],
        "target": rng.integers(0, N, size=n).tolist(),
    }


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """4 files: plain, with bad rows, with int32 ids, and an empty one."""
    root = tmp_path_factory.mktemp("input")
    rng = np.random.default_rng(1)
    pq.write_table(pa.table(_rows(rng, 120, 0)), root / "a.parquet", row_group_size=50)
    bad = _rows(rng, 40, 1000)
    bad["history"][3] = [1, 2, N, 4]  # an id past the table
    bad["history"][5] = [-1, 2]  # a negative id
    bad["history"][8] = None  # a null history
    bad["history"][9] = [5, None, 6]  # a null id
    bad["target"][11] = N + 5  # a target past the table
    bad["target"][12] = None  # a null target
    pq.write_table(pa.table(bad), root / "b.parquet")
    narrow = _rows(rng, 30, 2000)
    schema = pa.schema([("request", pa.int64()), ("history", pa.list_(pa.int32())), ("target", pa.int32())])
    pq.write_table(pa.table(narrow, schema=schema), root / "c.parquet")
    wide = pa.schema([("request", pa.int64()), ("history", pa.list_(pa.int64())), ("target", pa.int64())])
    pq.write_table(pa.table(_rows(rng, 0, 0), schema=wide), root / "d.parquet")
    (root / "_ignored").mkdir()
    (root / "_ignored" / "x.parquet").write_bytes(b"not parquet")
    return root


@pytest.fixture(scope="module")
def cluster():  # type: ignore[no-untyped-def]
    """A 2-worker LocalCluster in this process, shared by the tests of this module."""
    import distributed

    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=False,
                                  dashboard_address=":0") as local, distributed.Client(local) as client:
        yield client


# --------------------------------------------------------------------------- retrieve_arrow


def test_retrieve_arrow_equals_numpy_api_row_by_row(table: tuple[Path, np.ndarray], dataset: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    _, sig = table
    rows = pq.read_table(dataset / "b.parquet")
    whole = edask.retrieve_arrow(rows, sig, K)
    check_rows(whole, sig, K)
    chunked = pa.Table.from_batches(rows.to_batches(max_chunksize=7))  # chunks: sliced list arrays
    assert chunked.column("history").num_chunks > 1 and chunked.column("history").chunk(1).offset > 0
    assert edask.retrieve_arrow(chunked, sig, K).equals(whole)
    monkeypatch.setattr(edask, "MAX_ENTRIES", 13)  # many kernel calls on slices of each chunk: the same answer
    assert edask.retrieve_arrow(rows, sig, K).equals(whole)
    assert edask.retrieve_arrow(chunked, sig, K).equals(whole)
    errors = whole.column("error").to_pylist()
    assert errors[3] == f"history[2] = {N} is outside the table rows [0, {N})"
    assert errors[5] == f"history[0] = -1 is outside the table rows [0, {N})"
    assert errors[8] == "history is null"
    assert errors[9] == "history[1] = null"
    assert errors[11] == f"target = {N + 5} is outside the table rows [0, {N})"
    assert errors[12] == "target is null"
    assert sum(e is not None for e in errors) == 6
    assert whole.column_names == ["request", "history", "target", "topk_ids", "topk_pos", "topk_dist", "error"]
    assert whole.schema.field("topk_dist").type == pa.list_(pa.int32())


@settings(deadline=None, max_examples=20)
@given(
    lengths=st.lists(st.integers(0, 12), max_size=8),
    k=st.integers(0, 5),
    seed=st.integers(0, 2**32 - 1),
    large=st.booleans(),
)
def test_retrieve_arrow_property(lengths: list[int], k: int, seed: int, large: bool) -> None:
    rng = np.random.default_rng(seed)
    sig = rng.integers(0, 2**64, size=(10, 1), dtype=np.uint64) & np.uint64(0b111)  # many ties
    history = [rng.integers(0, 10, size=m).tolist() for m in lengths]
    list_type = pa.large_list(pa.uint16()) if large else pa.list_(pa.int64())
    rows = pa.table({"history": pa.array(history, type=list_type),
                     "target": pa.array(rng.integers(0, 10, size=len(lengths)), type=pa.int64())})
    out = edask.retrieve_arrow(rows.slice(0), sig, k)
    assert out.num_rows == len(lengths) and out.column("error").null_count == len(lengths)
    check_rows(out, sig, k)


@settings(deadline=None, max_examples=25)
@given(
    lengths=st.lists(st.integers(0, 12), min_size=1, max_size=10),
    k=st.integers(0, 14),
    seed=st.integers(0, 2**32 - 1),
    large=st.booleans(),
    start=st.integers(0, 4),
    chunk=st.integers(1, 4),
)
def test_retrieve_arrow_reads_offsets_and_values_in_place(lengths: list[int], k: int, seed: int, large: bool,
                                                          start: int, chunk: int) -> None:
    """Sliced list arrays (offsets from above 0), chunked columns, large_list offsets, null rows whose offsets
    span values, and bad ids in some rows: every row as the padded NumPy API answers it, the result lists
    offsets + values (no padding) and chunked as the history column."""
    rng = np.random.default_rng(seed)
    sig = rng.integers(0, 2**64, size=(10, 1), dtype=np.uint64) & np.uint64(0b1111)  # many ties
    offsets = np.concatenate([[0], np.cumsum(lengths)])
    values = rng.integers(0, 10, size=int(offsets[-1]))
    values[rng.random(values.size) < 0.05] = 10  # an id past the table, now and then
    null = rng.random(len(lengths)) < 0.2  # null rows keep their (non-empty) spans of values
    offset_type = pa.int64() if large else pa.int32()
    array_type = pa.LargeListArray if large else pa.ListArray
    history = array_type.from_arrays(pa.array(offsets, type=offset_type), pa.array(values, type=pa.int16()),
                                     mask=pa.array(null))
    target = pa.array(rng.integers(0, 10, size=len(lengths)), type=pa.int64())
    rows = pa.table({"history": history, "target": target}).slice(min(start, len(lengths) - 1))
    rows = pa.Table.from_batches(rows.to_batches(max_chunksize=chunk), schema=rows.schema)
    out = edask.retrieve_arrow(rows, sig, k)
    assert out.num_rows == rows.num_rows and out.column("topk_pos").num_chunks == rows.column("history").num_chunks
    check_rows(out, sig, k)
    for i, row in enumerate(out.to_pylist()):
        if row["history"] is None:
            assert row["error"] == "history is null"
        elif 10 in row["history"]:
            assert row["error"] == f"history[{row['history'].index(10)}] = 10 is outside the table rows [0, 10)"
        else:
            assert row["error"] is None and len(row["topk_pos"]) == min(k, len(row["history"])), i


def test_retrieve_arrow_hands_the_lists_buffers_to_the_kernel(table: tuple[Path, np.ndarray],
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """The ids and offsets the ragged lookup gets are the Arrow buffers themselves (no copy, no padding),
    one call per chunk, a sliced chunk's offsets starting above 0."""
    _, sig = table
    ids = np.arange(40, dtype=np.int64) % N
    history = pa.LargeListArray.from_arrays(pa.array(np.arange(0, 41, 4)), pa.array(ids))
    rows = pa.table({"history": history, "target": pa.array(np.arange(10))})
    rows = pa.Table.from_batches(rows.slice(1).to_batches(max_chunksize=5))  # chunks of rows 1-5 and 6-9
    calls = []
    real = edask.topk_hamming_lookup_ragged

    def spy(query, values, signatures, k, offsets, **kwargs):  # type: ignore[no-untyped-def]
        calls.append((values, offsets))
        return real(query, values, signatures, k, offsets, **kwargs)

    monkeypatch.setattr(edask, "topk_hamming_lookup_ragged", spy)
    out = edask.retrieve_arrow(rows, sig, K)
    assert [o.tolist() for _, o in calls] == [[4, 8, 12, 16, 20, 24], [24, 28, 32, 36, 40]]
    for values, offsets in calls:
        assert values.dtype == np.int64 and offsets.dtype == np.int64
        assert np.shares_memory(values, history.values.to_numpy())  # the values buffer, in place
    check_rows(out, sig, K)
    assert out.column("topk_ids").num_chunks == 2


def test_retrieve_arrow_bad_columns(table: tuple[Path, np.ndarray]) -> None:
    """Issue 21.3: each error names the argument (history_col, target_col, batch, k), never a bare KeyError."""
    _, sig = table
    missing = r"history_col = 'history' is not a column of batch \(columns: hist, target\)"
    with pytest.raises(ValueError, match=missing):
        edask.retrieve_arrow(pa.table({"hist": [[1]], "target": [1]}), sig, K)
    with pytest.raises(ValueError, match="target_col = 'item' is not a column of batch"):
        edask.retrieve_arrow(pa.table({"history": [[1]], "target": [1]}), sig, K, target_col="item")
    with pytest.raises(TypeError, match=r"history_col must be a str \(a column name\), got int 3"):
        edask.retrieve_arrow(pa.table({"history": [[1]], "target": [1]}), sig, K, history_col=3)  # type: ignore
    with pytest.raises(er.DTypeError, match="history_col = 'history' must name a list of integer item ids"):
        edask.retrieve_arrow(pa.table({"history": [[1.0]], "target": [1]}), sig, K)
    with pytest.raises(er.DTypeError, match="target_col = 'target' must name a column of integer item ids"):
        edask.retrieve_arrow(pa.table({"history": [[1]], "target": ["a"]}), sig, K)
    with pytest.raises(ValueError, match="batch already has column"):
        edask.retrieve_arrow(pa.table({"history": [[1]], "target": [1], "error": ["x"]}), sig, K)
    with pytest.raises(ValueError, match="k must be >= 0"):
        edask.retrieve_arrow(pa.table({"history": [[1]], "target": [1]}), sig, -1)
    twice = pa.Table.from_arrays([pa.array([[1]]), pa.array([[2]]), pa.array([1])], ["history", "history", "target"])
    with pytest.raises(ValueError, match="history_col = 'history' names 2 columns of batch"):
        edask.retrieve_arrow(twice, sig, K)
    with pytest.raises(TypeError, match="batch must be a pyarrow.Table or pyarrow.RecordBatch, got dict"):
        edask.retrieve_arrow({"history": [[1]], "target": [1]}, sig, K)  # type: ignore[arg-type]


def test_retrieve_arrow_takes_a_table_or_its_signatures(table: tuple[Path, np.ndarray]) -> None:
    """Issue 21.3: a SignatureTable and any uint64 array-like are accepted; other signatures are named."""
    path, sig = table
    rows = pa.table({"history": [[1, 2, 3, 4], [], [7]], "target": [5, 6, 7]})
    want = edask.retrieve_arrow(rows, sig, K)
    loaded = er.SignatureTable.load(path)
    for accepted in (loaded, loaded.signatures, np.asfortranarray(sig), sig.astype(">u8"), ref_readonly(sig)):
        assert edask.retrieve_arrow(rows, accepted, K).equals(want)
    for bad, message in (
        (sig.tolist(), r"signatures must hold packed signatures of dtype uint64, got dtype .*a Python list"),
        (sig.astype(np.int64), "signatures must hold packed signatures of dtype uint64, got dtype int64"),
        (sig[:, 0], r"signatures must have shape \(N, W\), got shape \(300,\)"),
        (sig[None], r"signatures must have shape \(N, W\), got shape \(1, 300, 2\)"),
        (np.zeros((3, 0), dtype=np.uint64), "signatures must have 1..16 signature words"),
        (None, "signatures must hold packed signatures"),
    ):
        with pytest.raises((TypeError, ValueError), match=message):
            edask.retrieve_arrow(rows, bad, K)


def test_retrieve_arrow_on_an_empty_table() -> None:
    """Found by tests/test_fuzz_tables.py: with N = 0 every row gets its error, no IndexError."""
    rows = pa.table({"history": [[0], []], "target": [0, 0]})
    out = edask.retrieve_arrow(rows, np.zeros((0, 1), dtype=np.uint64), K)
    assert out.column("error").to_pylist() == ["target = 0 is outside the table rows [0, 0)",
                                               "target = 0 is outside the table rows [0, 0)"]
    assert out.column("topk_ids").to_pylist() == [None, None]


def ref_readonly(a: np.ndarray) -> np.ndarray:
    out = a.copy()
    out.flags.writeable = False
    return out


def test_retrieve_arrow_k_bound_as_the_numpy_api(table: tuple[Path, np.ndarray]) -> None:
    """Issue 21.3: k = 10**12 answers (rows hold at most their history) instead of a MemoryError; k above
    MAX_K (the NumPy API's bound) is the same ValueError."""
    _, sig = table
    rows = pa.table({"history": [[1, 2, 3, 4], [], [7, 7]], "target": [5, 6, 7]})
    assert edask.retrieve_arrow(rows, sig, 10**12).equals(edask.retrieve_arrow(rows, sig, 4))
    for k in (2**61, 2**70):
        with pytest.raises(ValueError, match="k must be at most") as numpy_api:
            er.topk_hamming_lookup(sig[:1], np.zeros((1, 2), dtype=np.int64), sig, k)
        with pytest.raises(ValueError, match="k must be at most") as offline:
            edask.retrieve_arrow(rows, sig, k)
        assert str(offline.value) == str(numpy_api.value)
    with pytest.raises(TypeError, match="k must be an integer, got float 2.5"):
        edask.retrieve_arrow(rows, sig, 2.5)  # type: ignore[arg-type]


# --------------------------------------------------------------------------- retrieve_parquet on a cluster


def test_parquet_on_two_workers_then_resume(table: tuple[Path, np.ndarray], dataset: Path, tmp_path: Path,
                                            cluster: object) -> None:
    path, sig = table
    out = tmp_path / "out"
    summary = edask.retrieve_parquet(dataset, path, out, K, client=cluster, progress=False, batch_rows=32)
    assert (summary.partitions, summary.skipped, summary.rows, summary.errors) == (4, 0, 190, 6)
    parts = sorted(p.name for p in out.glob("part-*.parquet"))
    assert parts == [f"part-{i:05d}-0000.parquet" for i in range(4)]
    for i, name in enumerate(["a", "b", "c", "d"]):  # part i holds input file i, rows in order
        got = pq.read_table(out / parts[i])
        source = pq.read_table(dataset / f"{name}.parquet")
        assert got.num_rows == source.num_rows
        assert got.select(source.column_names).equals(source)
        check_rows(got, sig, K)
    assert pq.read_table(out).num_rows == 190  # the markers and the job file are not data
    assert not list(out.glob(".*"))  # no temporary files left

    stamps = {p: p.stat().st_mtime_ns for p in out.glob("part-*.parquet")}
    again = edask.retrieve_parquet(dataset, path, out, K, client=cluster, progress=False)
    assert (again.skipped, again.rows, again.errors) == (4, 190, 6)
    assert {p: p.stat().st_mtime_ns for p in out.glob("part-*.parquet")} == stamps

    (out / "_done" / "part-00002-0000.json").unlink()  # as if the job had died before part 2 finished
    (out / "part-00002-0000.parquet").write_bytes(b"half a file")
    resumed = edask.retrieve_parquet(dataset, path, out, K, client=cluster, progress=False)
    assert (resumed.skipped, resumed.rows) == (3, 190)
    check_rows(pq.read_table(out / "part-00002-0000.parquet"), sig, K)
    redone = "part-00002-0000.parquet"
    assert {p: p.stat().st_mtime_ns for p in out.glob("part-*.parquet") if p.name != redone} == {
        p: t for p, t in stamps.items() if p.name != redone
    }

    with pytest.raises(ValueError, match="holds parts of another job"):
        edask.retrieve_parquet(dataset, path, out, K + 1, client=cluster, progress=False)
    with pytest.raises(ValueError, match="holds parts of another job"):
        edask.retrieve_parquet(dataset, path, out, K, client=cluster, progress=False, rows_per_part=10)


def test_large_files_split_into_parts(table: tuple[Path, np.ndarray], dataset: Path, tmp_path: Path,
                                      cluster: object) -> None:
    """a.parquet has row groups of 50, 50 and 20 rows: parts of >= 60 rows are groups [0, 2) and [2, 3)."""
    out = tmp_path / "out"
    summary = edask.retrieve_parquet(dataset / "a.parquet", table[0], out, K, client=cluster, progress=False,
                                     rows_per_part=60, batch_rows=7)
    assert (summary.partitions, summary.rows) == (2, 120)
    names = sorted(p.name for p in out.glob("part-*.parquet"))
    assert names == ["part-00000-0000.parquet", "part-00000-0001.parquet"]
    assert [pq.read_metadata(out / n).num_rows for n in names] == [100, 20]
    got = pq.read_table(out)
    source = pq.read_table(dataset / "a.parquet")
    assert got.select(source.column_names).equals(source)
    check_rows(got, table[1], K)


def test_progress_lines(table: tuple[Path, np.ndarray], dataset: Path, tmp_path: Path, cluster: object,
                        capsys: pytest.CaptureFixture[str]) -> None:
    edask.retrieve_parquet(dataset / "a.parquet", table[0], tmp_path / "out", 2, client=cluster)
    assert "part-00000-0000 done (120 rows, 0 errors) [1/1" in capsys.readouterr().err


def test_any_cluster_by_scheduler_address(table: tuple[Path, np.ndarray], dataset: Path, tmp_path: Path,
                                          cluster: object) -> None:
    address = cluster.scheduler.address  # type: ignore[attr-defined]
    summary = edask.retrieve_parquet(dataset / "c.parquet", table[0], tmp_path / "out", K, scheduler=address,
                                     progress=False)
    assert (summary.partitions, summary.rows) == (1, 30)
    check_rows(pq.read_table(tmp_path / "out"), table[1], K)
    with pytest.raises(ValueError, match="either client or scheduler"):
        edask.retrieve_parquet(dataset, table[0], tmp_path / "out", K, scheduler=address, client=cluster)


def test_one_worker_runs_in_this_process(table: tuple[Path, np.ndarray], dataset: Path, tmp_path: Path,
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """workers=1 starts no cluster: the parts run here, with the same output as on a cluster."""
    import distributed

    def no_cluster(*args: object, **kwargs: object) -> None:
        raise AssertionError("a cluster was started")

    monkeypatch.setattr(distributed, "LocalCluster", no_cluster)
    path, sig = table
    summary = edask.retrieve_parquet(dataset, path, tmp_path / "out", K, workers=1, progress=False, batch_rows=16)
    assert (summary.partitions, summary.skipped, summary.rows, summary.errors) == (4, 0, 190, 6)
    for i, name in enumerate(["a", "b", "c", "d"]):
        got = pq.read_table(tmp_path / "out" / f"part-{i:05d}-0000.parquet")
        assert got.select(pq.read_table(dataset / f"{name}.parquet").column_names).num_rows == got.num_rows
        check_rows(got, sig, K)
    again = edask.retrieve_parquet(dataset, sig, tmp_path / "out2", K, workers=1, progress=False)
    assert pq.read_table(tmp_path / "out2").equals(pq.read_table(tmp_path / "out"))
    with pytest.raises(AssertionError, match="a cluster was started"):
        edask.retrieve_parquet(dataset, path, tmp_path / "out3", K, workers=2, progress=False)
    assert again.rows == 190


def test_parquet_errors(table: tuple[Path, np.ndarray], dataset: Path, tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="neither a Parquet file nor a directory"):
        edask.retrieve_parquet(tmp_path / "missing", table[0], tmp_path / "out", K)
    with pytest.raises(FileNotFoundError, match="holds no"):
        edask.retrieve_parquet(tmp_path, table[0], tmp_path / "out", K)
    with pytest.raises(er.TableFileError, match="holds no saved SignatureTable"):
        edask.retrieve_parquet(dataset, tmp_path, tmp_path / "out", K)
    with pytest.raises(ValueError, match="history_col = 'items' is not a column of the input"):
        edask.retrieve_parquet(dataset, table[0], tmp_path / "out", K, history_col="items")
    with pytest.raises(er.DTypeError, match="table must hold packed signatures of dtype uint64, got dtype int64"):
        edask.retrieve_parquet(dataset, table[1].astype(np.int64), tmp_path / "out", K)
    np.save(tmp_path / "floats.npy", np.zeros((3, 1)))
    with pytest.raises(er.DTypeError, match="table must hold packed signatures of dtype uint64, got dtype float64"):
        edask.retrieve_parquet(dataset, tmp_path / "floats.npy", tmp_path / "out", K)
    (tmp_path / "junk.npy").write_bytes(b"junk")
    with pytest.raises(ValueError, match="junk.npy' is neither a table directory nor a readable .npy file"):
        edask.retrieve_parquet(dataset, tmp_path / "junk.npy", tmp_path / "out", K)


def test_parquet_refuses_a_damaged_table_before_any_task(table: tuple[Path, np.ndarray], dataset: Path,
                                                         tmp_path: Path) -> None:
    _, sig = table
    weight = np.random.default_rng(0).standard_normal((N, DIM)).astype(np.float32)
    er.SignatureTable(weight, er.SimHasher(DIM, BITS, seed=2)).save(tmp_path / "t")
    raw = bytearray((tmp_path / "t" / "signatures.npy").read_bytes())
    raw[-5] ^= 0x04
    (tmp_path / "t" / "signatures.npy").write_bytes(bytes(raw))
    with pytest.raises(er.TableFileError, match="does not match its checksums"):
        edask.retrieve_parquet(dataset, tmp_path / "t", tmp_path / "out", K)
    assert not (tmp_path / "out").exists()


def test_parquet_takes_a_table_its_signatures_or_a_npy_file(table: tuple[Path, np.ndarray], dataset: Path,
                                                            tmp_path: Path, cluster: object) -> None:
    path, sig = table
    np.save(tmp_path / "sig.npy", sig)
    source: object
    for i, source in enumerate((er.SignatureTable.load(path), sig, tmp_path / "sig.npy")):
        out = tmp_path / f"out{i}"
        summary = edask.retrieve_parquet(dataset, source, out, K, client=cluster, progress=False)
        assert (summary.rows, summary.errors) == (190, 6)
        check_rows(pq.read_table(out), sig, K)
    other = sig.copy()
    other[0, 0] ^= np.uint64(1)
    with pytest.raises(ValueError, match="holds parts of another job"):  # the job is tied to the table's content
        edask.retrieve_parquet(dataset, other, tmp_path / "out1", K, client=cluster, progress=False)


def test_each_process_opens_the_table_once(table: tuple[Path, np.ndarray]) -> None:
    first = edask._open_table(str(table[0]))
    assert edask._open_table(str(table[0])) is first
    assert not first.flags.writeable  # memory-mapped read-only
    with pytest.raises(ValueError, match="was saved again while the job ran"):
        edask._load_signatures(str(table[0]), digest="0" * 64)


def test_command_line_with_worker_processes(table: tuple[Path, np.ndarray], dataset: Path, tmp_path: Path) -> None:
    """python -m etaretrieval.offline on a local cluster of 2 worker processes, then the re-run."""
    command = [sys.executable, "-m", "etaretrieval.offline", "--input", str(dataset), "--table", str(table[0]),
               "--output", str(tmp_path / "out"), "--k", str(K), "--workers", "2"]
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    done = subprocess.run(command, check=False, capture_output=True, text=True, timeout=300, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "190 rows in 4 parts (0 already done), 6 rows with errors" in done.stdout
    assert "part-00001-0000 done (40 rows, 6 errors)" in done.stderr
    check_rows(pq.read_table(tmp_path / "out"), table[1], K)
    rerun = subprocess.run(command, check=False, capture_output=True, text=True, timeout=300, env=env)
    assert rerun.returncode == 0 and "(4 already done)" in rerun.stdout
    assert json.loads((tmp_path / "out" / "_job.json").read_text())["k"] == K
    bad = subprocess.run(command[:-4] + ["--k", "-1"], check=False, capture_output=True, text=True, timeout=300,
                         env=env)
    assert bad.returncode == 1 and "k must be >= 0" in bad.stderr


def test_one_worker_command_imports_no_cluster_nor_pandas(table: tuple[Path, np.ndarray], dataset: Path,
                                                          tmp_path: Path) -> None:
    """The one-worker command starts without dask.distributed, pandas or torch (seconds of imports), bad rows too.

    Its Arrow buffers come from jemalloc where pyarrow has it, unless ARROW_DEFAULT_MEMORY_POOL names a pool.
    """
    script = (
        "import sys\nimport pyarrow as pa\nfrom etaretrieval.offline import main\n"
        f"status = main(['--input', {str(dataset)!r}, '--table', {str(table[0])!r}, '--output', "
        f"sys.argv[1], '--k', '{K}', '--workers', '1', '--quiet'])\n"
        "print(status, sorted(m for m in ('distributed', 'dask', 'pandas', 'torch') if m in sys.modules))\n"
        "print(pa.default_memory_pool().backend_name)\n"
    )
    try:
        pa.jemalloc_memory_pool()
        pool = "jemalloc"
    except NotImplementedError:
        pool = pa.default_memory_pool().backend_name
    env = {k: v for k, v in os.environ.items() if k != "ARROW_DEFAULT_MEMORY_POOL"}
    for out, chosen, want in (("out", None, pool), ("out-system", "system", "system")):
        run_env = env if chosen is None else {**env, "ARROW_DEFAULT_MEMORY_POOL": chosen}
        done = subprocess.run([sys.executable, "-c", script, str(tmp_path / out)], check=True, capture_output=True,
                              text=True, timeout=300, env=run_env)
        assert done.stdout.splitlines()[-2:] == ["0 []", want], done.stdout
        check_rows(pq.read_table(tmp_path / out), table[1], K)


def test_parts_keep_the_input_rows_in_order_over_many_batches(table: tuple[Path, np.ndarray], dataset: Path,
                                                              tmp_path: Path) -> None:
    """Many batches a part: each part holds its input's rows, in order, and nothing else."""
    path, sig = table
    summary = edask.retrieve_parquet(dataset, path, tmp_path / "out", K, workers=1, progress=False, batch_rows=7)
    assert (summary.rows, summary.errors) == (190, 6)
    for i, name in enumerate(["a", "b", "c", "d"]):
        source = pq.read_table(dataset / f"{name}.parquet")
        got = pq.read_table(tmp_path / "out" / f"part-{i:05d}-0000.parquet")
        assert got.column_names == source.column_names + list(edask.OUTPUT_COLUMNS)
        assert got.select(source.column_names).equals(source)
        check_rows(got, sig, K)
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["_done", "_job.json"] + [
        f"part-{i:05d}-0000.parquet" for i in range(4)]


def test_a_failing_batch_leaves_no_part_and_no_marker(table: tuple[Path, np.ndarray], dataset: Path,
                                                      tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []
    retrieve = edask._Task.retrieve

    def third_fails(self: edask._Task, batch: pa.RecordBatch, signatures: np.ndarray) -> pa.Table:
        calls.append(len(batch))
        if len(calls) == 3:
            raise OSError("disk gone")
        return retrieve(self, batch, signatures)

    monkeypatch.setattr(edask._Task, "retrieve", third_fails)
    with pytest.raises(OSError, match="disk gone"):
        edask.retrieve_parquet(dataset / "a.parquet", table[0], tmp_path / "out", K, workers=1, progress=False,
                               batch_rows=20)
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["_done", "_job.json"]
    assert not list((tmp_path / "out" / "_done").iterdir())


def test_output_compression_and_dictionary(table: tuple[Path, np.ndarray], dataset: Path, tmp_path: Path) -> None:
    """compression= changes the codec, not the rows; the ids of a table past one dictionary page are plain."""
    path, sig = table
    edask.retrieve_parquet(dataset, path, tmp_path / "snappy", K, workers=1, progress=False)
    want = pq.read_table(tmp_path / "snappy")
    for codec, written in (("none", "UNCOMPRESSED"), ("zstd", "ZSTD")):
        edask.retrieve_parquet(dataset, path, tmp_path / codec, K, workers=1, progress=False, compression=codec)
        assert pq.read_table(tmp_path / codec).equals(want)
        meta = pq.ParquetFile(tmp_path / codec / "part-00000-0000.parquet").metadata
        assert {meta.row_group(0).column(c).compression for c in range(meta.num_columns)} == {written}
    with pytest.raises(ValueError, match="compression must be one of 'snappy', .*, got 'lzo'"):
        edask.retrieve_parquet(dataset, path, tmp_path / "bad", K, compression="lzo")

    def encodings(out: Path) -> dict[str, set[str]]:
        meta = pq.ParquetFile(out / "part-00000-0000.parquet").metadata
        group = meta.row_group(0)
        return {group.column(c).path_in_schema.split(".")[0]: set(group.column(c).encodings)
                for c in range(meta.num_columns)}

    small = encodings(tmp_path / "snappy")
    assert all("RLE_DICTIONARY" in small[name] for name in ("history", "target", "topk_ids", "topk_pos"))
    big = np.zeros((edask._DICTIONARY_IDS + 1, sig.shape[1]), dtype=np.uint64)
    big[: len(sig)] = sig
    np.save(tmp_path / "big.npy", big)
    edask.retrieve_parquet(dataset, tmp_path / "big.npy", tmp_path / "big", K, workers=1, progress=False)
    large = encodings(tmp_path / "big")
    assert not any("RLE_DICTIONARY" in large[name] for name in ("history", "target", "topk_ids"))
    assert all("RLE_DICTIONARY" in large[name] for name in ("request", "topk_pos", "topk_dist"))
    for i, name in enumerate(["a", "b"]):
        got = pq.read_table(tmp_path / "big" / f"part-{i:05d}-0000.parquet")
        assert got.equals(edask.retrieve_arrow(pq.read_table(dataset / f"{name}.parquet"), big, K))


def test_command_line_compression_choices(tmp_path: Path) -> None:
    from etaretrieval.offline import _parser

    choices = next(a.choices for a in _parser()._actions if a.dest == "compression")
    assert tuple(choices) == edask.COMPRESSIONS
    with pytest.raises(SystemExit) as exit_:
        _parser().parse_args(["--input", "i", "--table", "t", "--output", "o", "--k", "3", "--compression", "lzo"])
    assert exit_.value.code == 2
