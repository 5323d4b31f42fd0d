"""First-call latency of a fresh process: compiling, from Numba's on-disk cache, after ``etaretrieval.warmup``."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

__all__ = ["WARMUP_ARGS", "first_call", "run_coldstart", "warmed_first_call"]

#: A ``python -m etaretrieval.warmup`` configuration that covers every step of the first-call program below.
WARMUP_ARGS = ("--ops", "lookup,lookup-shared,topk,ragged,pack", "--ids", "int64,int32", "--lengths", "--mask",
               "--torch")

_SNIPPET = """
import json, time
start = time.perf_counter()
import numpy as np
import etaretrieval as er
from etaretrieval.ragged import topk_hamming_lookup_ragged
seconds = {"import": time.perf_counter() - start}

def step(name, call):
    t = time.perf_counter()
    call()
    seconds[name] = time.perf_counter() - t

rng = np.random.default_rng(0)
x = rng.standard_normal((100, 16), dtype=np.float32)
step("pack_signatures", lambda: er.pack_signatures(x, er.hyperplanes(16, 64)))
table = er.pack_signatures(x, er.hyperplanes(16, 64))
ids = rng.integers(0, 100, size=(4, 50))
step("topk_hamming_lookup", lambda: er.topk_hamming_lookup(table[:4], ids, table, 8))
step("lookup, int32 ids", lambda: er.topk_hamming_lookup(table[:4], ids.astype(np.int32), table, 8))
step("lookup, shared ids + mask", lambda: er.topk_hamming_lookup(table[:4], ids[0], table, 8, mask=ids[0] > 5))
step("topk_hamming", lambda: er.topk_hamming(table[:4], table[ids], 8))
step("lookup, lengths", lambda: er.topk_hamming_lookup(table[:4], ids, table, 8, lengths=[50, 20, 0, 5]))
offsets, flat = np.array([0, 50, 90, 90, 200]), ids.ravel()
step("ragged lookup, mask", lambda: topk_hamming_lookup_ragged(table[:4], flat, table, 8, offsets, mask=flat > 5))
step("lookup, read-only table", lambda: er.topk_hamming_lookup(table[:4], ids, np.broadcast_to(table, table.shape), 8))
try:
    import torch
except ImportError:
    torch = None
if torch is not None:
    t = time.perf_counter()
    import etaretrieval.torch
    seconds["import etaretrieval.torch"] = time.perf_counter() - t
    ops, tt = torch.ops.etaretrieval, torch.from_numpy(table.view(np.int64))
    step("torch ops (pack, lookup, topk)", lambda: (ops.pack_signatures(torch.from_numpy(x), torch.ones(16, 64)),
         ops.topk_hamming_lookup(tt[:4], torch.from_numpy(ids), tt, 8), ops.topk_hamming(tt[:4], tt[ids], 8)))
print(json.dumps(seconds))
"""


def _env(cache_dir: str | None) -> dict[str, str]:
    """The child's environment: the on-disk cache on, in ``cache_dir`` if given, this source tree first."""
    env = dict(os.environ)
    env.pop("ETARETRIEVAL_NO_CACHE", None)
    if cache_dir is not None:
        env["NUMBA_CACHE_DIR"] = cache_dir
    src = str(Path(__file__).resolve().parents[2])
    env["PYTHONPATH"] = os.pathsep.join(p for p in (src, env.get("PYTHONPATH")) if p)
    return env


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
        Seconds of ``import``, then of the first call of each step of a
        common program (in order): ``pack_signatures``,
        ``topk_hamming_lookup``, the lookup with other input variants,
        ``topk_hamming``, a lookup with ``lengths`` and a ragged lookup with
        a mask (past the small-call fast path: the general kernels) and, with
        torch installed, the torch ops.
    """
    done = subprocess.run([sys.executable, "-c", _SNIPPET], env=_env(cache_dir), capture_output=True, text=True,
                          check=True)
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


def warmed_first_call(args: tuple[str, ...] = WARMUP_ARGS) -> tuple[float, dict[str, float]]:
    """``python -m etaretrieval.warmup args`` into an empty cache, then a new process's first calls.

    Parameters
    ----------
    args : tuple of str
        The warm-up's command line (default: :data:`WARMUP_ARGS`, the
        variants of :func:`first_call`'s program).

    Returns
    -------
    (float, dict)
        The warm-up's wall time in seconds (its interpreter start included),
        and :func:`first_call` of the cache it filled.
    """
    with tempfile.TemporaryDirectory(prefix="etaretrieval-numba-cache-") as cache:
        start = time.perf_counter()
        subprocess.run([sys.executable, "-m", "etaretrieval.warmup", *args], env=_env(cache), capture_output=True,
                       text=True, check=True)
        took = time.perf_counter() - start
        return took, first_call(cache)
