"""Sweeps over sequence length, signature bits and table size, and their plot."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np

from .runner import Config, Timing, signature_methods, time_interleaved

__all__ = ["SWEEPS", "random_inputs", "run_sweep", "plot_sweeps"]

#: Values swept for each :class:`Config` field.
SWEEPS: dict[str, tuple[int, ...]] = {
    "length": (1_000, 3_000, 10_000, 30_000),
    "bits": (64, 128, 256, 512, 1024),
    "rows": (10_000, 100_000, 1_000_000, 10_000_000),
}


def random_inputs(config: Config, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Uniformly random signatures (no embeddings): ``query, ids, table, keys``.

    Parameters
    ----------
    config : Config
        The sizes (``dim`` is not used).
    seed : int, default 0
        Seed.

    Returns
    -------
    tuple of numpy.ndarray
        ``(B, W)`` queries, ``(B, L)`` or ``(L,)`` ids, ``(N, W)`` table and
        the pre-gathered ``table[ids]``; bits at and above ``bits`` are 0.

    Examples
    --------
    >>> q, ids, table, keys = random_inputs(Config("t", 2, 3, 5, 1, 70, 1, shared=True))
    >>> q.shape, ids.shape, table.shape, keys.shape, int(table[:, 1].max()) < 64
    ((2, 2), (3,), (5, 2), (3, 2), True)
    """
    rng = np.random.default_rng(seed)
    words = (config.bits + 63) // 64
    top = np.full(words, np.iinfo(np.uint64).max, dtype=np.uint64)
    if config.bits % 64:
        top[-1] = np.uint64((1 << (config.bits % 64)) - 1)
    table = rng.integers(0, top, size=(config.rows, words), dtype=np.uint64, endpoint=True)
    query = rng.integers(0, top, size=(config.batch, words), dtype=np.uint64, endpoint=True)
    ids = rng.integers(0, config.rows, size=(config.length,) if config.shared else (config.batch, config.length))
    return query, ids, table, table[ids]


def run_sweep(base: Config, field: str, values: Sequence[int], *, repeat: int = 3, subset: int = 8,
              ) -> list[tuple[int, list[Timing]]]:
    """Time the signature methods with one field of ``base`` set to each value.

    Parameters
    ----------
    base : Config
        The other sizes.
    field : str
        A :class:`Config` field, e.g. ``"length"``.
    values : sequence of int
        Its values.
    repeat : int, default 3
        Rounds per point.
    subset : int, default 8
        Rows of the NumPy baseline (scaled).

    Returns
    -------
    list of (value, timings)
        One entry per value.
    """
    points = []
    for value in values:
        cfg = dataclasses.replace(base, **{field: value})
        query, ids, table, keys = random_inputs(cfg)
        timings = time_interleaved(signature_methods(query, ids, table, keys, cfg.k, subset), repeat)
        points.append((value, timings))
    return points


def plot_sweeps(results: dict[str, list[tuple[int, list[Timing]]]], base: Config, path: str) -> None:
    """Save nanoseconds per behaviour against each swept field as a PNG (matplotlib, Agg).

    Parameters
    ----------
    results : dict
        Field -> :func:`run_sweep` result.
    base : Config
        The fixed sizes (for the title).
    path : str
        Output file.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    # Sized for a documentation column (~800 px): the legend goes below the
    # panels, in one place for all of them, so that no panel's data hides it.
    fig, axes = plt.subplots(1, len(results), figsize=(3.6 * len(results), 4.6), squeeze=False,
                             layout="constrained")
    for ax, (field, points) in zip(axes[0], results.items()):
        names = [t.name for t in points[0][1]]
        xs = [v for v, _ in points]
        for i, name in enumerate(names):
            ys = [ts[i].best * 1e9 / (dataclasses.replace(base, **{field: v}).behaviours) for v, ts in points]
            ax.plot(xs, ys, marker="o", label=name)
        ax.set_xscale("log", base=2 if field == "bits" else 10)
        ax.set_yscale("log")
        ax.set_xlabel(field, fontsize=12)
        ax.tick_params(labelsize=11)
        ax.grid(True, which="both", alpha=0.3)
    axes[0][0].set_ylabel("ns per behaviour (best)", fontsize=12)
    fig.legend(*axes[0][0].get_legend_handles_labels(), loc="outside lower center", ncol=2,
               fontsize=11, frameon=False)
    fig.suptitle(f"B={base.batch} L={base.length} N={base.rows} bits={base.bits} k={base.k}; "
                 "one field swept per panel", fontsize=12)
    fig.savefig(path, dpi=120)
    plt.close(fig)
