"""``python -m etaretrieval.bench --train-step``: the study's training step on padded and on ragged batches.

The model of ``python -m etaretrieval.study`` (:class:`~etaretrieval.torch.ETAModel`
with the study's sizes) takes one training step (forward, backward, Adam)
and one inference call (forward in evaluation mode, no autograd) per round
on the same training batches in three layouts: padded to the
study's ``max_len`` (how the study batches), padded to the batch's longest
row, and ragged (``torch.nested`` jagged histories over the flat values and
offsets of :meth:`~etaretrieval.datasets.SequenceSamples.ragged_batch`).
Every block and layout has its own model, all initialised alike, and they
take their steps one after the other in every round (the order rotating), so
a change of load on a shared machine touches them alike; the speed-ups are
medians of the per-round ratios. A fourth model gets the batches cut to the
short-term window (the newest ``recent`` behaviours): the cost of a step with
next to no long history, a floor for the others. Before timing, the three
layouts' logits of the untrained models on the first batch are compared (the
same arithmetic on the same behaviours: equal up to float rounding).
"""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Union

import numpy as np

from ..datasets import RaggedSequenceBatch, SequenceBatch, SequenceSamples, build_samples, make_sequence_ctr, read_log
from ..datasets.logs import Format

__all__ = ["TrainStepConfig", "TrainStepRow", "LAYOUTS", "run_train_step", "format_train_step"]

#: The batch layouts, in table order: the same behaviours three ways (speed-ups are against ``"ragged"``), and a
#: reference that keeps only each history's newest ``recent`` (the short-term window): what a step costs with
#: next to no long history, the least any layout of the whole histories could cost.
LAYOUTS = ("padded to max_len", "padded to the longest row", "ragged", "recent window only")


@dataclass(frozen=True)
class TrainStepConfig:
    """What :func:`run_train_step` times.

    Attributes
    ----------
    data : str or None
        An interaction log (read with :func:`etaretrieval.datasets.read_log`,
        samples from :func:`~etaretrieval.datasets.build_samples` with one
        sampled negative per positive); ``None``: the study's synthetic data
        (``users`` users, histories of ``max(21, max_len // 10)`` to ``max_len``).
    format : str
        Format of ``data``.
    max_len : int
        Histories keep their last ``max_len`` behaviours (the padded width).
    batch_size : int
        Samples per step.
    rounds : int
        Timed rounds (after one warm-up round).
    batches : int
        Distinct training batches, drawn once and taken in turn.
    blocks : tuple of str
        Names of the study's rows (:func:`etaretrieval.study.variants.variants`) to time.
    users : int
        Users of the synthetic data.
    seed : int
        Batch draw.
    """

    data: Optional[str] = None
    format: Format = "auto"
    max_len: int = 736
    batch_size: int = 128
    rounds: int = 20
    batches: int = 8
    blocks: tuple[str, ...] = ("ETA 64 bits + time", "full attention + time")
    users: int = 200
    seed: int = 0


@dataclass(frozen=True)
class TrainStepRow:
    """One block in one layout: median milliseconds and the speed-up of the ragged layout over it."""

    block: str
    layout: str
    batch_ms: float  # making the batch's tensors from the samples
    step_ms: float  # forward + backward + Adam step
    ragged_speedup: float  # median over rounds of this layout's step time / the ragged step's
    infer_ms: float  # forward only, evaluation mode, no autograd, on the same batch
    infer_speedup: float  # as ragged_speedup, for infer_ms
    max_logit_diff: float  # largest |logit - ragged logit| of the untrained models on the first batch (nan: floor)


