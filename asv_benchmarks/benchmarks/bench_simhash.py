"""SimHash packing against the bare BLAS projection it contains."""

from __future__ import annotations

import numpy as np

from etaretrieval import hyperplanes, pack_signatures

ROWS, DIM = 100_000, 128


class PackSignatures:
    """``pack_signatures`` of a ``(100,000, 128)`` float32 table, and ``x @ planes`` alone."""

    param_names = ["bits"]
    params = [[64, 256, 1024]]
    timeout = 300

    def setup_cache(self) -> np.ndarray:
        return np.random.default_rng(0).standard_normal((ROWS, DIM), dtype=np.float32)

    def setup(self, x: np.ndarray, bits: int) -> None:
        self.planes = hyperplanes(DIM, bits)
        pack_signatures(x[:8], self.planes)  # compile outside the timed region

    def time_pack_signatures(self, x: np.ndarray, bits: int) -> None:
        pack_signatures(x, self.planes)

    def time_matmul(self, x: np.ndarray, bits: int) -> None:
        np.matmul(x, self.planes)

    def peakmem_pack_signatures(self, x: np.ndarray, bits: int) -> None:
        pack_signatures(x, self.planes)

    def peakmem_matmul(self, x: np.ndarray, bits: int) -> None:
        np.matmul(x, self.planes)
