"""``python -m etaretrieval.bench.ragged``: ragged lookups (values + offsets) against padded rows, one run.

Three ways to retrieve the same rows, timed in interleaved rounds on the same
data: the ragged lookup (:func:`etaretrieval.ragged.topk_hamming_lookup_ragged`
on flat ids and offsets), the padded lookup with ``lengths`` (rows padded to
the longest, only each prefix scanned) and the padded lookup without
``lengths`` (every ``B x L_max`` position scanned, the padding skipped by
``padding_id``). Three batches: *uniform* lengths (``0..400``), *skewed*
lengths (log-normal, median 200, one row of 10,000) and *long*: rows of 700
and one of ``10^5`` (int32 ids), whose long row is cut into pieces that the
threads share (``--threads`` sets how many). A last part measures
the peak memory, in a fresh process each, of a batch with one row of
``10^5`` behaviours and rows of 100, ragged and padded, at B = 256 and 1,024.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from .. import threads, topk_hamming_lookup
from ..ragged import topk_hamming_lookup_ragged

__all__ = ["RaggedBatch", "ragged_batch", "lengths_for", "time_batch", "peak_memory", "main"]

PAD = -1  # the padding id of the padded batches (outside every table)


class RaggedBatch:
    """One batch three ways: ``query``, flat ``ids`` + ``offsets``, and padded ``padded`` + ``lengths``."""

    def __init__(self, query: np.ndarray, ids: np.ndarray, offsets: np.ndarray, table: np.ndarray, k: int) -> None:
        self.query, self.ids, self.offsets, self.table, self.k = query, ids, offsets, table, k
        self.lengths = np.diff(offsets)

    @functools.cached_property
    def padded(self) -> np.ndarray:
        """The rows padded with :data:`PAD` (made on first use)."""
        return pad(self.ids, self.offsets)

    def ragged(self) -> Any:
        return topk_hamming_lookup_ragged(self.query, self.ids, self.table, self.k, self.offsets)

    def with_lengths(self) -> Any:
        return topk_hamming_lookup(self.query, self.padded, self.table, self.k, lengths=self.lengths)

    def without_lengths(self) -> Any:
        return topk_hamming_lookup(self.query, self.padded, self.table, self.k, padding_id=PAD)


def pad(ids: np.ndarray, offsets: np.ndarray) -> np.ndarray:
    """Rows of flat ``ids`` padded with :data:`PAD` to the longest: ``(B, L_max)`` (the usual NumPy way)."""
    lengths = np.diff(offsets)
    width = int(lengths.max()) if lengths.size else 0
    out = np.full((lengths.size, width), PAD, dtype=ids.dtype)
    out[np.arange(width) < lengths[:, None]] = ids[offsets[0] : offsets[-1]]
    return out


def lengths_for(kind: str, batch: int, rng: np.random.Generator) -> np.ndarray:
    """Row lengths: ``uniform`` (``0..400``), ``skewed`` (log-normal, median 200, sigma 1, one row of 10,000),
    ``long`` (rows of 700 and one of 100,000 in the middle: enough work for the library's threads)."""
    if kind == "uniform":
        return rng.integers(0, 401, size=batch)
    if kind == "skewed":
        lens = np.minimum(np.round(rng.lognormal(np.log(200), 1.0, size=batch)), 10_000).astype(np.int64)
        lens[rng.integers(batch)] = 10_000
        return lens
    if kind == "long":
        lens = np.full(batch, 700)
        lens[batch // 2] = 100_000
        return lens
    raise ValueError(f"kind must be 'uniform', 'skewed' or 'long', got {kind!r}")


def ragged_batch(lengths: np.ndarray, rows: int = 1_000_000, bits: int = 64, k: int = 32, seed: int = 0,
                 dtype: type = np.int64) -> RaggedBatch:
    """Random signatures, a table of ``rows`` rows and ragged ids (of ``dtype``) of the given row ``lengths``."""
    rng = np.random.default_rng(seed)
    words = (bits + 63) // 64
    table = rng.integers(0, 2**64, size=(rows, words), dtype=np.uint64, endpoint=False)
    query = rng.integers(0, 2**64, size=(lengths.size, words), dtype=np.uint64, endpoint=False)
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    ids: np.ndarray = rng.integers(0, rows, size=int(offsets[-1])).astype(dtype)
    return RaggedBatch(query, ids, offsets, table, k)


def time_batch(batch: RaggedBatch, repeat: int) -> dict[str, tuple[float, float]]:
    """``(median, best)`` seconds per call of each way, in ``repeat`` rotating rounds (after a checked call each).

    The best of the rounds is the steadier figure on a busy machine.
    """
    ways: dict[str, Callable[[], Any]] = {
        "ragged": batch.ragged, "padded + lengths": batch.with_lengths, "padded, no lengths": batch.without_lengths,
    }
    first = [way() for way in ways.values()]
    for idx, dist in first[1:]:  # the same rows: the same result
        if not (np.array_equal(idx, first[0][0]) and np.array_equal(dist, first[0][1])):
            raise AssertionError("ragged and padded results differ")
    times: dict[str, list[float]] = {name: [] for name in ways}
    names = list(ways)
    for r in range(repeat):  # each round starts with the next way: none always follows the cache-flushing one
        for name in names[r % len(names):] + names[: r % len(names)]:
            start = time.perf_counter()
            ways[name]()
            times[name].append(time.perf_counter() - start)
    return {name: (statistics.median(t), min(t)) for name, t in times.items()}


_MEMORY = """
import sys, numpy as np
from etaretrieval.bench.ragged import pad
from etaretrieval import config, threads, topk_hamming_lookup
from etaretrieval.cpu import ragged
from etaretrieval.ragged import topk_hamming_lookup_ragged
mode, batch = sys.argv[1], int(sys.argv[2])
rng = np.random.default_rng(0)
table = rng.integers(0, 2**64, size=(1_000, 1), dtype=np.uint64)
query = rng.integers(0, 2**64, size=(batch, 1), dtype=np.uint64)
topk_hamming_lookup(query[:2], np.array([[1, 2, 3], [3, 2, 1]]), table, 2, lengths=[3, 1])
old = ragged.MIN_PIECE, config.SERIAL_WORK  # compile (or load) every kernel before measuring, a cut row too
ragged.MIN_PIECE, config.SERIAL_WORK = 1, 0
with threads(2):
    topk_hamming_lookup_ragged(query[:2], np.array([1, 2, 3, 3]), table, 2, [0, 3, 4])
ragged.MIN_PIECE, config.SERIAL_WORK = old


def status(field):
    for line in open("/proc/self/status"):
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024


before = status("VmRSS")
with open("/proc/self/clear_refs", "w") as f:  # the peak (VmHWM) starts again from the current RSS
    f.write("5")
lengths = np.full(batch, 100)
lengths[batch // 2] = 100_000
offsets = np.concatenate([[0], np.cumsum(lengths)])
ids = rng.integers(0, 1_000, size=int(offsets[-1]))
if mode == "padded":
    topk_hamming_lookup(query, pad(ids, offsets), table, 32, lengths=lengths)
else:
    topk_hamming_lookup_ragged(query, ids, table, 32, offsets)
print(status("VmHWM") - before)
"""


def peak_memory(mode: str, batch: int) -> int:
    """Bytes the peak RSS grows by in a fresh process: the ids of rows of 100 plus one of ``10^5``, and one call.

    Linux only: the peak is reset (``/proc/self/clear_refs``) after the
    kernels are loaded, and read from ``/proc/self/status``.

    ``mode`` ``"ragged"``: the flat ids and the ragged call; ``"padded"``: the
    flat ids padded (as a caller must) and the padded call with ``lengths``.
    A 1,000-row table, 64 bits, ``k = 32``.
    """
    out = subprocess.run([sys.executable, "-c", _MEMORY, mode, str(batch)], capture_output=True, text=True,
                         check=True)
    return int(out.stdout.split()[-1])


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark and print its tables (and, with ``--json``, the figures as JSON)."""
    p = argparse.ArgumentParser(prog="python -m etaretrieval.bench.ragged", description=__doc__)
    p.add_argument("--batch", type=int, default=256, help="rows per batch (default: 256)")
    p.add_argument("--rows", type=int, default=1_000_000, help="table rows (default: 10^6)")
    p.add_argument("--bits", type=int, default=64, help="signature bits (default: 64)")
    p.add_argument("--k", type=int, default=32, help="items retrieved (default: 32)")
    p.add_argument("--repeat", type=int, default=21, help="timed rounds (default: 21)")
    p.add_argument("--threads", type=int, default=None, help="etaretrieval threads (default: the library's)")
    p.add_argument("--no-memory", dest="memory", action="store_false", help="skip the peak-memory part")
    p.add_argument("--json", action="store_true", help="print the figures as one JSON object at the end")
    args = p.parse_args(argv)
    figures: dict[str, Any] = {}
    rng = np.random.default_rng(0)
    for kind in ("uniform", "skewed", "long"):
        batch = ragged_batch(lengths_for(kind, args.batch, rng), args.rows, args.bits, args.k,
                             dtype=np.int32 if kind == "long" else np.int64)
        with threads(args.threads) if args.threads else contextlib.nullcontext():
            t = time_batch(batch, args.repeat)
        lens = batch.lengths
        print(f"\n{kind}: B = {lens.size}, behaviours {int(lens.sum()):,} (median {int(np.median(lens))}, "
              f"longest {int(lens.max()):,}; padded {lens.size * int(lens.max()):,}), N = {args.rows:,}, "
              f"{args.bits} bits, k = {args.k}")
        median, best = t["ragged"]
        print(f"  {'':<20} {'median':>9}      {'x ragged':>8}  {'best':>9}      {'x ragged':>8}")
        for name, (m, b) in t.items():
            print(f"  {name:<20} {m * 1e3:9.3f} ms  {m / median:8.2f}  {b * 1e3:9.3f} ms  {b / best:8.2f}")
        figures[kind] = t
    if args.memory:
        print("\npeak memory of the ids and one call (fresh process; rows of 100 plus one of 10^5):")
        for b in (256, 1024):
            ragged, padded = peak_memory("ragged", b), peak_memory("padded", b)
            print(f"  B = {b}: ragged {ragged / 2**20:8.1f} MiB   padded {padded / 2**20:8.1f} MiB")
            figures[f"memory_{b}"] = {"ragged": ragged, "padded": padded}
    if args.json:
        print(json.dumps(figures))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
