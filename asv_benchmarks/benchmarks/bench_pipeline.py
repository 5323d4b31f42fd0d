"""Single calls and the serving loop (``python -m etaretrieval.bench --pipeline`` in asv form)."""

from __future__ import annotations

import contextlib
from typing import Any

import numpy as np

from etaretrieval import SignatureTable, SimHasher, threads, topk_hamming_lookup
from etaretrieval.bench.baselines import numpy_oneliner
from etaretrieval.bench.pipeline import SMALL_CALL, PipelineConfig, noop_lookup_op

ROWS, LENGTH, K = 100_000, 1024, 48


class SingleCall:
    """Latency of one ``topk_hamming_lookup`` (and the torch op) on per-row ids, 64 bits: the fixed cost at small B."""

    param_names = ["batch", "threads"]
    params = [[1, 4, 16, 64], [1, 0]]  # 0: the default thread count

    def setup(self, batch: int, nthreads: int) -> None:
        rng = np.random.default_rng(0)
        self.table = rng.integers(0, 2**63, size=(ROWS, 1), dtype=np.uint64)
        self.query = self.table[:batch].copy()
        self.ids = rng.integers(0, ROWS, size=(batch, 100 if batch == 1 else LENGTH))
        topk_hamming_lookup(self.query, self.ids, self.table, K)
        self.op: Any = None
        try:
            import torch

            import etaretrieval.torch  # noqa: F401
        except ImportError:
            return
        self.op = torch.ops.etaretrieval.topk_hamming_lookup
        self.targs = [torch.from_numpy(a.view(np.int64) if a.dtype == np.uint64 else a)
                      for a in (self.query, self.ids, self.table)]

    def time_topk_hamming_lookup(self, batch: int, nthreads: int) -> None:
        with threads(nthreads) if nthreads else contextlib.nullcontext():
            topk_hamming_lookup(self.query, self.ids, self.table, K)

    def time_torch_op(self, batch: int, nthreads: int) -> None:
        if self.op is None:
            raise NotImplementedError("torch is not installed")
        with threads(nthreads) if nthreads else contextlib.nullcontext():
            self.op(*self.targs, K)


class SmallCall:
    """The small call of ``python -m etaretrieval.bench --small-call`` (B=1, L=100, 64 bits, k=16) by each method.

    The library's fast path, the torch front end and the torch op on the same
    data, a no-op op registered as the op is (the dispatcher's floor), and the
    NumPy one-liner a user writes first (its ratio to the others is the figure).
    """

    def setup(self) -> None:
        batch, length, self.k = SMALL_CALL
        rng = np.random.default_rng(0)
        self.table = rng.integers(0, 2**63, size=(ROWS, 1), dtype=np.uint64)
        self.query = self.table[:batch].copy()
        self.ids = rng.integers(0, ROWS, size=(batch, length))
        topk_hamming_lookup(self.query, self.ids, self.table, self.k)
        self.op: Any = None
        try:
            import torch

            import etaretrieval.torch
        except ImportError:
            return
        self.op = torch.ops.etaretrieval.topk_hamming_lookup
        self.front_end = etaretrieval.torch.topk_hamming_lookup
        self.noop = noop_lookup_op()
        self.targs = [torch.from_numpy(a.view(np.int64) if a.dtype == np.uint64 else a)
                      for a in (self.query, self.ids, self.table)]
        self.op(*self.targs, self.k)
        self.front_end(*self.targs, self.k)

    def time_topk_hamming_lookup(self) -> None:
        topk_hamming_lookup(self.query, self.ids, self.table, self.k)

    def time_torch_op(self) -> None:
        if self.op is None:
            raise NotImplementedError("torch is not installed")
        self.op(*self.targs, self.k)

    def time_torch_front_end(self) -> None:
        if self.op is None:
            raise NotImplementedError("torch is not installed")
        self.front_end(*self.targs, self.k)

    def time_noop_op(self) -> None:
        if self.op is None:
            raise NotImplementedError("torch is not installed")
        self.noop(*self.targs, self.k)

    def time_numpy_oneliner(self) -> None:
        numpy_oneliner(self.query, self.ids, self.table, self.k)


class ServingRequest:
    """One request of the serving loop: hash the candidates, fused lookup on the user's sequence, gather the ids."""

    param_names = ["candidates"]
    params = [[16, 256, 1024]]
    timeout = 300

    def setup(self, candidates: int) -> None:
        cfg = PipelineConfig()
        rng = np.random.default_rng(0)
        embedding = rng.standard_normal((cfg.rows, cfg.dim), dtype=np.float32)
        self.hasher = SimHasher(cfg.dim, cfg.bits, seed=1)
        self.table = SignatureTable(embedding, self.hasher).signatures
        self.cand = embedding[rng.integers(0, cfg.rows, candidates)]
        self.seq = rng.integers(0, cfg.rows, cfg.length)
        self.k = cfg.k
        self.time_request(candidates)

    def time_request(self, candidates: int) -> None:
        idx, _ = topk_hamming_lookup(self.hasher(self.cand), self.seq, self.table, self.k)
        np.where(idx >= 0, self.seq[idx], -1)

    def time_hash_candidates(self, candidates: int) -> None:
        self.hasher(self.cand)
