"""``python -m etaretrieval.bench.offline``: the offline path against the in-memory padded API and the IO floor.

The same rows (default: 80,000 histories of ``0..500`` ids, uniform, into a
table of ``10^6`` 64-bit signatures, ``k = 32``) are retrieved three ways:

- ``padded``: :func:`etaretrieval.topk_hamming_lookup` on the rows padded to
  the longest, with ``lengths`` (the padded block is built beforehand and not
  timed): the baseline;
- ``retrieve_arrow``: :func:`etaretrieval.dask.retrieve_arrow` on an Arrow
  table of the rows (``list<int64>`` histories, ``int64`` targets);
- ``cli``: ``python -m etaretrieval.offline --workers 1`` on one Parquet file
  of the rows (Parquet in and out, the default ``snappy`` and
  ``--compression none``), timed from outside the command (its start,
  imports and writing included); the job alone is the ``seconds`` the
  command prints.

Against them, the parts no job can avoid, timed in the same rounds:
``start-up`` (a Python process importing :mod:`etaretrieval.dask`),
``parquet read`` (pyarrow reading the whole input, which the output keeps:
``ParquetFile.read``, the faster with and without memory-mapping; unlike
``read_table`` it does not import ``pyarrow.dataset``) and
``parquet write`` (pyarrow writing the command's output in one call, with
the job's writer options, per codec), both in fresh processes that
allocate as the command does, as the command's are. The ``IO floor`` is
read + write; the ``x floor`` of a job is that floor over its time, of a
command start-up + floor over its time.

The in-process ways run in one library thread (``etaretrieval.threads(1)``),
in interleaved rounds, their median taken; each is checked against the
baseline first. The commands and the floor's parts run ``--repeat`` rounds,
interleaved, each command into a fresh output directory. Figures are rows
per second and ratios to the baseline.
"""

from __future__ import annotations

import argparse
import functools
import importlib
import json
import multiprocessing
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .. import threads, topk_hamming_lookup

__all__ = ["OfflineRows", "offline_rows", "time_in_process", "time_jobs", "main"]


class OfflineRows:
    """The benchmark's rows: flat ``ids`` + ``offsets``, ``targets`` and the ``table``, padded on demand."""

    def __init__(self, ids: np.ndarray, offsets: np.ndarray, targets: np.ndarray, table: np.ndarray, k: int) -> None:
        self.ids, self.offsets, self.targets, self.table, self.k = ids, offsets, targets, table, k
        self.lengths = np.diff(offsets)

    def padded(self) -> np.ndarray:
        """The rows padded with 0 to the longest (a ``(B, L_max)`` int64 block)."""
        width = int(self.lengths.max()) if self.lengths.size else 0
        out = np.zeros((self.lengths.size, width), dtype=np.int64)
        out[np.arange(width) < self.lengths[:, None]] = self.ids
        return out

    def arrow(self) -> Any:
        """The rows as a ``pyarrow.Table``: ``history`` (list<int64>) and ``target`` (int64), no copy of the ids."""
        pa = importlib.import_module("pyarrow")
        history = pa.ListArray.from_arrays(pa.array(self.offsets.astype(np.int32)), pa.array(self.ids))
        return pa.table({"history": history, "target": pa.array(self.targets)})


def offline_rows(rows: int = 80_000, longest: int = 500, items: int = 1_000_000, k: int = 32, seed: int = 0
                 ) -> OfflineRows:
    """Random 64-bit signatures for ``items`` items and ``rows`` histories of ``0..longest`` uniform ids."""
    rng = np.random.default_rng(seed)
    table = rng.integers(0, 2**64, size=(items, 1), dtype=np.uint64, endpoint=False)
    lengths = rng.integers(0, longest + 1, size=rows)
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    ids = rng.integers(0, items, size=int(offsets[-1]), dtype=np.int64)
    targets = rng.integers(0, items, size=rows, dtype=np.int64)
    return OfflineRows(ids, offsets, targets, table, k)


