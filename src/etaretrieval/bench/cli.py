"""``python -m etaretrieval.bench``: the side-by-side tables, the pack and cold-start checks, the sweeps."""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import importlib.util
import platform
from collections.abc import Sequence

import numba
import numpy as np

from .. import __version__, threads
from ..datasets import LOG_FORMATS
from . import sweep
from .coldstart import run_coldstart
from .pipeline import PipelineConfig, format_pipeline, run_pipeline, run_small_call
from .runner import CONFIGS, Config, Timing, format_table, make_data, run_config, run_pack, set_threads
from .trainstep import TrainStepConfig, format_train_step, run_train_step

__all__ = ["main", "parser"]

_SIZES = ("batch", "length", "rows", "dim", "bits", "k")


def parser() -> argparse.ArgumentParser:
    """The command-line parser.

    Returns
    -------
    argparse.ArgumentParser
        Its options override the sizes of the chosen configurations.
    """
    p = argparse.ArgumentParser(
        prog="python -m etaretrieval.bench",
        description="Time etaretrieval against the floor and the alternatives, side by side in one process "
        "on the same data. Behaviours/s counts target-behaviour pairs scored per second (B x L per call); "
        "'x floor' is the time ratio to the first row.",
    )
    p.add_argument("--config", choices=[*CONFIGS, "all"], default="all",
                   help="standard configuration(s) to run (default: all)")
    for size, what in zip(_SIZES, ("targets B", "sequence length L", "table rows N", "embedding dim d",
                                   "signature bits", "items retrieved k")):
        p.add_argument(f"--{size}", type=int, help=f"override {what}")
    p.add_argument("--shared", action=argparse.BooleanOptionalAction, default=None,
                   help="one sequence shared by all targets (default: per configuration)")
    p.add_argument("--threads", type=int, default=None,
                   help="threads for etaretrieval, torch and faiss (default: all cores for the tables; "
                        "--pipeline: the library's defaults, as a user gets them)")
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu", help="where etaretrieval runs")
    p.add_argument("--repeat", type=int, default=7, help="timed rounds per method (default: 7)")
    p.add_argument("--subset", type=int, default=16,
                   help="rows for the slow baselines with per-row sequences, scaled; 0 for all (default: 16)")
    p.add_argument("--seed", type=int, default=0, help="data seed")
    p.add_argument("--no-pack", dest="pack", action="store_false", help="skip pack_signatures vs matmul")
    p.add_argument("--no-coldstart", dest="coldstart", action="store_false",
                   help="skip first-call latency in fresh processes")
    p.add_argument("--sweep", action="store_true", help="sweep L, bits and table size (per-row sequences, B <= 64)")
    p.add_argument("--sweep-base", choices=list(CONFIGS), default="long",
                   help="configuration the sweeps start from (default: long)")
    p.add_argument("--plot", metavar="PATH", help="save the sweeps as a PNG (implies --sweep)")
    p.add_argument("--pipeline", action="store_true",
                   help="only the loops users run: serving requests, a training step, single-call latency; "
                        "idle and with every core busy")
    p.add_argument("--small-call", action="store_true",
                   help="only the small call (B=1, L=100, 64 bits, k=16) against the NumPy one-liner, idle")
    p.add_argument("--no-load", dest="load", action="store_false",
                   help="--pipeline without the busy background processes")
    p.add_argument("--train-step", action="store_true",
                   help="only the study's ETAModel training step on padded against ragged batches (ETA + time and "
                   "full attention + time; --batch: B, default 128; --length: the padded width L, default 736; "
                   "--repeat: rounds; --threads: torch's threads, default 1)")
    p.add_argument("--data", metavar="PATH", help="--train-step: an interaction log (default: synthetic data)")
    p.add_argument("--format", default="auto", choices=("auto", *LOG_FORMATS),
                   help="--train-step: format of --data (default: auto)")
    p.add_argument("--requests", type=int, default=PipelineConfig.requests,
                   help="--pipeline: requests (single calls) timed per measurement "
                        f"(default: {PipelineConfig.requests})")
    return p


def _config(name: str, args: argparse.Namespace) -> Config:
    """The standard configuration ``name`` with the command line's size overrides."""
    changes: dict[str, object] = {f: getattr(args, f) for f in _SIZES if getattr(args, f) is not None}
    if args.shared is not None:
        changes["shared"] = args.shared
    return dataclasses.replace(CONFIGS[name], **changes)  # type: ignore[arg-type]


