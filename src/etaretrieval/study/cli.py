"""``python -m etaretrieval.study``: the ETA paper's comparison on one model with one block changed."""

from __future__ import annotations

import argparse
import dataclasses
import json
import platform
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Optional

import numpy as np

from .. import __version__, threads
from ..datasets import SequenceSamples, build_samples, make_sequence_ctr, read_log
from .blocktime import block_table, time_blocks
from .frontier import BLOCKS as FRONTIER_BLOCKS
from .frontier import (
    frontier_variants,
    k_values,
    load_runs,
    median_history,
    save_runs,
    time_rows,
    with_timings,
    write_report,
)
from .report import long_table, markdown_table, plot, summarize, to_rst
from .runner import RunResult, StudyConfig, run_variant, time_long_sequences
from .variants import variants

__all__ = ["main", "parser", "QUICK", "QUICK_KS"]

#: Overrides of ``--quick``: a smoke run of every row.
QUICK = dict(n_users=200, max_len=300, seeds=(0,), batch_size=64, long_batch=8, long_repeat=2)

#: The ``k`` of ``--quick --frontier`` (unless ``--ks`` is given).
QUICK_KS = "4,8"


def parser() -> argparse.ArgumentParser:
    """The command-line parser.

    Returns
    -------
    argparse.ArgumentParser
    """
    p = argparse.ArgumentParser(
        prog="python -m etaretrieval.study",
        description="Train the same long+short CTR model (etaretrieval.torch.ETAModel) with each long-term "
        "interest block (recent window, mean pooling, SIM hard, exact inner-product top-K, full attention, ETA, SDIM; "
        "with and without time information) over several seeds; report test AUC, logloss, train and inference "
        "time and the SimHash retrieval's recall, as a Markdown table and a plot. Default: built-in synthetic data.",
    )
    p.add_argument("--out", default="study_out", help="output directory (default: study_out)")
    p.add_argument("--quick", action="store_true", help="smoke run: small data, one seed, every row")
    p.add_argument("--seeds", type=int, help="number of seeds (default 3; 1 with --quick)")
    p.add_argument("--users", type=int, help="synthetic users (default 2000; 200 with --quick)")
    p.add_argument("--max-len", type=int, help="longest history L (default 2000; 300 with --quick)")
    p.add_argument("--epochs", type=int, help="training epochs (default 1)")
    p.add_argument("--batch-size", type=int, help="samples per step (default 128; 64 with --quick)")
    p.add_argument("--lr", type=float, help="Adam learning rate (default 0.003)")
    p.add_argument("--k", type=int, help="behaviours retrieved by the long-term block (default 32)")
    p.add_argument("--data", metavar="PATH", help="an interaction log instead of the synthetic data "
                   "(read with etaretrieval.datasets.read_log, samples from build_samples)")
    p.add_argument("--format", default="auto", help="format of --data (see etaretrieval.datasets.LOG_FORMATS; "
                   "default: auto)")
    p.add_argument("--negatives", type=int, default=1, help="sampled negatives per positive with --data (default 1)")
    p.add_argument("--steps", type=int, help="at most this many training steps per run (default: whole epochs)")
    p.add_argument("--test-samples", type=int,
                   help="evaluate on a fixed random subset of this many test samples (default: all)")
    p.add_argument("--only", action="append", metavar="TEXT",
                   help="run only the rows whose name contains TEXT (repeatable)")
    p.add_argument("--long-len", type=int, help="L of the inference timing (default 10000; 0 skips it)")
    p.add_argument("--long-batch", type=int, help="histories per batch of the inference timing (default 64)")
    p.add_argument("--threads", type=int,
                   help="torch's and etaretrieval's threads during the run (default: leave as they are)")
    p.add_argument("--ragged", action=argparse.BooleanOptionalAction, default=None,
                   help="train and evaluate on ragged batches (torch.nested jagged histories, values + offsets, "
                   "no padding) or on histories left-padded to --max-len (default: "
                   f"{'ragged' if StudyConfig.ragged else 'padded'})")
    f = p.add_argument_group("frontier", "--frontier: ETA, TWIN-style retrieval and full attention (all + time) over "
                             "k, with a validation split to pick k on; writes frontier.md/.png/.json to --out (a "
                             "rerun with the same settings and --out runs only the rows and seeds not yet there)")
    f.add_argument("--frontier", action="store_true", help="run the k / cost / quality frontier instead of the table")
    f.add_argument("--ks", default="16,32,64,128,256", help="comma-separated k values (default 16,32,64,128,256; "
                   "4,8 with --quick)")
    f.add_argument("--k-fracs", default="", help="comma-separated k values as fractions of the median history "
                   "length of the test samples, added to --ks (default none)")
    f.add_argument("--blocks", default=",".join(FRONTIER_BLOCKS),
                   help=f"comma-separated frontier blocks among {','.join(FRONTIER_BLOCKS)} (default all)")
    f.add_argument("--val-users", type=float, help="share of the training users held out for validation "
                   "(default 0.1 with --frontier, 0 otherwise)")
    p.add_argument("--block-timing", action="store_true",
                   help="only time one long-term block at a time at L = --long-len (B = --long-batch, k = --k): "
                   "forward + backward and inference of full attention, ETA (and its retrieval and attention "
                   "halves), TWIN; writes blocks.md to --out")
    f.add_argument("--timing-rounds", type=int, help="with --frontier: time every row in this many interleaved "
                   "rounds (one training step and one inference batch per row and round) and report those times "
                   "instead of the training runs' (default 10; 2 with --quick; 0: the training runs' medians)")
    f.add_argument("--report-only", action="store_true",
                   help="run nothing: write the report of the runs saved in --out and the --merge directories "
                   "(the rows of --blocks / --ks that have runs)")
    f.add_argument("--merge", action="append", default=[], metavar="DIR",
                   help="also take the runs saved in DIR/frontier.json by a frontier run of the same settings "
                   "(e.g. other blocks run in parallel; repeatable)")
    return p


