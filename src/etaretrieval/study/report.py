"""Aggregate study runs over seeds; the Markdown table and the plot."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .runner import LongTiming, RunResult

__all__ = ["Summary", "summarize", "markdown_table", "long_table", "to_rst", "plot"]


@dataclass(frozen=True)
class Summary:
    """Mean and standard deviation over seeds of one variant's results."""

    variant: str
    seeds: int
    auc: float
    auc_std: float
    logloss: float
    logloss_std: float
    train_ms: float
    infer_ms: float
    recall: float
    val_auc: float = float("nan")
    consistency: float = float("nan")
    k: int = 0


def _mean(x: np.ndarray) -> float:
    """Mean, ``nan`` when every value is ``nan`` (a column a row does not measure)."""
    return float(np.nanmean(x)) if not np.isnan(x).all() else float("nan")


def _std(x: np.ndarray) -> float:
    return float(x.std(ddof=1)) if x.size > 1 else 0.0


def summarize(results: Sequence[RunResult]) -> list[Summary]:
    """One :class:`Summary` per variant, in the order the variants first appear."""
    names = list(dict.fromkeys(r.variant for r in results))
    out = []
    for name in names:
        rs = [r for r in results if r.variant == name]
        a = np.array([r.auc for r in rs])
        ll = np.array([r.logloss for r in rs])
        out.append(Summary(
            variant=name, seeds=len(rs), auc=float(a.mean()), auc_std=_std(a), logloss=float(ll.mean()),
            logloss_std=_std(ll), train_ms=float(np.median([r.train_ms for r in rs])),
            infer_ms=float(np.median([r.infer_ms for r in rs])),
            recall=_mean(np.array([r.recall for r in rs])), val_auc=_mean(np.array([r.val_auc for r in rs])),
            consistency=_mean(np.array([r.consistency for r in rs])), k=rs[0].k,
        ))
    return out


def markdown_table(rows: Sequence[Summary], k: int) -> str:
    """The comparison as a Markdown table (mean +- std over seeds)."""
    lines = [
        "| long-term block | test AUC | logloss | train ms/step | inference ms/batch "
        f"| recall@{k} vs exact IP top-{k} |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        recall = "" if math.isnan(r.recall) else f"{r.recall:.3f}"
        lines.append(f"| {r.variant} | {r.auc:.4f} ± {r.auc_std:.4f} | {r.logloss:.4f} ± {r.logloss_std:.4f} | "
                     f"{r.train_ms:.0f} | {r.infer_ms:.0f} | {recall} |")
    return "\n".join(lines)


def long_table(rows: Sequence[LongTiming]) -> str:
    """The long-sequence inference timings as a Markdown table, with the ratio to the first row."""
    base = rows[0].ms
    lines = ["| block | ms/batch | speed-up vs " + rows[0].name + " |", "|---|---|---|"]
    lines += [f"| {r.name} | {r.ms:.1f} | {base / r.ms:.1f}x |" for r in rows]
    return "\n".join(lines)


def to_rst(markdown: str) -> str:
    """A Markdown table (as :func:`markdown_table` and :func:`long_table` write them) as a reST list-table."""
    lines = [line for line in markdown.splitlines() if line.startswith("|") and not line.startswith("|---")]
    cells = [[c.strip() for c in line.strip("|").split("|")] for line in lines]
    out = [".. list-table::", "   :header-rows: 1", ""]
    for row in cells:
        out.append(f"   * - {row[0]}")
        out += [f"     - {c}" if c else "     -" for c in row[1:]]
    return "\n".join(out)


def plot(rows: Sequence[Summary], path: Path, title: str) -> None:
    """Two panels: test AUC per block (mean +- std), and AUC against inference time; saved as PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax0, ax1) = plt.subplots(1, 2, figsize=(12, 0.35 * len(rows) + 2), layout="constrained")
    y = np.arange(len(rows))[::-1]
    colors = ["tab:red" if r.variant.startswith("ETA") else "tab:purple" if r.variant.startswith("SDIM")
              else "tab:gray" for r in rows]
    ax0.barh(y, [r.auc for r in rows], xerr=[r.auc_std for r in rows], color=colors)
    ax0.set_yticks(y, [r.variant for r in rows])
    low = min(r.auc - r.auc_std for r in rows)
    high = max(r.auc + r.auc_std for r in rows)
    ax0.set_xlim(low - 0.1 * (high - low + 1e-3), high + 0.1 * (high - low + 1e-3))
    ax0.set_xlabel("test AUC (mean ± std over seeds)")
    ax0.set_title(title)
    for r, c in zip(rows, colors):
        ax1.errorbar(r.infer_ms, r.auc, yerr=r.auc_std, fmt="o", color=c)
        ax1.annotate(r.variant, (r.infer_ms, r.auc), fontsize=7, xytext=(4, 2), textcoords="offset points")
    ax1.set_xscale("log")
    ax1.set_xlabel("inference ms per batch (model forward)")
    ax1.set_ylabel("test AUC")
    ax1.set_title("Quality against cost")
    fig.savefig(path, dpi=110)
    plt.close(fig)
