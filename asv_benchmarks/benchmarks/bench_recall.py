"""Retrieval quality: recall@K of SimHash top-K against the exact inner-product top-K."""

from __future__ import annotations

import numpy as np

from etaretrieval import hyperplanes, pack_signatures, topk_hamming

from .common import clustered_embeddings


class Recall:
    """Share of the exact inner-product top-K that the Hamming top-K of SimHash signatures finds.

    64 targets, sequences of 1,000 clustered 64-dimensional embeddings with
    varying norms (:func:`common.clustered_embeddings`).
    """

    param_names = ["bits", "k"]
    params = [[16, 32, 64, 128, 256, 512, 1024], [16, 48]]
    timeout = 300

    def setup_cache(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        target, seq = clustered_embeddings()
        exact = np.argsort(-np.einsum("bd,bld->bl", target, seq), axis=1, kind="stable")
        return target, seq, exact

    def track_recall_at_k(self, data: tuple[np.ndarray, np.ndarray, np.ndarray], bits: int, k: int) -> float:
        target, seq, exact = data
        planes = hyperplanes(target.shape[1], bits, seed=1)
        idx, _ = topk_hamming(pack_signatures(target, planes), pack_signatures(seq, planes), k)
        hits = [np.intersect1d(idx[b], exact[b, :k]).size for b in range(idx.shape[0])]
        return float(np.mean(hits)) / k

    track_recall_at_k.unit = "recall"  # type: ignore[attr-defined]
