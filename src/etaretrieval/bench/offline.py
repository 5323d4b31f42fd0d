"""``python -m etaretrieval.bench.offline``: the offline path against the in-memory padded API, one run.

The same rows (default: 80,000 histories of ``0..500`` ids, uniform, into a
table of ``10^6`` 64-bit signatures, ``k = 32``) are retrieved three ways:

- ``padded``: :func:`etaretrieval.topk_hamming_lookup` on the rows padded to
  the longest, with ``lengths`` (the padded block is built beforehand and not
  timed): the baseline;
- ``retrieve_arrow``: :func:`etaretrieval.dask.retrieve_arrow` on an Arrow
  table of the rows (``list<int64>`` histories, ``int64`` targets);
- ``cli``: ``python -m etaretrieval.offline --workers 1`` on one Parquet file
  of the rows (Parquet in and out), timed from outside the command (its
  start, imports and writing included); the job alone is the ``seconds`` the
  command prints. For reference, pyarrow alone reading that input and
  writing the command's output (no retrieval) is timed too.

The in-process ways run in one library thread (``etaretrieval.threads(1)``),
in interleaved rounds, their median taken; each is checked against the
baseline first. The command runs ``--repeat`` times, each into a fresh
output directory. Figures are rows per second and ratios to the baseline.
"""

from __future__ import annotations

import argparse
import importlib
import json
import re
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

__all__ = ["OfflineRows", "offline_rows", "time_in_process", "time_command", "time_parquet", "main"]


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


def time_command(data: OfflineRows, repeat: int, workdir: Path) -> tuple[float, float]:
    """Median seconds of ``python -m etaretrieval.offline --workers 1`` from outside, and of the job it reports."""
    pq = importlib.import_module("pyarrow.parquet")
    (workdir / "in").mkdir()
    pq.write_table(data.arrow(), workdir / "in" / "rows.parquet")
    np.save(workdir / "table.npy", data.table)
    walls: list[float] = []
    jobs: list[float] = []
    for i in range(repeat):
        command = [sys.executable, "-m", "etaretrieval.offline", "--input", str(workdir / "in"),
                   "--table", str(workdir / "table.npy"), "--output", str(workdir / f"out{i}"),
                   "--k", str(data.k), "--workers", "1", "--quiet"]
        start = time.perf_counter()
        done = subprocess.run(command, check=True, capture_output=True, text=True)
        walls.append(time.perf_counter() - start)
        jobs.append(float(re.findall(r"([0-9.]+) s$", done.stdout.strip())[0]))
    return statistics.median(walls), statistics.median(jobs)


def time_parquet(workdir: Path, repeat: int) -> tuple[float, float]:
    """Median seconds to read the command's input and to write its output with pyarrow alone (no retrieval)."""
    pq = importlib.import_module("pyarrow.parquet")
    reads, writes = [], []
    for _ in range(repeat):
        start = time.perf_counter()
        pq.read_table(workdir / "in")
        reads.append(time.perf_counter() - start)
        out = pq.read_table(workdir / "out0")
        start = time.perf_counter()
        pq.write_table(out, workdir / "copy.parquet")
        writes.append(time.perf_counter() - start)
    return statistics.median(reads), statistics.median(writes)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark and print its table (and ``--json`` figures)."""
    p = argparse.ArgumentParser(prog="python -m etaretrieval.bench.offline", description=__doc__)
    p.add_argument("--rows", type=int, default=80_000)
    p.add_argument("--longest", type=int, default=500, help="history lengths are uniform in 0..longest")
    p.add_argument("--items", type=int, default=1_000_000, help="rows of the signature table")
    p.add_argument("--k", type=int, default=32)
    p.add_argument("--repeat", type=int, default=7, help="timed rounds (in process) and runs of the command")
    p.add_argument("--no-cli", dest="cli", action="store_false", help="skip the command line")
    p.add_argument("--json", help="also write the figures to this file")
    args = p.parse_args(argv)
    data = offline_rows(args.rows, args.longest, args.items, args.k)
    seconds = time_in_process(data, args.repeat)
    if args.cli:
        with tempfile.TemporaryDirectory() as workdir:
            seconds["cli (command)"], seconds["cli (job)"] = time_command(data, args.repeat, Path(workdir))
            seconds["parquet read only"], seconds["parquet write only"] = time_parquet(Path(workdir), args.repeat)
    base = seconds["padded"]
    print(f"{args.rows} rows, lengths 0..{args.longest} ({data.ids.size} ids), {args.items} items, k = {args.k}")
    print(f"{'way':<20} {'seconds':>9} {'rows/s':>11} {'x padded':>9}")
    for name, s in seconds.items():
        print(f"{name:<20} {s:>9.3f} {args.rows / s:>11.0f} {base / s:>9.2f}")
    if args.json:
        Path(args.json).write_text(json.dumps({"rows": args.rows, "seconds": seconds}, indent=1), encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
