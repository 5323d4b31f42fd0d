"""Data for long-behaviour CTR models: synthetic users, and (soon) real interaction logs.

Numpy only: usable without torch.
"""

from __future__ import annotations

from .synthetic import LONG_TERM, OTHER, SHORT_TERM, LongBehaviorData, make_long_behavior_ctr

__all__ = ["LongBehaviorData", "make_long_behavior_ctr", "LONG_TERM", "SHORT_TERM", "OTHER"]
