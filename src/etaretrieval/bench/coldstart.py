"""First-call latency of a fresh process, with and without Numba's on-disk cache."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

__all__ = ["first_call", "run_coldstart"]

_SNIPPET = """
import json, time
start = time.perf_counter()
import numpy as np
import etaretrieval as er
imported = time.perf_counter()
rng = np.random.default_rng(0)
table = er.pack_signatures(rng.standard_normal((100, 16), dtype=np.float32), er.hyperplanes(16, 64))
packed = time.perf_counter()
er.topk_hamming_lookup(table[:4], rng.integers(0, 100, size=(4, 50)), table, 8)
looked_up = time.perf_counter()
print(json.dumps({"import": imported - start, "pack_signatures": packed - imported,
                  "topk_hamming_lookup": looked_up - packed}))
"""


def first_call(cache_dir: str | None) -> dict[str, float]:
    """Seconds to import and to make the first call of each kernel, in a new interpreter.

    Parameters
    ----------
    cache_dir : str or None
        ``NUMBA_CACHE_DIR`` of the child (an empty directory: cold; one that a
        previous child filled: warm); ``None`` keeps the default cache next to
        the sources.

    Returns
    -------
    dict
        ``import``, ``pack_signatures`` and ``topk_hamming_lookup`` seconds.
    """
    env = dict(os.environ)
    env.pop("ETARETRIEVAL_NO_CACHE", None)
    if cache_dir is not None:
        env["NUMBA_CACHE_DIR"] = cache_dir
    src = str(Path(__file__).resolve().parents[2])
    env["PYTHONPATH"] = os.pathsep.join(p for p in (src, env.get("PYTHONPATH")) if p)
    done = subprocess.run([sys.executable, "-c", _SNIPPET], env=env, capture_output=True, text=True, check=True)
    result: dict[str, float] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def run_coldstart() -> list[tuple[str, dict[str, float]]]:
    """A cold process (empty cache, so it compiles) and a second one that loads the cache.

    Returns
    -------
    list of (label, seconds)
        ``first process (compiles)`` then ``second process (cache)``.
    """
    with tempfile.TemporaryDirectory(prefix="etaretrieval-numba-cache-") as cache:
        cold = first_call(cache)
        warm = first_call(cache)
    return [("first process (empty cache: compiles)", cold), ("second process (on-disk cache)", warm)]