def _environment(threads: int) -> str:
    """One line: the processor, the thread count and the libraries' versions."""
    libs = [f"etaretrieval {__version__}", f"numba {numba.__version__}", f"numpy {np.__version__}"]
    for mod in ("torch", "faiss"):
        if importlib.util.find_spec(mod) is not None:
            libs.append(f"{mod} {__import__(mod).__version__}")
    return f"{platform.processor() or platform.machine()}, {threads} threads ({', '.join(libs)})"


def _pack_table(rows: list[tuple[Timing, int]], n: int, dim: int, bits: int) -> str:
    """The :func:`run_pack` table, with ratios to both forms of the product."""
    head = f"{'method':<20}{'best ms':>10}{'median ms':>11}{'x (x @ planes)':>16}{'x (out=)':>10}{'peak extra MiB':>16}"
    lines = [f"pack_signatures vs its BLAS projection: x ({n}, {dim}) float32, {bits} bits", head]
    alloc, bare = rows[0][0].best, rows[1][0].best
    for t, peak in rows:
        lines.append(f"{t.name:<20}{t.best * 1e3:>10.1f}{t.median * 1e3:>11.1f}{t.best / alloc:>16.2f}"
                     f"{t.best / bare:>10.2f}{peak / 2**20:>16.1f}")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmarks and print the tables.

    Parameters
    ----------
    argv : sequence of str, optional
        Arguments (default: ``sys.argv[1:]``).

    Returns
    -------
    int
        Exit status.
    """
    args = parser().parse_args(argv)
    cores = int(numba.config.NUMBA_NUM_THREADS)
    if args.train_step:
        return _train_step(args)
    if args.small_call:
        print(_environment(1), flush=True)
        cfg = PipelineConfig(requests=args.requests)
        rows = run_small_call(cfg, np.random.default_rng(args.seed))
        print(format_pipeline(cfg, {"small call against NumPy (idle)": rows}), flush=True)
        return 0
    if args.pipeline:
        if args.threads is not None:
            set_threads(args.threads)
        print(_environment(args.threads or cores), flush=True)
        with threads(args.threads) if args.threads is not None else contextlib.nullcontext():
            cfg = PipelineConfig(requests=args.requests)
            print(format_pipeline(cfg, run_pipeline(cfg, load=args.load, seed=args.seed)), flush=True)
        return 0
    args.threads = args.threads or cores
    set_threads(args.threads)
    print(_environment(args.threads), flush=True)
    with threads(args.threads):
        return _tables(args)


def _train_step(args: argparse.Namespace) -> int:
    """The training step of the study's model on padded and ragged batches (``--train-step``)."""
    n = args.threads or 1
    set_threads(n)
    defaults = TrainStepConfig()
    cfg = TrainStepConfig(data=args.data, format=args.format, max_len=args.length or defaults.max_len,
                          batch_size=args.batch or defaults.batch_size, rounds=args.repeat, seed=args.seed)
    print(_environment(n), flush=True)
    with threads(n):
        rows, data_line = run_train_step(cfg)
    print(format_train_step(cfg, rows, data_line, n), flush=True)
    return 0


def _tables(args: argparse.Namespace) -> int:
    """The side-by-side tables, pack and cold-start checks and sweeps that ``args`` asks for."""
    names = list(CONFIGS) if args.config == "all" else [args.config]
    for cfg in (_config(name, args) for name in names):
        data = make_data(cfg, args.seed)
        timings = run_config(data, repeat=args.repeat, subset=args.subset, threads=args.threads, device=args.device)
        print("\n" + format_table(cfg, timings, f"[{args.device}]"), flush=True)
        if args.pack and args.device == "cpu":
            print("\n" + _pack_table(run_pack(data.embedding, data.planes), cfg.rows, cfg.dim, cfg.bits), flush=True)
    if args.coldstart:
        (cold_label, cold), (warm_label, warm) = run_coldstart()
        print(f"\nfirst calls in a fresh process, s: {cold_label} | {warm_label}")
        for step in cold:
            print(f"  {step:<40}{cold[step]:>9.3f}{warm.get(step, float('nan')):>9.3f}")
        print(f"  {'total':<40}{sum(cold.values()):>9.3f}{sum(warm.values()):>9.3f}")
    if args.sweep or args.plot:
        base = _config(args.sweep_base, args)
        base = dataclasses.replace(base, batch=min(base.batch, 64), shared=False)
        results = {}
        for field, values in sweep.SWEEPS.items():
            results[field] = sweep.run_sweep(base, field, values, repeat=max(1, args.repeat // 2))
            for value, timings in results[field]:
                print("\n" + format_table(dataclasses.replace(base, **{field: value}), timings, f"[sweep {field}]"))
        if args.plot:
            sweep.plot_sweeps(results, base, args.plot)
            print(f"\nsweep plot saved to {args.plot}")
    return 0
