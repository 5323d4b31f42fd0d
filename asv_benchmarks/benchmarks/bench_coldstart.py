"""First calls in a fresh interpreter: import, then the first pack and lookup.

``timeraw_*`` benchmarks run their code in a new process, so they see the
cold start a user sees; the two differ only in Numba's on-disk cache.
"""

from __future__ import annotations

_FIRST_CALLS = """
import numpy as np
import etaretrieval as er
rng = np.random.default_rng(0)
table = er.pack_signatures(rng.standard_normal((100, 16), dtype=np.float32), er.hyperplanes(16, 64))
er.topk_hamming_lookup(table[:4], rng.integers(0, 100, size=(4, 50)), table, 8)
"""


class ColdStart:
    """Import and first calls, from the on-disk cache and compiling from scratch."""

    timeout = 300

    def timeraw_first_calls_cached(self) -> str:
        return _FIRST_CALLS

    def timeraw_first_calls_compiling(self) -> str:
        # An empty cache directory of its own: every kernel signature compiles.
        return "import os, tempfile\nos.environ['NUMBA_CACHE_DIR'] = tempfile.mkdtemp()\n" + _FIRST_CALLS