def time_in_process(data: OfflineRows, repeat: int) -> dict[str, float]:
    """Median seconds of the padded baseline and of ``retrieve_arrow``, interleaved, in one library thread."""
    from ..dask import retrieve_arrow

    padded, query, arrow = data.padded(), data.table[data.targets], data.arrow()
    ways: dict[str, Callable[[], Any]] = {
        "padded": lambda: topk_hamming_lookup(query, padded, data.table, data.k, lengths=data.lengths),
        "retrieve_arrow": lambda: retrieve_arrow(arrow, data.table, data.k),
    }
    with threads(1):
        idx, _ = ways["padded"]()
        out = ways["retrieve_arrow"]()
        served = idx >= 0  # the same positions, row by row
        want = np.concatenate([[0], np.cumsum(served.sum(axis=1))])
        pos = out.column("topk_pos").combine_chunks()
        if not (np.array_equal(pos.offsets.to_numpy(), want) and np.array_equal(pos.values.to_numpy(), idx[served])):
            raise AssertionError("retrieve_arrow and the padded API differ")
        times: dict[str, list[float]] = {name: [] for name in ways}
        for _ in range(repeat):
            for name, way in ways.items():
                start = time.perf_counter()
                way()
                times[name].append(time.perf_counter() - start)
    return {name: statistics.median(t) for name, t in times.items()}


COMMANDS = {"cli": (), "cli, --compression none": ("--compression", "none")}


def _timed(run: Callable[[], Any]) -> float:
    start = time.perf_counter()
    run()
    return time.perf_counter() - start


def _write(task: Any, path: Path, table: Any) -> None:
    """Write ``table`` in one call with the job's writer options."""
    with task.writer(path, table.schema) as writer:
        writer.write_table(table)


def _command(data: OfflineRows, workdir: Path, output: Path, extra: Sequence[str]) -> tuple[float, float]:
    """Seconds of one ``python -m etaretrieval.offline --workers 1`` from outside, and of the job it reports."""
    command = [sys.executable, "-m", "etaretrieval.offline", "--input", str(workdir / "in"),
               "--table", str(workdir / "table.npy"), "--output", str(output), "--k", str(data.k),
               "--workers", "1", "--quiet", *extra]
    start = time.perf_counter()
    done = subprocess.run(command, check=True, capture_output=True, text=True)
    wall = time.perf_counter() - start
    return wall, float(re.findall(r"([0-9.]+) s$", done.stdout.strip())[0])


def _io_floor(source: str, output: str, dictionary_ids: bool, memory_map: bool) -> dict[str, float]:
    """Seconds to read ``source`` and to write the table at ``output`` again per codec (with the job's options).

    Run in a fresh process that allocates as the command does, since a
    process's first reads pay for memory it has not touched yet.
    """
    from ..dask import _Task
    from ..offline import _use_jemalloc

    _use_jemalloc()
    pq = importlib.import_module("pyarrow.parquet")
    seconds = {"parquet read": _timed(lambda: pq.ParquetFile(source, memory_map=memory_map).read())}
    written = pq.ParquetFile(output).read()
    for codec in ("snappy", "none"):
        task = _Task(str(Path(output).parent), None, 1, "history", "target", 65536, codec, dictionary_ids)
        copy = Path(output).parent / "copy.parquet"
        seconds[f"parquet write ({codec})"] = _timed(functools.partial(_write, task, copy, written))
    return seconds


