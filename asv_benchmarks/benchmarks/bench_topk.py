"""Top-K retrieval on the standard configurations, against the floor kernel."""

from __future__ import annotations

from typing import Any

from etaretrieval import topk_hamming, topk_hamming_lookup
from etaretrieval.bench.floor import floor_lookup

from .common import CONFIG_NAMES, signature_inputs

Inputs = dict[str, Any]


class TopK:
    """``topk_hamming_lookup``, ``topk_hamming`` on pre-gathered keys, and the floor.

    ``paper``: one shared L = 1,024 sequence against 1,024 targets, 256 bits,
    k = 48; ``long``: 256 rows of L = 10,000 from a 1,000,000-row table,
    64 bits, k = 64 (random signatures).
    """

    param_names = ["config"]
    params = [CONFIG_NAMES]
    timeout = 300

    def setup_cache(self) -> Inputs:
        return signature_inputs()

    def setup(self, inputs: Inputs, config: str) -> None:
        self.query, self.ids, self.table, self.keys, self.k = inputs[config]
        # Compile (or load from the on-disk cache) outside the timed region.
        topk_hamming_lookup(self.query, self.ids, self.table, self.k)
        topk_hamming(self.query, self.keys, self.k)
        floor_lookup(self.query, self.ids, self.table)

    def time_topk_hamming_lookup(self, inputs: Inputs, config: str) -> None:
        topk_hamming_lookup(self.query, self.ids, self.table, self.k)

    def time_topk_hamming(self, inputs: Inputs, config: str) -> None:
        topk_hamming(self.query, self.keys, self.k)

    def time_floor(self, inputs: Inputs, config: str) -> None:
        floor_lookup(self.query, self.ids, self.table)

    def peakmem_topk_hamming_lookup(self, inputs: Inputs, config: str) -> None:
        topk_hamming_lookup(self.query, self.ids, self.table, self.k)

    def peakmem_topk_hamming(self, inputs: Inputs, config: str) -> None:
        topk_hamming(self.query, self.keys, self.k)
