"""Data for long-behaviour CTR models: synthetic users and a flat, time-ordered sample store.

Numpy only: usable without torch.
"""

from __future__ import annotations

from .samples import SequenceBatch, SequenceSamples
from .synthetic import LONG_TERM, OTHER, SHORT_TERM, LongBehaviorData, make_long_behavior_ctr

__all__ = [
    "SequenceSamples",
    "SequenceBatch",
    "LongBehaviorData",
    "make_long_behavior_ctr",
    "LONG_TERM",
    "SHORT_TERM",
    "OTHER",
]
