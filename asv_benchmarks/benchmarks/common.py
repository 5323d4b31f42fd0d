"""Shared data for the suites: the standard configurations of :mod:`etaretrieval.bench`."""

from __future__ import annotations

import numpy as np

from etaretrieval.bench.runner import CONFIGS
from etaretrieval.bench.sweep import random_inputs

__all__ = ["CONFIG_NAMES", "signature_inputs", "clustered_embeddings"]

#: Parameter values of the configuration-parameterised suites.
CONFIG_NAMES = list(CONFIGS)


def signature_inputs() -> dict[str, tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, int]]:
    """``query, ids, table, keys, k`` of each standard configuration (random signatures)."""
    return {name: (*random_inputs(cfg), cfg.k) for name, cfg in CONFIGS.items()}


def clustered_embeddings(
    batch: int = 64, length: int = 1_000, dim: int = 64, clusters: int = 64, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """Targets ``(B, d)`` and sequences ``(B, L, d)`` drawn around interest clusters, with varying norms.

    Each row's sequence mixes eight of the clusters and its target comes
    from one of them, so that the exact top-K is meaningful.
    """
    rng = np.random.default_rng(seed)
    centers = rng.standard_normal((clusters, dim))

    def sample(which: np.ndarray) -> np.ndarray:
        x = centers[which] + rng.standard_normal(which.shape + (dim,))
        return (x * rng.lognormal(0.0, 0.2, which.shape + (1,))).astype(np.float32)

    interests = np.stack([rng.choice(clusters, 8, replace=False) for _ in range(batch)])
    seq = sample(np.take_along_axis(interests, rng.integers(0, 8, (batch, length)), axis=1))
    target = sample(interests[np.arange(batch), rng.integers(0, 8, batch)])
    return target, seq
