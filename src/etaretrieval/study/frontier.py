"""The k / cost / quality frontier: ETA, TWIN-style retrieval and full attention (all with time) over ``k``.

``python -m etaretrieval.study --frontier`` trains the study's model with
each long-term block at each ``k`` (and full attention once, which has no
``k``), on the same samples and seeds, and reports validation and test AUC,
train ms/step, inference ms/batch and the consistency of each retrieval
block (the share of its own attention's top-``k`` it retrieves), as a table
and a plot; the ``k`` a user should pick is read off the validation AUC.
"""

from __future__ import annotations

import dataclasses
import json
import math
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..datasets import SequenceSamples
from ..torch import ETAAttention, TargetAttention, TimeEncoding, TWINAttention
from .report import Summary, to_rst
from .runner import RunResult, StudyConfig, build_model, load_batch
from .variants import BlockSizes, Variant

__all__ = ["BLOCKS", "frontier_variants", "pick_k", "frontier_table", "frontier_plot", "load_runs", "save_runs",
           "time_rows", "with_timings"]

#: The block families of the frontier, by the name ``--blocks`` takes.
BLOCKS = ("eta", "eta-attn", "twin", "full")

FULL = "full attention + time"


def _eta(bits: int, k: int, hash_space: str) -> Callable[[BlockSizes, int], nn.Module]:
    def build(s: BlockSizes, seed: int) -> nn.Module:
        return ETAAttention(s.dim, bits, k, s.heads, seed, time=TimeEncoding(s.dim), hash_space=hash_space)

    return build


def _twin(k: int) -> Callable[[BlockSizes, int], nn.Module]:
    def build(s: BlockSizes, seed: int) -> nn.Module:
        return TWINAttention(s.dim, k, s.heads, time=TimeEncoding(s.dim))

    return build


def family(name: str) -> str:
    """The block family of a frontier row's name (its text before ``", k = "``)."""
    return name.split(", k = ")[0]


def frontier_variants(ks: Sequence[int], blocks: Sequence[str] = BLOCKS, bits: int = 64) -> list[Variant]:
    """The frontier's rows: full attention + time, then each retrieval block at each ``k``.

    Parameters
    ----------
    ks : sequence of int
        Behaviours retrieved, each ``>= 1``.
    blocks : sequence of str, default all of :data:`BLOCKS`
        ``"eta"`` (ETA + time, SimHash of the embeddings), ``"eta-attn"``
        (ETA + time hashing in the attention's query/key space,
        ``hash_space="attention"``), ``"twin"`` (:class:`TWINAttention` +
        time), ``"full"`` (full attention + time).
    bits : int, default 64
        Signature length of the ETA rows.

    Returns
    -------
    list of Variant
    """
    unknown = sorted(set(blocks) - set(BLOCKS))
    if unknown:
        raise ValueError(f"unknown frontier blocks {unknown}; choose from {list(BLOCKS)}")
    rows = []
    if "full" in blocks:
        rows.append(Variant(FULL, lambda s, seed: TargetAttention(s.dim, s.heads, time=TimeEncoding(s.dim))))
    # block-major: the cheap ETA rows of every k come before the TWIN rows (each costs about full attention)
    if "eta" in blocks:
        rows += [Variant(f"ETA {bits} bits + time, k = {k}", _eta(bits, k, "embedding"), bits, k=k) for k in ks]
    if "eta-attn" in blocks:
        rows += [Variant(f"ETA {bits} bits, attention-space hash + time, k = {k}", _eta(bits, k, "attention"), bits,
                         k=k) for k in ks]
    if "twin" in blocks:
        rows += [Variant(f"TWIN + time, k = {k}", _twin(k), k=k) for k in ks]
    return rows


def pick_k(rows: Sequence[Summary], tolerance: float = 0.005) -> dict[str, int]:
    """Per retrieval family, the smallest ``k`` whose validation AUC is within ``tolerance`` of full attention's.

    Families that reach it at no ``k`` of the sweep (or rows without a
    validation AUC) are left out.
    """
    full = [r for r in rows if r.variant == FULL]
    if not full or math.isnan(full[0].val_auc):
        return {}
    chosen: dict[str, int] = {}
    for r in sorted((r for r in rows if r.variant != FULL), key=lambda r: r.k):
        fam = family(r.variant)
        if fam not in chosen and r.val_auc >= full[0].val_auc - tolerance:
            chosen[fam] = r.k
    return chosen


