"""One long-term block at a long history: forward+backward and inference time, and where ETA's time goes.

``python -m etaretrieval.study --block-timing --k 256 --long-len 10000``
times full attention + time, ETA + time (by id from the item table, the
training form of :class:`~etaretrieval.torch.ETAModel`, in both hash spaces),
ETA's two halves (the retrieval; the time embedding and the attention over
the ``k`` retrieved rows) and TWIN + time, all from item ids through one
embedding, with the repeats of every row interleaved (round robin) so that a
change of load on the machine touches every row alike.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from ..torch import ETAAttention, TargetAttention, TimeEncoding, TWINAttention
from .runner import StudyConfig

__all__ = ["BlockTiming", "time_blocks", "block_table"]


@dataclass(frozen=True)
class BlockTiming:
    """Median milliseconds of one block per batch: forward + backward (``nan``: not timed) and inference."""

    name: str
    train_ms: float
    infer_ms: float


def time_blocks(length: int, batch: int, k: int, cfg: StudyConfig, *, n_items: int = 100_000, bits: int = 64,
                repeat: int = 5) -> list[BlockTiming]:
    """Time the blocks at ``batch`` histories of ``length`` random item ids (untrained weights).

    Parameters
    ----------
    length, batch : int
        History length ``L`` and histories per batch ``B``.
    k : int
        Behaviours the retrieval blocks attend over.
    cfg : StudyConfig
        ``dim`` and ``heads``.
    n_items : int, default 100,000
        Rows of the embedding table.
    bits : int, default 64
        ETA's signature length.
    repeat : int, default 5
        Timed calls per row (after one warm-up call each).

    Returns
    -------
    list of BlockTiming
        Full attention first.
    """
    gen = torch.Generator().manual_seed(0)
    emb = nn.Embedding(n_items + 1, cfg.dim)
    ids = torch.randint(1, n_items + 1, (batch, length), generator=gen)
    mask = torch.ones(batch, length, dtype=torch.bool)
    times = torch.cumsum(torch.randint(1, 3600, (batch, length), generator=gen), dim=1)
    context = {"seq_time": times, "target_time": times[:, -1] + 60}
    target = torch.randint(1, n_items + 1, (batch,), generator=gen)
    full = TargetAttention(cfg.dim, cfg.heads, time=TimeEncoding(cfg.dim))
    twin = TWINAttention(cfg.dim, k, cfg.heads, time=TimeEncoding(cfg.dim))
    eta = ETAAttention(cfg.dim, bits, k, cfg.heads, time=TimeEncoding(cfg.dim))
    eta_attn = ETAAttention(cfg.dim, bits, k, cfg.heads, time=TimeEncoding(cfg.dim), hash_space="attention")
    with torch.no_grad():  # an attention space away from the identity (the folded planes are dense)
        for proj in (eta_attn.attention.query, eta_attn.attention.key):
            proj.weight.add_(0.1 * torch.randn(proj.weight.shape, generator=gen))

    def by_id(block: ETAAttention) -> Callable[[], torch.Tensor]:
        return lambda: block(emb(target), mask=mask, seq_ids=ids, items=emb.weight, **context)

    def retrieve() -> torch.Tensor:
        return eta.retrieve(emb(target), mask=mask, seq_ids=ids, items=emb.weight).values

    found = eta.retrieve(emb(target).detach(), mask=mask, seq_ids=ids, items=emb.weight)
    rows_ids = torch.where(found.mask, ids.gather(1, found.index.clamp(min=0)), 0)
    slot_times = {"seq_time": context["seq_time"].gather(1, found.index.clamp(min=0)),
                  "target_time": context["target_time"]}
    attend_k = TargetAttention(cfg.dim, cfg.heads, time=TimeEncoding(cfg.dim))

    calls: dict[str, tuple[Callable[[], torch.Tensor], bool]] = {
        "full attention + time": (lambda: full(emb(target), emb(ids), mask, **context), True),
        f"ETA {bits} bits + time, item table by id (k = {k})": (by_id(eta), True),
        f"  of which: retrieval (hash {n_items:,} rows, top-{k} of {length:,} by id)": (retrieve, False),
        f"  of which: time + attention over the {k} retrieved": (
            lambda: attend_k(emb(target), emb(rows_ids), found.mask, **slot_times), True),
        f"ETA {bits} bits, attention-space hash + time, item table by id (k = {k})": (by_id(eta_attn), True),
        f"TWIN + time (k = {k})": (lambda: twin(emb(target), emb(ids), mask, **context), True),
    }
    train: dict[str, list[float]] = {name: [] for name in calls}
    infer: dict[str, list[float]] = {name: [] for name in calls}
    for step in range(repeat + 1):  # round robin; the first round warms up
        for name, (fn, differentiable) in calls.items():
            with torch.no_grad():
                t0 = time.perf_counter()
                fn()
                elapsed = 1e3 * (time.perf_counter() - t0)
            if step:
                infer[name].append(elapsed)
            if differentiable:
                emb.zero_grad(set_to_none=True)
                t0 = time.perf_counter()
                fn().sum().backward()
                elapsed = 1e3 * (time.perf_counter() - t0)
                if step:
                    train[name].append(elapsed)
    return [BlockTiming(name, float(np.median(train[name])) if train[name] else float("nan"),
                        float(np.median(infer[name]))) for name in calls]


def block_table(rows: list[BlockTiming]) -> str:
    """Markdown table of :func:`time_blocks` with the ratios to the first row (full attention)."""
    base = rows[0]
    lines = ["| block | forward + backward ms | vs full attention | inference ms | vs full attention |",
             "|---|---|---|---|---|"]
    for r in rows:
        train = "" if np.isnan(r.train_ms) else f"{r.train_ms:.1f}"
        train_x = "" if np.isnan(r.train_ms) else f"{base.train_ms / r.train_ms:.1f}x"
        lines.append(f"| {r.name} | {train} | {train_x} | {r.infer_ms:.1f} | {base.infer_ms / r.infer_ms:.1f}x |")
    return "\n".join(lines)