def _config(args: argparse.Namespace) -> StudyConfig:
    changes: dict[str, object] = dict(QUICK) if args.quick else {}
    for arg, name in (("users", "n_users"), ("max_len", "max_len"), ("epochs", "epochs"),
                      ("batch_size", "batch_size"), ("lr", "lr"), ("k", "k"), ("steps", "max_steps"),
                      ("test_samples", "test_samples"), ("long_len", "long_len"),
                      ("long_batch", "long_batch"), ("val_users", "val_users"), ("ragged", "ragged")):
        if getattr(args, arg) is not None:
            changes[name] = getattr(args, arg)
    if args.frontier and args.val_users is None:
        changes["val_users"] = 0.1
    if not 0 <= float(changes.get("val_users", 0.0)) < 1:  # type: ignore[arg-type]
        raise SystemExit("--val-users must be in [0, 1)")
    if args.seeds is not None:
        if args.seeds < 1:
            raise SystemExit("--seeds must be >= 1")
        changes["seeds"] = tuple(range(args.seeds))
    return dataclasses.replace(StudyConfig(), **changes)  # type: ignore[arg-type]


def _layout(cfg: StudyConfig) -> str:
    """How the batches hold the histories, for the reports."""
    return "ragged (torch.nested jagged, no padding)" if cfg.ragged else "left-padded"


