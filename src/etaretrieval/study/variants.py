"""The interest blocks the study compares, each a long-term block of one :class:`~etaretrieval.torch.ETAModel`."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Optional

from torch import nn

from ..torch import (
    CategoryMatchAttention,
    ETAAttention,
    InnerProductTopKAttention,
    MeanPooling,
    RecentWindowAttention,
    SDIMBlock,
    TargetAttention,
    TimeEncoding,
)

__all__ = ["BlockSizes", "Variant", "variants"]


@dataclass(frozen=True)
class BlockSizes:
    """Sizes shared by every block: embedding ``dim``, ``k`` retrieved, attention ``heads``."""

    dim: int
    k: int
    heads: int


@dataclass(frozen=True)
class Variant:
    """One row of the study: a name and how to build the long-term block.

    Attributes
    ----------
    name : str
        Row label.
    build : callable
        ``build(sizes, seed) -> nn.Module``, an interest block.
    retrieval_bits : int or None
        Signature bits if the block retrieves by SimHash (its recall against the
        exact inner-product top-K is measured), else None.
    needs_categories : bool
        The block reads behaviour categories (skipped on data without them).
    k : int or None
        Behaviours the block retrieves, when it is not the study's ``k`` (the frontier's rows).
    """

    name: str
    build: Callable[[BlockSizes, int], nn.Module]
    retrieval_bits: Optional[int] = None
    needs_categories: bool = False
    k: Optional[int] = None


def _time(s: BlockSizes, on: bool) -> Optional[TimeEncoding]:
    return TimeEncoding(s.dim) if on else None


def _eta(bits: int, timed: bool) -> Callable[[BlockSizes, int], nn.Module]:
    def build(s: BlockSizes, seed: int) -> nn.Module:
        return ETAAttention(s.dim, bits, s.k, s.heads, seed, time=_time(s, timed))

    return build


def _sdim(bits: int, timed: bool) -> Callable[[BlockSizes, int], nn.Module]:
    def build(s: BlockSizes, seed: int) -> nn.Module:
        return SDIMBlock(s.dim, bits, 4, seed, time=_time(s, timed))

    return build


def variants(bits: tuple[int, ...] = (64, 128)) -> list[Variant]:
    """The study's rows, in table order.

    Parameters
    ----------
    bits : tuple of int, default (64, 128)
        Signature lengths of the ETA rows; SDIM (groups of 4 bits) uses the
        last; the last row re-ranks the ``4 k`` nearest of ``bits[0]``-bit ETA
        by recency (the ``k`` newest).

    Returns
    -------
    list of Variant
    """
    rows = [
        Variant("DIN: recent window", lambda s, seed: RecentWindowAttention(s.dim, s.k, s.heads)),
        Variant("mean pooling", lambda s, seed: MeanPooling(s.dim)),
        Variant("SIM hard: category match", lambda s, seed: CategoryMatchAttention(s.dim, s.k, s.heads),
                needs_categories=True),
        Variant("SIM hard + time",
                lambda s, seed: CategoryMatchAttention(s.dim, s.k, s.heads, time=_time(s, True)),
                needs_categories=True),
        Variant("inner-product top-K", lambda s, seed: InnerProductTopKAttention(s.dim, s.k, s.heads)),
        Variant("inner-product top-K + time",
                lambda s, seed: InnerProductTopKAttention(s.dim, s.k, s.heads, time=_time(s, True))),
        Variant("full attention", lambda s, seed: TargetAttention(s.dim, s.heads)),
        Variant("full attention + time", lambda s, seed: TargetAttention(s.dim, s.heads, time=_time(s, True))),
    ]
    for b in bits:
        for timed in (False, True):
            rows.append(Variant(f"ETA {b} bits" + (" + time" if timed else ""), _eta(b, timed), retrieval_bits=b))
    for timed in (False, True):
        rows.append(Variant(f"SDIM {bits[-1]} bits, tau 4" + (" + time" if timed else ""), _sdim(bits[-1], timed)))
    rows.append(Variant(
        f"ETA {bits[0]} bits + time, recency re-rank",
        lambda s, seed: ETAAttention(s.dim, bits[0], s.k, s.heads, seed, time=_time(s, True), candidates=4 * s.k),
    ))
    return rows