def _fmt(x: float, digits: int) -> str:
    return "" if math.isnan(x) else f"{x:.{digits}f}"


def frontier_table(rows: Sequence[Summary], median_len: float) -> str:
    """The frontier as a Markdown table: one row per block and ``k``, full attention first."""
    full = next((r for r in rows if r.variant == FULL), None)
    lines = [
        "| long-term block | k | k / median L | validation AUC | test AUC | test AUC - full | train ms/step "
        "| train speed-up vs full | inference ms/batch | consistency@k |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in sorted(rows, key=lambda r: (r.variant != FULL, family(r.variant), r.k)):
        k = "all" if r.variant == FULL else str(r.k)
        ratio = "1" if r.variant == FULL else f"{r.k / median_len:.3f}"
        gap = "" if full is None else f"{r.auc - full.auc:+.4f}"
        speed = "" if full is None else f"{full.train_ms / r.train_ms:.1f}x"
        lines.append(f"| {family(r.variant)} | {k} | {ratio} | {_fmt(r.val_auc, 4)} | {r.auc:.4f} ± {r.auc_std:.4f} "
                     f"| {gap} | {r.train_ms:.1f} | {speed} | {r.infer_ms:.1f} | {_fmt(r.consistency, 3)} |")
    return "\n".join(lines)


def frontier_plot(rows: Sequence[Summary], path: Path, title: str) -> None:
    """Three panels: test AUC against train ms/step, inference ms/batch and ``k``; saved as PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(16, 4.8), layout="constrained")
    families = list(dict.fromkeys(family(r.variant) for r in rows))
    colors = dict(zip(families, ["tab:gray", "tab:red", "tab:orange", "tab:blue", "tab:green"]))
    for fam in families:
        pts = sorted((r for r in rows if family(r.variant) == fam), key=lambda r: r.k)
        auc, err = [r.auc for r in pts], [r.auc_std for r in pts]
        for ax, x in zip(axes[:2], ([r.train_ms for r in pts], [r.infer_ms for r in pts])):
            ax.errorbar(x, auc, yerr=err, fmt="o-", color=colors[fam], label=fam, capsize=2)
            if fam != FULL:
                for r, xi in zip(pts, x):
                    ax.annotate(str(r.k), (xi, r.auc), fontsize=7, xytext=(3, 3), textcoords="offset points")
        if fam == FULL:
            axes[2].axhspan(pts[0].auc - pts[0].auc_std, pts[0].auc + pts[0].auc_std, color=colors[fam], alpha=0.2)
            axes[2].axhline(pts[0].auc, color=colors[fam], label=fam)
        else:
            axes[2].errorbar([r.k for r in pts], auc, yerr=err, fmt="o-", color=colors[fam], label=fam, capsize=2)
    for ax, label in zip(axes, ("train ms per step (model forward + backward)", "inference ms per batch",
                                "k (behaviours attended)")):
        ax.set_xscale("log", base=2 if label.startswith("k") else 10)
        ax.set_xlabel(label)
        ax.set_ylabel("test AUC (mean ± std over seeds)")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    axes[1].set_title(title)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def save_runs(path: Path, cfg: StudyConfig, data_line: str, runs: Sequence[RunResult]) -> None:
    """Write the runs (and what they ran on) to ``path`` (JSON)."""
    path.write_text(json.dumps({"config": dataclasses.asdict(cfg), "data": data_line,
                                "runs": [dataclasses.asdict(r) for r in runs]}, indent=1), encoding="utf-8")


def load_runs(path: Path, cfg: StudyConfig, data_line: str) -> list[RunResult]:
    """The runs saved at ``path`` by an earlier frontier run of the same configuration and data ([] if none).

    Raises
    ------
    SystemExit
        The saved runs were made with another configuration or other data.
    """
    if not path.exists():
        return []
    saved = json.loads(path.read_text(encoding="utf-8"))
    now = json.loads(json.dumps(dataclasses.asdict(cfg)))  # tuples as lists, as saved
    made = {"ragged": False, **saved["config"]}  # runs saved before the ragged option were padded
    if made != now or saved["data"] != data_line:
        raise SystemExit(f"{path} holds runs of another configuration or other data: use another --out")
    return [RunResult(**r) for r in saved["runs"]]


def write_report(out: Path, rows: Sequence[Summary], header: Sequence[str], median_len: float, title: str) -> str:
    """Write ``frontier.md``, ``frontier_table.rst`` and ``frontier.png`` to ``out``; returns the Markdown."""
    table = frontier_table(rows, median_len)
    chosen = pick_k(rows)
    text = [*header, "", table, ""]
    full = next((r for r in rows if r.variant == FULL), None)
    if chosen and full is not None:
        text.append("Smallest k within 0.005 of full attention's validation AUC, and its test row:")
        text.append("")
        for fam, k in chosen.items():
            r = next(r for r in rows if family(r.variant) == fam and r.k == k)
            text.append(f"- {fam}: k = {k} ({k / median_len:.3f} of the median history): test AUC {r.auc:.4f} "
                        f"({r.auc - full.auc:+.4f} vs full attention), train {full.train_ms / r.train_ms:.1f}x, "
                        f"inference {full.infer_ms / r.infer_ms:.1f}x cheaper than full attention")
    else:
        text.append("No retrieval row reached full attention's validation AUC - 0.005 (or no validation split).")
    (out / "frontier.md").write_text("\n".join(text) + "\n", encoding="utf-8")
    (out / "frontier_table.rst").write_text(to_rst(table) + "\n", encoding="utf-8")
    frontier_plot(rows, out / "frontier.png", title)
    return "\n".join(text)


def k_values(ks: Sequence[int], fractions: Sequence[float], median_len: float) -> list[int]:
    """The sweep's ``k``: the absolute ``ks`` and ``round(f * median_len)`` for each fraction, sorted, distinct."""
    out = set(int(k) for k in ks) | {max(1, round(f * median_len)) for f in fractions}
    if any(k < 1 for k in out):
        raise SystemExit(f"every k must be >= 1, got {sorted(out)}")
    return sorted(out)


def median_history(lengths: np.ndarray, max_len: int) -> float:
    """Median number of behaviours a test sample's model sees (histories cut to ``max_len``)."""
    return float(np.median(np.minimum(lengths, max_len)))


def time_rows(variants: Sequence[Variant], data: SequenceSamples, cfg: StudyConfig,
              rounds: int) -> dict[str, tuple[float, float]]:
    """Paired timing: ``{name: (train ms/step, inference ms/batch)}``, medians of ``rounds`` interleaved rounds.

    Each row's model (seed 0) takes one training step (forward, backward,
    Adam step) on the same training batch and one inference call on the same
    test batch per round, the rows one after the other in every round: a
    change of load on a shared machine touches every row alike, unlike the
    times of training runs made one after another. The first round warms up.
    """
    train_rows, test_rows = np.flatnonzero(data.train), np.flatnonzero(~data.train)
    rng = np.random.default_rng(cfg.data_seed)
    x_train, y_train = load_batch(data, np.sort(rng.choice(train_rows, cfg.batch_size, replace=False)), cfg)
    x_test, _ = load_batch(data, np.sort(rng.choice(test_rows, cfg.batch_size, replace=False)), cfg)
    models = {v.name: build_model(v, data, cfg, 0) for v in variants}
    optimizers = {name: torch.optim.Adam(m.parameters(), lr=cfg.lr) for name, m in models.items()}
    loss_fn = nn.BCEWithLogitsLoss()
    train: dict[str, list[float]] = {name: [] for name in models}
    infer: dict[str, list[float]] = {name: [] for name in models}
    for step in range(rounds + 1):
        for name, model in models.items():
            model.train()
            t0 = time.perf_counter()
            loss = loss_fn(model(**x_train), y_train)
            optimizers[name].zero_grad()
            loss.backward()
            optimizers[name].step()
            t1 = time.perf_counter()
            model.eval()
            with torch.no_grad():
                model(**x_test)
            t2 = time.perf_counter()
            if step:
                train[name].append(1e3 * (t1 - t0))
                infer[name].append(1e3 * (t2 - t1))
    return {name: (float(np.median(train[name])), float(np.median(infer[name]))) for name in models}


def with_timings(rows: Sequence[Summary], timings: dict[str, tuple[float, float]]) -> list[Summary]:
    """``rows`` with the time columns of :func:`time_rows` where it timed the row."""
    return [dataclasses.replace(r, train_ms=timings[r.variant][0], infer_ms=timings[r.variant][1])
            if r.variant in timings else r for r in rows]
