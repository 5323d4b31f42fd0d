"""``--pipeline``: the loops users run, not only the kernels.

Three measurements, each idle and then with a busy background process on
every core:

* *serving*: per request, hash the candidates (:class:`SimHasher`), the fused
  lookup over the user's sequence (:func:`topk_hamming_lookup`, shared
  ``(L,)`` ids) and the gather of the retrieved ids; p50/p99 per request and
  the ratio of the loop to the sum of its parts timed alone;
* *training*: one step (forward + backward + SGD, and the refresh of the
  changed rows of the :class:`~etaretrieval.torch.SignatureCache`) of a small
  CTR model with :class:`~etaretrieval.torch.ETAAttention` over that cache,
  and its ratio to its parts timed alone (the retrieval, then the rest of
  the step on the retrieved embeddings);
* *single calls*: latency of :func:`topk_hamming_lookup` (and the torch op)
  at ``B = 1..64``, called back to back and as requests that arrive
  :data:`PACE` apart (the calling thread waits in between, as a server
  waits for its next request); with load, a last section holds the ratios
  of each p99 under load to the idle p50 of the same calls and to the idle
  p50 of the call back to back (:data:`LOAD_RATIOS`).
  Back to back, the caller is a busy thread like the background ones, so
  the scheduler gives the core away for a time slice (milliseconds) every
  few milliseconds of its running: the p99 of calls longer than about 1 %
  of that period measures the time slice, for any library;
* *small call against NumPy*: one small lookup (:data:`SMALL_CALL`: one
  target, 100 behaviours, 64 bits, ``k = 16``) by :func:`topk_hamming_lookup`,
  the torch front end :func:`etaretrieval.torch.topk_hamming_lookup` (on
  ``(B, L)`` ids, and on the same rows as flat ids with ``offsets`` and as a
  jagged nested tensor), the torch op, a no-op op registered as the op is
  (what the dispatcher costs alone) and the NumPy one-liner a user writes first
  (``np.bitwise_count(table[ids] ^ q).sum(-1)`` and ``np.argpartition``),
  called in turn round by round (:func:`interleaved`), and their ratios;
* *concurrent callers*: requests per second of ``B = 64`` lookups
  (:data:`CONCURRENT_REQUESTS` times ``requests`` in all) issued by
  1 and by 4 Python threads, each request on one thread
  (:func:`etaretrieval.threads` ``(1)``) and with the default thread count.

Progress lines go to standard error; the tables to standard output.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import importlib.util
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np

from .. import SignatureTable, SimHasher, threads, topk_hamming_lookup
from .baselines import numpy_oneliner

__all__ = ["PipelineConfig", "percentiles", "interleaved", "busy_cores", "run_pipeline", "run_small_call",
           "format_pipeline", "noop_lookup_op", "PACE", "LOAD_RATIOS", "CONCURRENT_REQUESTS", "SMALL_CALL",
           "DISPATCHER_FLOOR"]

#: Seconds between the arrivals of paced single calls.
PACE = 0.001

#: Requests per concurrent-callers measurement, in units of ``requests``: long enough that starting the
#: threads and the first GIL handoffs do not set the rate.
CONCURRENT_REQUESTS = 10

#: ``(B, L, k)`` of the small call timed against the NumPy one-liner (64 bits, ``N = rows``).
SMALL_CALL = (1, 100, 16)

#: Label of the no-op op timed in the small call (:func:`noop_lookup_op`).
DISPATCHER_FLOOR = "no-op op (dispatcher floor)"

#: Title of the last section: p99 under load over the idle p50 of the same calls (first
#: column) and of the same call back to back (second column).
LOAD_RATIOS = "p99 under load / idle p50 (of the same calls; of back-to-back calls)"


@dataclasses.dataclass(frozen=True)
class PipelineConfig:
    """Sizes of the pipeline benchmark.

    Attributes
    ----------
    candidates, length, rows, dim, bits, k : int
        Serving: targets per request, the user's sequence length, items in
        the table, embedding dimension, signature bits, retrieved items.
    batch, train_length : int
        Training: batch size and sequence length (same table, ``dim``, ``k``).
    requests : int
        Requests (and training steps, single calls) timed per measurement.
    """

    candidates: int = 1024
    length: int = 1024
    rows: int = 100_000
    dim: int = 64
    bits: int = 256
    k: int = 48
    batch: int = 128
    train_length: int = 1000
    requests: int = 200


def percentiles(call: Callable[[], Any], n: int, pace: float = 0.0) -> tuple[float, float, np.ndarray]:
    """p50 and p99 seconds of ``n`` calls (after one untimed call), and the samples.

    ``pace > 0``: the thread sleeps ``pace`` seconds before each call (the
    sleep is not timed), as a server waits for its next request.

    Examples
    --------
    >>> p50, p99, samples = percentiles(lambda: None, 10)
    >>> samples.shape, p50 <= p99
    ((10,), True)
    """
    call()
    samples = np.empty(n)
    for i in range(n):
        if pace:
            time.sleep(pace)
        start = time.perf_counter()
        call()
        samples[i] = time.perf_counter() - start
    return float(np.percentile(samples, 50)), float(np.percentile(samples, 99)), samples


def interleaved(calls: dict[str, Callable[[], Any]], n: int) -> dict[str, np.ndarray]:
    """Seconds of each call over ``n`` rounds that call every one once, in turn (after one untimed round).

    A noisy neighbour or a frequency change then slows every call alike, so
    ratios of their percentiles hold within the run. Each round calls them
    in a new random order: a call pays for the caches that the call before
    it left behind, so every call follows every other alike.

    Examples
    --------
    >>> samples = interleaved({"a": lambda: None, "b": lambda: sum(range(100))}, 5)
    >>> sorted(samples), samples["a"].shape
    (['a', 'b'], (5,))
    """
    for call in calls.values():
        call()
    samples = {name: np.empty(n) for name in calls}
    order = list(calls.items())
    shuffles = np.random.default_rng(0)
    clock = time.perf_counter
    for i in range(n):
        for j in shuffles.permutation(len(order)):
            name, call = order[j]
            start = clock()
            call()
            samples[name][i] = clock() - start
    return samples


@contextlib.contextmanager
def busy_cores(count: int | None = None) -> Iterator[None]:
    """Keep ``count`` (default: every core) background processes spinning inside the block."""
    procs = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(count or os.cpu_count() or 1)]
    try:
        time.sleep(0.5)  # let them start
        yield
    finally:
        for p in procs:
            p.kill()
        for p in procs:
            p.wait()


def _progress(message: str) -> None:
    print(f"[pipeline] {message}", file=sys.stderr, flush=True)


def _serving(cfg: PipelineConfig, rng: np.random.Generator) -> list[tuple[str, float, float]]:
    embedding = rng.standard_normal((cfg.rows, cfg.dim), dtype=np.float32)
    hasher = SimHasher(cfg.dim, cfg.bits, seed=1)
    table = SignatureTable(embedding, hasher).signatures
    requests = [(embedding[rng.integers(0, cfg.rows, cfg.candidates)], rng.integers(0, cfg.rows, cfg.length))
                for _ in range(8)]
    # Every step cycles through the same requests, alone as in the loop (so that caches are as warm).
    queries = [hasher(cand) for cand, _ in requests]
    found = [topk_hamming_lookup(q, seq, table, cfg.k)[0] for q, (_, seq) in zip(queries, requests)]
    turn = {"i": 0}

    def next_request() -> int:
        turn["i"] = (turn["i"] + 1) % len(requests)
        return turn["i"]

    def loop() -> np.ndarray:
        cand, seq = requests[next_request()]
        idx, _ = topk_hamming_lookup(hasher(cand), seq, table, cfg.k)
        return np.where(idx >= 0, seq[idx], -1)

    def gather() -> np.ndarray:
        i = next_request()
        return np.where(found[i] >= 0, requests[i][1][found[i]], -1)

    parts = {
        "hash candidates": lambda: hasher(requests[next_request()][0]),
        "fused lookup": lambda: topk_hamming_lookup(queries[(i := next_request())], requests[i][1], table, cfg.k),
        "gather retrieved ids": gather,
    }
    return _loop_and_parts("serving request", loop, parts, cfg.requests)


def _loop_and_parts(name: str, loop: Callable[[], Any], parts: dict[str, Callable[[], Any]],
                    n: int) -> list[tuple[str, float, float]]:
    """Rows ``(label, p50, p99)``: each part alone, their sum, the loop, and the ratio row.

    The parts and the loop are timed interleaved, one call of each per round,
    so that a noisy neighbour slows them alike; the ratio row holds the
    ratios of the loop's p50 and p99 to the sums of the parts'.
    """
    calls = {**{f"  {label} (alone)": part for label, part in parts.items()}, name: loop}
    _progress(f"{name}: its {len(parts)} parts alone and the whole loop, interleaved, {n} rounds")
    samples = interleaved(calls, n)
    stats = {label: (float(np.percentile(t, 50)), float(np.percentile(t, 99))) for label, t in samples.items()}
    rows = [(label, *stats[label]) for label in calls if label != name]
    total50, total99 = sum(r[1] for r in rows), sum(r[2] for r in rows)
    p50, p99 = stats[name]
    return [*rows, ("  sum of the parts", total50, total99), (name, p50, p99),
            ("  ratio loop / parts", p50 / total50, p99 / total99)]


def _training(cfg: PipelineConfig) -> list[tuple[str, float, float]]:
    import torch

    from ..torch import ETAAttention, SignatureCache

    torch.manual_seed(0)
    emb = torch.nn.Embedding(cfg.rows, cfg.dim)
    eta = ETAAttention(cfg.dim, 64, cfg.k, heads=2)
    head = torch.nn.Sequential(torch.nn.Linear(2 * cfg.dim, 64), torch.nn.ReLU(), torch.nn.Linear(64, 1))
    params = [*emb.parameters(), *eta.parameters(), *head.parameters()]
    opt = torch.optim.SGD(params, lr=0.01)
    cache = SignatureCache(emb, eta.retriever)
    cache.attach(opt)  # rehash the rows each optimizer step changes
    ids = torch.randint(0, cfg.rows, (cfg.batch, cfg.train_length))
    target = torch.randint(0, cfg.rows, (cfg.batch,))
    mask = torch.rand(cfg.batch, cfg.train_length) < 0.95
    label = torch.rand(cfg.batch, 1).round()
    loss_fn = torch.nn.BCEWithLogitsLoss()

    def rest(t: torch.Tensor, values: torch.Tensor, found_mask: torch.Tensor) -> None:
        interest = eta.attention(t, values, found_mask)
        loss = loss_fn(head(torch.cat([t, interest], dim=1)), label)
        opt.zero_grad()
        loss.backward()
        opt.step()

    def step() -> None:
        t = emb(target)
        found = eta.retriever(t, mask=mask, seq_ids=ids, cache=cache)
        rest(t, found.values, found.mask)

    with torch.no_grad():
        found = eta.retriever(emb(target), mask=mask, seq_ids=ids, cache=cache)
    values = found.values.clone().requires_grad_(True)

    def retrieval() -> None:
        with torch.no_grad():
            eta.retriever(emb(target), mask=mask, seq_ids=ids, cache=cache)

    parts = {
        "retrieval (no grad)": retrieval,
        "attention + head, forward + backward + SGD": lambda: rest(emb(target), values, found.mask),
    }
    return _loop_and_parts("training step", step, parts, max(10, cfg.requests // 10))


def _single_calls(cfg: PipelineConfig, rng: np.random.Generator) -> list[tuple[str, float, float]]:
    table = rng.integers(0, 2**63, size=(cfg.rows, 1), dtype=np.uint64)
    op = None
    if importlib.util.find_spec("torch") is not None:
        import torch

        import etaretrieval.torch  # noqa: F401

        op = torch.ops.etaretrieval.topk_hamming_lookup
    rows = []
    for batch in (1, 4, 16, 64):
        query = table[:batch].copy()
        ids = rng.integers(0, cfg.rows, (batch, 100 if batch == 1 else cfg.length))
        length = ids.shape[1]
        _progress(f"single calls: B={batch}, L={length}, {cfg.requests} calls back to back and paced")
        calls: dict[str, Callable[[], Any]] = {
            "topk_hamming_lookup": functools.partial(topk_hamming_lookup, query, ids, table, cfg.k)}
        if op is not None:
            tq, ti, tt = (torch.from_numpy(a.view(np.int64) if a.dtype == np.uint64 else a)
                          for a in (query, ids, table))
            calls["torch op"] = functools.partial(op, tq, ti, tt, cfg.k)
        for name, call in calls.items():
            for how, pace in (("", 0.0), (f", {PACE * 1e3:g} ms apart", PACE)):
                p50, p99, _ = percentiles(call, cfg.requests, pace)
                rows.append((f"{name} B={batch} L={length}{how}", p50, p99))
    return rows


@functools.lru_cache(maxsize=None)
def noop_lookup_op() -> Any:
    """A no-op op registered as ``etaretrieval::topk_hamming_lookup`` is (its schema, a Python kernel for any device).

    Its kernel returns two tensors made once: a call of it costs what the
    dispatcher costs alone, the floor under any torch op with a Python kernel.
    """
    import torch

    import etaretrieval.torch  # noqa: F401

    schema = str(torch.ops.etaretrieval.topk_hamming_lookup.default._schema)
    library = torch.library.Library("etaretrieval_bench", "FRAGMENT")
    library.define(schema.replace("etaretrieval::topk_hamming_lookup", "noop_lookup"))
    outputs = (torch.zeros((1, 1), dtype=torch.int64), torch.zeros((1, 1), dtype=torch.int32))
    library.impl("noop_lookup", lambda *args, **kwargs: outputs, "CompositeExplicitAutograd")
    _LIBRARIES.append(library)  # a library's registrations last as long as the object
    return torch.ops.etaretrieval_bench.noop_lookup


_LIBRARIES: list[Any] = []


def run_small_call(cfg: PipelineConfig, rng: np.random.Generator, rounds: int | None = None
                   ) -> list[tuple[str, float, float]]:
    """Rows ``(label, p50, p99)`` of the :data:`SMALL_CALL` by each method, interleaved, then the ratios to NumPy.

    ``rounds`` defaults to ten times ``cfg.requests``.
    """
    batch, length, k = SMALL_CALL
    table = rng.integers(0, 2**63, size=(cfg.rows, 1), dtype=np.uint64)
    query = table[:batch].copy()
    ids = rng.integers(0, cfg.rows, (batch, length))
    numpy_name = "NumPy one-liner"
    calls: dict[str, Callable[[], Any]] = {
        numpy_name: functools.partial(numpy_oneliner, query, ids, table, k),
        "topk_hamming_lookup": functools.partial(topk_hamming_lookup, query, ids, table, k),
    }
    if importlib.util.find_spec("torch") is not None:
        import torch

        import etaretrieval.torch as et

        tq, ti, tt = (torch.from_numpy(a.view(np.int64) if a.dtype == np.uint64 else a) for a in (query, ids, table))
        calls["torch front end"] = functools.partial(et.topk_hamming_lookup, tq, ti, tt, k)
        calls["torch op"] = functools.partial(torch.ops.etaretrieval.topk_hamming_lookup, tq, ti, tt, k)
        calls[DISPATCHER_FLOOR] = functools.partial(noop_lookup_op(), tq, ti, tt, k)
        flat, offsets = ti.reshape(-1), torch.arange(batch + 1) * length  # the same rows, ragged
        calls["torch front end, offsets"] = functools.partial(et.topk_hamming_lookup, tq, flat, tt, k, offsets=offsets)
        jagged = torch.nested.nested_tensor_from_jagged(flat, offsets)
        calls["torch front end, jagged ids"] = functools.partial(et.topk_hamming_lookup, tq, jagged, tt, k)
    count = rounds or 10 * cfg.requests
    _progress(f"small call: B={batch}, L={length}, k={k}, {count} rounds of {len(calls)} methods in turn")
    stats = {name: (float(np.median(s)), float(np.percentile(s, 99))) for name, s in interleaved(calls, count).items()}
    what = f"B={batch} L={length} k={k}"
    rows = [(f"{name} {what}", p50, p99) for name, (p50, p99) in stats.items()]
    base = stats[numpy_name]
    rows += [(f"  ratio {name} / {numpy_name}", p50 / base[0], p99 / base[1])
             for name, (p50, p99) in stats.items() if name != numpy_name]
    return rows


def _load_ratios(idle: list[tuple[str, float, float]],
                 loaded: list[tuple[str, float, float]]) -> list[tuple[str, float, float]]:
    """Per loaded single-call row: ``(label, p99 loaded / idle p50 of the same calls, ... / idle back-to-back p50)``.

    A paced call's idle p50 includes waking from the pause (caches and
    predictors gone cold, an idle core); the back-to-back p50 is the call at
    its fastest: the second ratio is the stricter one.
    """
    idle_p50 = {label: p50 for label, p50, _ in idle}
    return [(f"  ratio {label}", p99 / idle_p50[label], p99 / idle_p50[label.split(",")[0]])
            for label, _, p99 in loaded]


def _concurrent(cfg: PipelineConfig, rng: np.random.Generator) -> list[tuple[str, float, float]]:
    """Rows ``(label, requests/s, 0)`` and the 4-to-1 throughput ratios."""
    table = rng.integers(0, 2**63, size=(cfg.rows, 1), dtype=np.uint64)
    query = table[:64].copy()
    ids = rng.integers(0, cfg.rows, (64, cfg.length))
    topk_hamming_lookup(query, ids, table, cfg.k)
    rows = []
    for per_request in (1, None):
        rates = []
        for callers in (1, 4):
            what = "1 thread" if per_request == 1 else "default threads"
            _progress(f"concurrent callers: {callers} Python thread(s), {what} per request")
            count = max(1, CONCURRENT_REQUESTS * cfg.requests // callers)

            def work(per_request: int | None, count: int) -> None:
                with threads(per_request) if per_request else contextlib.nullcontext():
                    for _ in range(count):
                        topk_hamming_lookup(query, ids, table, cfg.k)

            workers = [threading.Thread(target=work, args=(per_request, count)) for _ in range(callers)]
            start = time.perf_counter()
            for w in workers:
                w.start()
            for w in workers:
                w.join()
            rates.append(count * callers / (time.perf_counter() - start))
            rows.append((f"B=64 requests/s, {callers} caller(s), {what} each", rates[-1], 0.0))
        rows.append((f"  ratio 4 callers / 1 ({what} each)", rates[1] / rates[0], 0.0))
    return rows


def run_pipeline(cfg: PipelineConfig, *, load: bool = True, seed: int = 0) -> dict[str, list[tuple[str, float, float]]]:
    """Every measurement idle, then (``load=True``) under a busy process per core.

    Returns
    -------
    dict
        Section title -> rows ``(label, p50 s, p99 s)``; ratio rows hold ratios.
    """
    results: dict[str, list[tuple[str, float, float]]] = {}
    modes: list[tuple[str, contextlib.AbstractContextManager[None]]] = [("idle", contextlib.nullcontext())]
    if load:
        modes.append((f"{os.cpu_count()} busy processes", busy_cores()))
    for mode, ctx in modes:
        _progress(f"--- {mode} ---")
        with ctx:
            rng = np.random.default_rng(seed)
            results[f"serving loop ({mode})"] = _serving(cfg, rng)
            if importlib.util.find_spec("torch") is not None:
                results[f"training step ({mode})"] = _training(cfg)
            results[f"single-call latency ({mode})"] = _single_calls(cfg, rng)
            results[f"concurrent callers ({mode})"] = _concurrent(cfg, rng)
            results[f"small call against NumPy ({mode})"] = run_small_call(cfg, rng)
    if load:
        results[LOAD_RATIOS] = _load_ratios(
            results["single-call latency (idle)"], results[f"single-call latency ({modes[1][0]})"])
    return results


def format_pipeline(cfg: PipelineConfig, results: dict[str, list[tuple[str, float, float]]]) -> str:
    """The tables of :func:`run_pipeline`: p50 and p99 in milliseconds, and the ratios.

    Examples
    --------
    >>> print(format_pipeline(PipelineConfig(), {"s": [("a", 0.001, 0.002), ("  ratio loop / parts", 1.1, 1.2)]}))
    ... # doctest: +NORMALIZE_WHITESPACE
    serving: 1024 candidates, L=1024, N=100000, d=64, 256 bits, k=48; training: B=128, L=1000, 64 bits
    <BLANKLINE>
    s
      what                            p50 ms     p99 ms
      a                                1.000      2.000
        ratio loop / parts             1.10x      1.20x
    """
    lines = [(f"serving: {cfg.candidates} candidates, L={cfg.length}, N={cfg.rows}, d={cfg.dim}, {cfg.bits} bits, "
              f"k={cfg.k}; training: B={cfg.batch}, L={cfg.train_length}, 64 bits")]
    for title, rows in results.items():
        lines += ["", title, f"  {'what':<52}{'p50 ms':>10}{'p99 ms':>11}"]
        for label, p50, p99 in rows:
            if "requests/s" in label:
                lines.append(f"  {label:<52}{p50:>10.0f}")
            elif "ratio" in label:
                lines.append(f"  {label:<52}{p50:>9.2f}x" + (f"{p99:>10.2f}x" if p99 else ""))
            else:  # a fourth decimal (0.1 microseconds) for single small calls
                digits = 3 if p50 >= 1e-4 else 4
                lines.append(f"  {label:<52}{p50 * 1e3:>10.{digits}f}{p99 * 1e3:>11.{digits}f}")
    return "\n".join(lines)