def time_jobs(data: OfflineRows, repeat: int, workdir: Path) -> dict[str, float]:
    """Median seconds of the commands (``COMMANDS``), their jobs, the start-up and the IO floor's parts.

    Every round runs each command into a fresh directory, then times a
    Python start-up importing :mod:`etaretrieval.dask`, and, in two fresh
    processes allocating as the command does, pyarrow reading the input
    (with and without memory-mapping; the faster counts) and writing the
    first command's output in one call with the job's writer options, per
    codec (the faster process's write counts for each).
    """
    from ..dask import _DICTIONARY_IDS

    pq = importlib.import_module("pyarrow.parquet")
    (workdir / "in").mkdir()
    source = workdir / "in" / "rows.parquet"
    pq.write_table(data.arrow(), source)
    np.save(workdir / "table.npy", data.table)
    times: dict[str, list[float]] = {}
    kept = workdir / "kept" / "part.parquet"
    for i in range(repeat):
        for j, (name, extra) in enumerate(COMMANDS.items()):
            output = workdir / f"out-{i}-{j}"
            wall, job = _command(data, workdir, output, extra)
            times.setdefault(f"{name} (command)", []).append(wall)
            times.setdefault(f"{name} (job)", []).append(job)
            if not kept.exists():
                kept.parent.mkdir()
                pq.write_table(pq.read_table(output), kept)
            shutil.rmtree(output)
        startup = [sys.executable, "-c", "import etaretrieval.dask"]
        times.setdefault("start-up", []).append(_timed(functools.partial(subprocess.run, startup, check=True)))
        floors = []
        for memory_map in (False, True):
            with multiprocessing.get_context("spawn").Pool(1) as pool:
                floors.append(pool.apply(_io_floor, (str(source), str(kept), data.table.shape[0] <= _DICTIONARY_IDS,
                                                     memory_map)))
        for name in floors[0]:
            times.setdefault(name, []).append(min(floor[name] for floor in floors))
    seconds = {name: statistics.median(t) for name, t in times.items()}
    for codec in ("snappy", "none"):
        seconds[f"IO floor ({codec})"] = seconds["parquet read"] + seconds[f"parquet write ({codec})"]
    return seconds


def _floor(seconds: dict[str, float], name: str) -> float | None:
    """The floor of a command (start-up + IO floor) or of its job (IO floor), None for the other rows."""
    for command, codec in (("cli", "snappy"), ("cli, --compression none", "none")):
        if f"IO floor ({codec})" in seconds:
            if name == f"{command} (job)":
                return seconds[f"IO floor ({codec})"]
            if name == f"{command} (command)":
                return seconds["start-up"] + seconds[f"IO floor ({codec})"]
    return None


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark and print its table (and ``--json`` figures)."""
    p = argparse.ArgumentParser(prog="python -m etaretrieval.bench.offline", description=__doc__)
    p.add_argument("--rows", type=int, default=80_000)
    p.add_argument("--longest", type=int, default=500, help="history lengths are uniform in 0..longest")
    p.add_argument("--items", type=int, default=1_000_000, help="rows of the signature table")
    p.add_argument("--k", type=int, default=32)
    p.add_argument("--repeat", type=int, default=7, help="timed rounds (in process, and of the commands and floor)")
    p.add_argument("--no-cli", dest="cli", action="store_false", help="skip the command line")
    p.add_argument("--json", help="also write the figures to this file")
    args = p.parse_args(argv)
    data = offline_rows(args.rows, args.longest, args.items, args.k)
    seconds = time_in_process(data, args.repeat)
    if args.cli:
        with tempfile.TemporaryDirectory() as workdir:
            seconds.update(time_jobs(data, args.repeat, Path(workdir)))
    base = seconds["padded"]
    print(f"{args.rows} rows, lengths 0..{args.longest} ({data.ids.size} ids), {args.items} items, k = {args.k}")
    print(f"{'way':<34} {'seconds':>9} {'rows/s':>11} {'x padded':>9} {'x floor':>8}")
    for name, s in seconds.items():
        floor = _floor(seconds, name)
        vs_floor = f"{floor / s:>8.2f}" if floor else ""
        print(f"{name:<34} {s:>9.3f} {args.rows / s:>11.0f} {base / s:>9.2f} {vs_floor}")
    if args.json:
        Path(args.json).write_text(json.dumps({"rows": args.rows, "seconds": seconds}, indent=1), encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
