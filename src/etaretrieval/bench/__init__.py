"""Benchmarks: etaretrieval side by side with the floor and the alternatives.

Run ``python -m etaretrieval.bench --help``. The modules:

:mod:`~etaretrieval.bench.floor`
    the memory-traffic floor kernel;
:mod:`~etaretrieval.bench.baselines`
    NumPy brute force, torch inner product, the pure-torch ETA port, faiss;
:mod:`~etaretrieval.bench.runner`
    configurations, data, interleaved timing and the table;
:mod:`~etaretrieval.bench.sweep`, :mod:`~etaretrieval.bench.coldstart`
    sweeps with their plot, and first-call latency in fresh processes;
:mod:`~etaretrieval.bench.pipeline`
    the serving and training loops, and the small call against NumPy;
:mod:`~etaretrieval.bench.ragged`, :mod:`~etaretrieval.bench.offline`
    ragged rows against padded ones, and the Arrow / Parquet jobs;
:mod:`~etaretrieval.bench.trainstep`
    the study's training step on padded and ragged batches.

torch, faiss and matplotlib are optional: the methods that need them are
left out when they are not installed.
"""

from __future__ import annotations

from .cli import main
from .floor import floor_lookup
from .runner import CONFIGS, Config, make_data, run_config

__all__ = ["CONFIGS", "Config", "floor_lookup", "main", "make_data", "run_config"]