def _samples(cfg: TrainStepConfig) -> tuple[SequenceSamples, str]:
    """``(samples, one line describing them)``."""
    if cfg.data is not None:
        data = build_samples(read_log(cfg.data, cfg.format), max_len=cfg.max_len, negatives=1, seed=0)
        what = f"`{Path(cfg.data).name}`"
    else:
        data = make_sequence_ctr(cfg.users, cfg.max_len, min_len=max(21, cfg.max_len // 10), seed=0)
        what = f"synthetic ({cfg.users} users)"
    lengths = np.minimum(data.history_lengths()[data.train], cfg.max_len)
    return data, (f"{what}: {int(data.train.sum()):,} training samples, histories cut to L = {cfg.max_len} of "
                  f"median {int(np.median(lengths))} and mean {lengths.mean():.0f} behaviours")


def run_train_step(cfg: TrainStepConfig) -> tuple[list[TrainStepRow], str]:
    """Time the study's training step on each block in each of :data:`LAYOUTS`.

    Parameters
    ----------
    cfg : TrainStepConfig

    Returns
    -------
    rows : list of TrainStepRow
        Block-major, layouts in :data:`LAYOUTS` order.
    data_line : str
        The data and its batches, in words.
    """
    import torch
    from torch import nn

    from ..study.runner import StudyConfig, build_model, to_tensors
    from ..study.variants import variants

    known = {v.name: v for v in variants()}
    unknown = [b for b in cfg.blocks if b not in known]
    if unknown:
        raise ValueError(f"unknown study rows {unknown}; choose from {list(known)}")
    data, data_line = _samples(cfg)
    study = StudyConfig(max_len=cfg.max_len, batch_size=cfg.batch_size)
    train_rows = np.flatnonzero(data.train)
    if train_rows.size < cfg.batch_size:
        raise ValueError(f"batch_size {cfg.batch_size} is more than the {train_rows.size} training samples")
    rng = np.random.default_rng(cfg.seed)
    order = rng.permutation(train_rows)
    draws = [order[i * cfg.batch_size:(i + 1) * cfg.batch_size] for i in range(cfg.batches)]
    draws = [d for d in draws if d.size == cfg.batch_size] or [order[:cfg.batch_size]]
    makers: dict[str, Callable[[np.ndarray], Union[SequenceBatch, RaggedSequenceBatch]]] = {
        LAYOUTS[0]: lambda r: data.batch(r, cfg.max_len),
        LAYOUTS[1]: lambda r: data.ragged_batch(r, cfg.max_len).padded(),
        LAYOUTS[2]: lambda r: data.ragged_batch(r, cfg.max_len),
        LAYOUTS[3]: lambda r: data.batch(r, study.recent),
    }
    batch_ms: dict[str, list[float]] = {layout: [] for layout in LAYOUTS}
    inputs: dict[str, list[tuple[dict[str, torch.Tensor], torch.Tensor]]] = {layout: [] for layout in LAYOUTS}
    for rows in draws:
        for layout, make in makers.items():
            t0 = time.perf_counter()
            inputs[layout].append(to_tensors(make(rows)))
            batch_ms[layout].append(1e3 * (time.perf_counter() - t0))
    real = sum(int(x["target"].shape[0]) for x, _ in inputs[LAYOUTS[2]])
    behaviours = np.mean([int(x["history"].values().shape[0]) for x, _ in inputs[LAYOUTS[2]]])
    widest = np.mean([int(x["history"].shape[1]) for x, _ in inputs[LAYOUTS[1]]])
    data_line += (f"; {len(draws)} batches of {real // len(draws)}: {behaviours:.0f} behaviours each on average, "
                  f"padded to {cfg.max_len} or to their longest row ({widest:.0f} on average)")
    loss_fn = nn.BCEWithLogitsLoss()
    models = {(b, layout): build_model(known[b], data, study, 0) for b in cfg.blocks for layout in LAYOUTS}
    optimizers = {key: torch.optim.Adam(m.parameters(), lr=study.lr) for key, m in models.items()}
    diff: dict[tuple[str, str], float] = {}
    with torch.no_grad():
        for b in cfg.blocks:
            ragged = models[(b, LAYOUTS[2])](**inputs[LAYOUTS[2]][0][0])
            for layout in LAYOUTS[:3]:
                logits = models[(b, layout)](**inputs[layout][0][0])
                diff[(b, layout)] = float((logits - ragged).abs().max())
    steps: dict[tuple[str, str], list[float]] = {key: [] for key in models}
    infers: dict[tuple[str, str], list[float]] = {key: [] for key in models}
    keys = list(models)
    for r in range(cfg.rounds + 1):
        shift = r % len(keys)
        for key in keys[shift:] + keys[:shift]:
            x, y = inputs[key[1]][r % len(draws)]
            model, optimizer = models[key], optimizers[key]
            t0 = time.perf_counter()
            loss = loss_fn(model(**x), y)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            t1 = time.perf_counter()
            model.eval()
            with torch.no_grad():
                model(**x)
            t2 = time.perf_counter()
            model.train()
            if r:  # round 0 warms up
                steps[key].append(1e3 * (t1 - t0))
                infers[key].append(1e3 * (t2 - t1))

    def speedup(times: dict[tuple[str, str], list[float]], key: tuple[str, str]) -> float:
        return statistics.median(t / u for t, u in zip(times[key], times[(key[0], LAYOUTS[2])]))

    return [TrainStepRow(b, layout, statistics.median(batch_ms[layout]), statistics.median(steps[(b, layout)]),
                         speedup(steps, (b, layout)), statistics.median(infers[(b, layout)]),
                         speedup(infers, (b, layout)), diff.get((b, layout), float("nan")))
            for b in cfg.blocks for layout in LAYOUTS], data_line


def format_train_step(cfg: TrainStepConfig, rows: Sequence[TrainStepRow], data_line: str, threads: int) -> str:
    """The table of :func:`run_train_step`."""
    lines = [
        f"training step (forward + backward + Adam) and inference (forward) of the study's ETAModel, "
        f"B = {cfg.batch_size}, {threads} thread(s): medians of {cfg.rounds} interleaved rounds; speed-up: "
        "median over rounds of the layout's time / the ragged layout's",
        f"data: {data_line}",
        f"{'long-term block':<26}{'layout':<28}{'batch ms':>10}{'step ms':>10}{'speed-up':>10}{'infer ms':>10}"
        f"{'speed-up':>10}{'max |logit diff|':>18}",
    ]
    for r in rows:
        lines.append(f"{r.block:<26}{r.layout:<28}{r.batch_ms:>10.2f}{r.step_ms:>10.1f}{r.ragged_speedup:>9.2f}x"
                     f"{r.infer_ms:>10.1f}{r.infer_speedup:>9.2f}x"
                     + ("" if math.isnan(r.max_logit_diff) else f"{r.max_logit_diff:>18.1e}"))
    return "\n".join(lines)
