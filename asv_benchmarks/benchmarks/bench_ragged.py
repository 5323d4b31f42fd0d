"""Ragged lookups (flat ids + offsets) against the padded forms of the same rows."""

from __future__ import annotations

import numpy as np

from etaretrieval.bench.ragged import PAD, RaggedBatch, lengths_for, pad, ragged_batch


class RaggedLookup:
    """``topk_hamming_lookup`` with ``offsets``, padded with ``lengths``, and padded scanning every position.

    B = 256 rows of ``uniform`` lengths (0..400) or ``skewed`` ones (log-normal,
    median 200, one row of 10,000); a 1,000,000-row table, 64 bits, k = 32.
    """

    param_names = ["lengths"]
    params = [["uniform", "skewed"]]
    timeout = 300

    def setup_cache(self) -> dict[str, RaggedBatch]:
        rng = np.random.default_rng(0)
        batches = {kind: ragged_batch(lengths_for(kind, 256, rng)) for kind in self.params[0]}
        for batch in batches.values():
            batch.padded  # noqa: B018  (made once, outside the timed region)
        return batches

    def setup(self, batches: dict[str, RaggedBatch], kind: str) -> None:
        self.batch = batches[kind]
        # Compile (or load from the on-disk cache) outside the timed region.
        self.batch.ragged()
        self.batch.with_lengths()
        self.batch.without_lengths()

    def time_ragged(self, batches: dict[str, RaggedBatch], kind: str) -> None:
        self.batch.ragged()

    def time_padded_lengths(self, batches: dict[str, RaggedBatch], kind: str) -> None:
        self.batch.with_lengths()

    def time_padded_no_lengths(self, batches: dict[str, RaggedBatch], kind: str) -> None:
        self.batch.without_lengths()


class RaggedMemory:
    """Peak memory of one call on 255 rows of 100 behaviours and one of 100,000 (10^3-row table, k = 32).

    ``peakmem_padded`` pads the rows first (as a caller of the padded form
    must): ``B x L_max`` ids. The ragged call reads the flat ids in place.
    """

    timeout = 300

    def setup(self) -> None:
        lengths = np.full(256, 100)
        lengths[128] = 100_000
        self.batch = ragged_batch(lengths, rows=1_000)
        warm = ragged_batch(np.array([3, 5]), rows=1_000)
        warm.ragged()
        warm.with_lengths()

    def peakmem_ragged(self) -> None:
        self.batch.ragged()

    def peakmem_padded(self) -> None:
        b = self.batch
        from etaretrieval import topk_hamming_lookup

        topk_hamming_lookup(b.query, pad(b.ids, b.offsets), b.table, b.k, lengths=b.lengths, padding_id=PAD)
