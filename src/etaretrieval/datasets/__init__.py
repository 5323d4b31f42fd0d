"""Data for long-behaviour CTR models: real interaction logs, synthetic users and a flat, time-ordered sample store.

:func:`read_log` reads MovieLens, Taobao, RecBole, CSV and Parquet logs (with
pyarrow, the ``[data]`` extra); :func:`build_samples` turns a log into
:class:`SequenceSamples`. Everything else is numpy only: usable without torch.
"""

from __future__ import annotations

from .build import build_samples
from .logs import LOG_FORMATS, InteractionLog, read_log
from .samples import RaggedSequenceBatch, SequenceBatch, SequenceSamples
from .synthetic import LAPSED, LONG_TERM, OTHER, SHORT_TERM, LongBehaviorData, make_long_behavior_ctr, make_sequence_ctr

__all__ = [
    "read_log",
    "InteractionLog",
    "LOG_FORMATS",
    "build_samples",
    "SequenceSamples",
    "SequenceBatch",
    "RaggedSequenceBatch",
    "LongBehaviorData",
    "make_long_behavior_ctr",
    "make_sequence_ctr",
    "LONG_TERM",
    "SHORT_TERM",
    "OTHER",
    "LAPSED",
]