def _log(message: str) -> None:
    print(f"[study {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def _data(cfg: StudyConfig, args: argparse.Namespace) -> tuple[SequenceSamples, str]:
    if args.data is not None:
        log = read_log(args.data, args.format)
        data = build_samples(log, max_len=cfg.max_len, negatives=args.negatives, seed=cfg.data_seed)
        lengths = data.history_lengths()
        return data, (f"`{Path(args.data).name}` ({args.format}): {len(log):,} interactions, {data.n_users:,} users, "
                      f"{data.n_items:,} items, {data.n_categories} categories; {int(data.train.sum()):,} training / "
                      f"{int((~data.train).sum()):,} test samples (per-user time split, {args.negatives} sampled "
                      f"negative(s) per positive), histories of median {int(np.median(lengths))} and max "
                      f"{int(lengths.max())} behaviours (cut to the last {cfg.max_len})")
    data = make_sequence_ctr(cfg.n_users, cfg.max_len, min_len=cfg.min_len, seed=cfg.data_seed)
    lengths = np.diff(data.offsets)
    what = (f"synthetic (`make_sequence_ctr`, seed {cfg.data_seed}): {data.n_users} users, histories of "
            f"{lengths.min()}..{lengths.max()} behaviours, {data.n_items} items in {data.n_categories} categories, "
            f"{int(data.train.sum())} training / {int((~data.train).sum())} test samples (users split), "
            f"click rate {data.label.mean():.3f}")
    return data, what


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Run the study.

    Parameters
    ----------
    argv : sequence of str, optional
        Command-line arguments (default ``sys.argv[1:]``).

    Returns
    -------
    int
        Exit status.
    """
    args = parser().parse_args(argv)
    cfg = _config(args)
    import torch

    run = _frontier if args.frontier else _block_timing if args.block_timing else _run
    if args.threads is None:
        return run(args, cfg)
    # --threads bounds torch's pool and the library's threads for this run only: main() called
    # in-process (tests, notebooks) leaves its caller's settings as they were
    before = torch.get_num_threads()
    torch.set_num_threads(args.threads)
    try:
        with threads(args.threads):
            return run(args, cfg)
    finally:
        torch.set_num_threads(before)


def _run(args: argparse.Namespace, cfg: StudyConfig) -> int:
    """The study for parsed arguments: train every row, write the reports; returns the exit status."""
    import torch

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    data, data_line = _data(cfg, args)
    _log(data_line)
    rows = [v for v in variants(cfg.bits) if not args.only or any(t in v.name for t in args.only)]
    if data.categories is None:  # category match needs categories
        rows = [v for v in rows if not v.needs_categories]
    if not rows:
        raise SystemExit(f"--only {args.only} matches no row")
    results: list[RunResult] = []
    total = len(rows) * len(cfg.seeds)
    for variant in rows:
        for seed in cfg.seeds:
            head = f"[{len(results) + 1}/{total}] {variant.name} (seed {seed})"

            def progress(message: str, head: str = head) -> None:
                _log(f"{head}: {message}")

            result = run_variant(variant, data, cfg, seed, progress=progress)
            results.append(result)
            _log(f"{head}: test AUC {result.auc:.4f}, logloss "
                 f"{result.logloss:.4f}, {result.train_ms:.0f} ms/step, {result.seconds:.1f} s")
    summary = summarize(results)
    long_rows = []
    if cfg.long_len:
        _log(f"inference timing at L = {cfg.long_len} (B = {cfg.long_batch})")
        long_rows = time_long_sequences(cfg.long_len, cfg.long_batch, cfg, repeat=cfg.long_repeat)
    elapsed = time.perf_counter() - start
    torch_threads = torch.get_num_threads()
    text = [
        "# etaretrieval study: one long+short CTR model, one long-term block changed",
        "",
        f"- data: {data_line}",
        f"- model: `ETAModel`, dim {cfg.dim} (item + category embeddings), short-term block: target attention over "
        f"the last {cfg.recent} behaviours; long-term block: the row; k = {cfg.k}, {cfg.heads} heads, "
        f"MLP {list(cfg.hidden)}; histories up to L = {cfg.max_len}, {_layout(cfg)}",
        f"- training: Adam lr {cfg.lr}, batch {cfg.batch_size}, {cfg.epochs} epoch(s)"
        + (f" (at most {cfg.max_steps} steps)" if cfg.max_steps else "")
        + (f", evaluated on a fixed random {cfg.test_samples} test samples" if cfg.test_samples else "")
        + f"; seeds {list(cfg.seeds)} "
        f"(model initialisation, batch order, hyperplanes); mean ± std over seeds",
        f"- machine: {platform.processor() or platform.machine()}, "
        f"torch {torch.__version__} with {torch_threads} threads, "
        f"etaretrieval {__version__}; whole run {elapsed / 60:.1f} min",
        "- times: median per step / per test batch of the whole model (forward only at inference); every "
        "call embeds what the blocks read (the recent window; the whole history, except for ETA, which "
        "hashes the item table and looks the behaviours up by id when each item's category is known and "
        "the table has at most 2 B L rows), nothing is cached between calls",
        "",
        markdown_table(summary, cfg.k),
    ]
    if long_rows:
        text += ["", f"## Inference at L = {cfg.long_len:,} ({cfg.long_batch} histories per batch, one block, "
                 "untrained weights, median)", "", long_table(long_rows)]
    (out / "study.md").write_text("\n".join(text) + "\n", encoding="utf-8")
    rst = [to_rst(markdown_table(summary, cfg.k))] + ([to_rst(long_table(long_rows))] if long_rows else [])
    (out / "study_tables.rst").write_text("\n\n".join(rst) + "\n", encoding="utf-8")
    (out / "results.json").write_text(json.dumps({
        "config": dataclasses.asdict(cfg),
        "runs": [dataclasses.asdict(r) for r in results],
        "long": [dataclasses.asdict(r) for r in long_rows],
    }, indent=1), encoding="utf-8")
    plot(summary, out / "study.png", f"{data.n_users} users, L <= {cfg.max_len}, {len(cfg.seeds)} seed(s)")
    print("\n".join(text))
    _log(f"wrote study.md, study_tables.rst, study.png and results.json to {out} in {elapsed:.0f} s")
    return 0


def _numbers(text: str, kind: type, option: str) -> list:
    try:
        return [kind(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise SystemExit(f"{option} takes comma-separated numbers, got {text!r}") from None


def _frontier(args: argparse.Namespace, cfg: StudyConfig) -> int:
    """The k / cost / quality frontier: every block at every k and seed (skipping runs already saved in --out)."""
    import torch

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    data, data_line = _data(cfg, args)
    _log(data_line)
    median_len = median_history(data.history_lengths()[~data.train], cfg.max_len)
    ks_text = QUICK_KS if args.quick and args.ks == parser().get_default("ks") else args.ks
    ks = k_values(_numbers(ks_text, int, "--ks"), _numbers(args.k_fracs, float, "--k-fracs"), median_len)
    try:
        rows = frontier_variants(ks, [b.strip() for b in args.blocks.split(",") if b.strip()], cfg.bits[0])
    except ValueError as exc:
        raise SystemExit(f"--blocks: {exc}") from None
    saved = out / "frontier.json"
    results = load_runs(saved, cfg, data_line)
    for other in args.merge:
        if not (Path(other) / "frontier.json").exists():
            raise SystemExit(f"--merge {other}: no frontier.json there")
        have = {(r.variant, r.seed) for r in results}
        results += [r for r in load_runs(Path(other) / "frontier.json", cfg, data_line)
                    if (r.variant, r.seed) not in have]
    done = {(r.variant, r.seed) for r in results}
    if args.report_only:  # the rows with saved runs, none run
        rows = [v for v in rows if any(name == v.name for name, _ in done)]
    # seed-major: a sweep stopped early has every row at its first seeds
    todo = [] if args.report_only else [(v, seed) for seed in cfg.seeds for v in rows if (v.name, seed) not in done]
    _log(f"frontier: k in {ks} (median test history {median_len:.0f}), {len(rows)} rows x {len(cfg.seeds)} seeds, "
         f"{len(todo)} runs to do ({len(done)} saved in {saved})")
    for i, (variant, seed) in enumerate(todo):
        head = f"[{i + 1}/{len(todo)}] {variant.name} (seed {seed})"

        def progress(message: str, head: str = head) -> None:
            _log(f"{head}: {message}")

        result = run_variant(variant, data, cfg, seed, progress=progress)
        results.append(result)
        save_runs(saved, cfg, data_line, results)  # after every run: a stopped sweep resumes from here
        _log(f"{head}: val AUC {result.val_auc:.4f}, test AUC {result.auc:.4f}, {result.train_ms:.1f} ms/step, "
             f"{result.infer_ms:.1f} ms/batch, consistency {result.consistency:.3f}, {result.seconds:.1f} s")
    names = {v.name for v in rows}
    summary = summarize([r for r in results if r.variant in names])
    rounds = args.timing_rounds if args.timing_rounds is not None else 2 if args.quick else 10
    if rounds > 0:
        _log(f"paired timing of {len(rows)} rows, {rounds} interleaved rounds")
        summary = with_timings(summary, time_rows(rows, data, cfg, rounds))
    timing_line = (f"- times: paired, median of {rounds} interleaved rounds (every row one training step on the same "
                   "batch, then one inference batch, per round; one model per row, seed 0)" if rounds > 0 else
                   "- times: medians of the training runs (steps) and the test batches, median over seeds")
    header = [
        "# etaretrieval study: the k / cost / quality frontier of the long-term block (all with time)",
        "",
        f"- data: {data_line}; median test history {median_len:.0f} behaviours",
        f"- model: `ETAModel`, dim {cfg.dim}, short-term block: target attention over the last {cfg.recent} "
        f"behaviours; long-term block: the row, {cfg.heads} heads, MLP {list(cfg.hidden)}; ETA {cfg.bits[0]} bits; "
        f"histories up to L = {cfg.max_len}, {_layout(cfg)}",
        f"- training: Adam lr {cfg.lr}, batch {cfg.batch_size}, {cfg.epochs} epoch(s)"
        + (f" (at most {cfg.max_steps} steps)" if cfg.max_steps else "")
        + f" over the training users less {cfg.val_users:.0%} held out for validation"
        + (f"; test on a fixed random {cfg.test_samples} test samples" if cfg.test_samples else "")
        + f"; seeds {list(cfg.seeds)}; AUC: mean ± std over seeds",
        timing_line,
        f"- machine: {platform.processor() or platform.machine()}, torch {torch.__version__} with "
        f"{torch.get_num_threads()} threads, etaretrieval {__version__}; this invocation "
        f"{(time.perf_counter() - start) / 60:.1f} min",
        "- consistency@k: share of the block's own attention top-k (exact logits over the whole history, with "
        "time) that it retrieves (TWIN: 1 by construction)",
    ]
    text = write_report(out, summary, header, median_len,
                        f"{data.n_users} users, L <= {cfg.max_len}, {len(cfg.seeds)} seed(s)")
    print(text)
    _log(f"wrote frontier.md, frontier_table.rst, frontier.png and frontier.json to {out}")
    return 0


def _block_timing(args: argparse.Namespace, cfg: StudyConfig) -> int:
    """Time one block at a time at a long history (no training); write blocks.md."""
    import torch

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    _log(f"block timing at L = {cfg.long_len}, B = {cfg.long_batch}, k = {cfg.k}, {cfg.long_repeat} rounds")
    rows = time_blocks(cfg.long_len, cfg.long_batch, cfg.k, cfg, repeat=cfg.long_repeat)
    text = [f"# One long-term block at L = {cfg.long_len:,}, B = {cfg.long_batch}, k = {cfg.k}, d = {cfg.dim}",
            "", f"- medians of {cfg.long_repeat} rounds, rows interleaved; untrained blocks over random ids of a "
            f"100,000-row embedding; torch {torch.__version__} with {torch.get_num_threads()} threads, "
            f"{platform.processor() or platform.machine()}", "", block_table(rows)]
    (out / "blocks.md").write_text("\n".join(text) + "\n", encoding="utf-8")
    print("\n".join(text))
    return 0
