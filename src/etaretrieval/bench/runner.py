"""Configurations, data, timing and the side-by-side table.

One :func:`run_config` call builds one data set and times every method on it
in the same process, interleaving the methods round by round so that a noisy
neighbour slows all of them alike; ratios are taken from that one run.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import time
import tracemalloc
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from .. import hyperplanes, pack_signatures, topk_hamming, topk_hamming_lookup
from . import baselines
from .floor import floor_lookup, floor_lookup_cuda

__all__ = [
    "CONFIGS",
    "Config",
    "Data",
    "Timing",
    "make_data",
    "time_interleaved",
    "run_config",
    "run_pack",
    "format_table",
    "set_threads",
    "signature_methods",
]


@dataclasses.dataclass(frozen=True)
class Config:
    """Sizes of one benchmark.

    Attributes
    ----------
    name : str
        Label in the tables.
    batch, length, rows, dim, bits, k : int
        Targets ``B``, sequence length ``L``, table rows ``N``, embedding
        dimension ``d``, signature bits and retrieved items.
    shared : bool
        One user's sequence (ids ``(L,)``) against every target, as in
        ranking; otherwise one sequence per target (``(B, L)``).
    """

    name: str
    batch: int
    length: int
    rows: int
    dim: int
    bits: int
    k: int
    shared: bool

    @property
    def behaviours(self) -> int:
        """Target-behaviour pairs scored per call, ``B * L``."""
        return self.batch * self.length


#: The two standard configurations: the ETA paper's serving setting and long sequences.
CONFIGS: dict[str, Config] = {
    "paper": Config("paper", batch=1024, length=1024, rows=100_000, dim=128, bits=256, k=48, shared=True),
    "long": Config("long", batch=256, length=10_000, rows=1_000_000, dim=128, bits=64, k=64, shared=False),
}


@dataclasses.dataclass(frozen=True)
class Data:
    """One data set: embeddings, their signatures and the retrieval inputs.

    Attributes
    ----------
    config : Config
        The sizes.
    embedding : numpy.ndarray
        ``(N, d)`` float32 item embeddings.
    planes : numpy.ndarray
        ``(d, bits)`` float32 SimHash hyperplanes.
    table : numpy.ndarray
        ``(N, W)`` uint64 signatures of ``embedding``.
    target_ids : numpy.ndarray
        ``(B,)`` int64 ids of the target items.
    target : numpy.ndarray
        ``(B, d)`` float32 target embeddings.
    query : numpy.ndarray
        ``(B, W)`` uint64 target signatures.
    ids : numpy.ndarray
        ``(B, L)`` or shared ``(L,)`` int64 behaviour ids.
    keys : numpy.ndarray
        ``table[ids]``: the pre-gathered behaviour signatures.
    """

    config: Config
    embedding: np.ndarray
    planes: np.ndarray
    table: np.ndarray
    target_ids: np.ndarray
    target: np.ndarray
    query: np.ndarray
    ids: np.ndarray
    keys: np.ndarray


def make_data(config: Config, seed: int = 0) -> Data:
    """Random standard-normal embeddings, uniform ids, signatures from :func:`pack_signatures`.

    Parameters
    ----------
    config : Config
        The sizes.
    seed : int, default 0
        Seed of the embeddings, ids and hyperplanes.

    Returns
    -------
    Data
        The data set.

    Examples
    --------
    >>> data = make_data(Config("tiny", 2, 5, 10, 4, 64, 3, shared=False))
    >>> data.ids.shape, data.table.shape, data.keys.shape
    ((2, 5), (10, 1), (2, 5, 1))
    """
    rng = np.random.default_rng(seed)
    embedding = rng.standard_normal((config.rows, config.dim), dtype=np.float32)
    planes = hyperplanes(config.dim, config.bits, seed)
    table = pack_signatures(embedding, planes)
    target_ids = rng.integers(0, config.rows, size=config.batch)
    shape = (config.length,) if config.shared else (config.batch, config.length)
    ids = rng.integers(0, config.rows, size=shape)
    return Data(
        config, embedding, planes, table, target_ids, embedding[target_ids], table[target_ids], ids, table[ids]
    )


#: A timed method: ``(name, call, fraction of the batch it processes, note)``.
Method = tuple[str, Callable[[], Any], float, str]


@dataclasses.dataclass(frozen=True)
class Timing:
    """Seconds per call of one method over the whole batch.

    Attributes
    ----------
    name : str
        The method.
    best, median : float
        Minimum and median over the repeats, scaled to the whole batch.
    fraction : float
        Share of the batch's rows timed (``1`` unless a slow method ran on a
        subset and was scaled).
    note : str
        What the row measures, for the table.
    """

    name: str
    best: float
    median: float
    fraction: float = 1.0
    note: str = ""


def time_interleaved(
    methods: Sequence[Method], repeat: int, sync: Callable[[], None] = lambda: None
) -> list[Timing]:
    """Time methods round-robin: ``repeat`` rounds, each method once per round.

    Each method is called once beforehand (compilation, caches, page faults).

    Parameters
    ----------
    methods : sequence of (name, call, fraction, note)
        ``call()`` processes ``fraction`` of the batch; its times are divided
        by ``fraction``.
    repeat : int
        Rounds, ``>= 1``.
    sync : callable, optional
        Called after each call before the clock stops (device synchronisation).

    Returns
    -------
    list of Timing
        In the order of ``methods``.

    Examples
    --------
    >>> [t.name for t in time_interleaved([("a", lambda: None, 1.0, ""), ("b", lambda: None, 0.5, "")], 2)]
    ['a', 'b']
    """
    for _, call, _, _ in methods:
        call()
        sync()
    samples: list[list[float]] = [[] for _ in methods]
    for _ in range(repeat):
        for times, (_, call, fraction, _) in zip(samples, methods):
            call()  # untimed: lets the previous method's thread pool go idle
            sync()
            start = time.perf_counter()
            call()
            sync()
            times.append((time.perf_counter() - start) / fraction)
    return [
        Timing(name, min(times), float(np.median(times)), fraction, note)
        for times, (name, _, fraction, note) in zip(samples, methods)
    ]


def set_threads(threads: int) -> None:
    """Use ``threads`` threads in torch and faiss (those importable).

    etaretrieval's own threads are bounded by :func:`etaretrieval.threads`,
    which the command line enters around the whole run.

    Parameters
    ----------
    threads : int
        Thread count.
    """
    if importlib.util.find_spec("torch") is not None:
        import torch

        torch.set_num_threads(threads)
    if importlib.util.find_spec("faiss") is not None:
        import faiss

        faiss.omp_set_num_threads(threads)


def _torch_op() -> Callable[..., Any] | None:
    """``torch.ops.etaretrieval.topk_hamming_lookup``, or ``None`` without torch or the plugin."""
    if importlib.util.find_spec("torch") is None:
        return None
    try:
        import torch

        import etaretrieval.torch  # noqa: F401  (registers the ops)
    except ImportError:
        return None
    return torch.ops.etaretrieval.topk_hamming_lookup


def _rows(ids: np.ndarray, subset: int, batch: int) -> tuple[int, np.ndarray]:
    """Rows a slow method runs on (all with shared ids, or when ``subset`` is 0) and their ids."""
    n = batch if subset <= 0 or ids.ndim == 1 else min(subset, batch)
    return n, ids if ids.ndim == 1 else ids[:n]


def _as_torch(*arrays: np.ndarray) -> list[Any]:
    """Zero-copy torch tensors; uint64 signatures as the int64 tensors that hold their bits."""
    import torch

    return [torch.from_numpy(a.view(np.int64) if a.dtype == np.uint64 else a) for a in arrays]


def signature_methods(
    query: np.ndarray, ids: np.ndarray, table: np.ndarray, keys: np.ndarray, k: int, subset: int = 0
) -> list[Method]:
    """The methods that need signatures only: floor, library, torch op, NumPy.

    Parameters
    ----------
    query, ids, table, keys : numpy.ndarray
        As in :class:`Data`.
    k : int
        Retrieved items.
    subset : int, default 0
        Rows that NumPy runs on with per-row sequences, scaled (``0``: all).

    Returns
    -------
    list of (name, call, fraction, note)
        For :func:`time_interleaved`; the floor first.
    """
    batch = query.shape[0]
    n, sub = _rows(ids, subset, batch)
    methods: list[Method] = [
        ("floor", lambda: floor_lookup(query, ids, table), 1.0, "read ids, gather, popcount; no selection"),
        ("etaretrieval topk_hamming_lookup", lambda: topk_hamming_lookup(query, ids, table, k), 1.0, "fused"),
        ("etaretrieval topk_hamming", lambda: topk_hamming(query, keys, k), 1.0, "keys pre-gathered (gather untimed)"),
    ]
    op = _torch_op()
    if op is not None:
        tq, tids, ttable = _as_torch(query, ids, table)
        methods.append(("torch.ops.etaretrieval.topk_hamming_lookup", lambda: op(tq, tids, ttable, k), 1.0, "torch op"))
    methods.append(
        ("numpy brute force", lambda: baselines.numpy_topk_lookup(query[:n], sub, table, k), n / batch,
         "bitwise_count + argpartition")
    )
    return methods


def _cpu_methods(data: Data, subset: int, threads: int) -> list[Method]:
    """Every CPU method on ``data``: :func:`signature_methods`, then torch and faiss."""
    cfg = data.config
    methods = signature_methods(data.query, data.ids, data.table, data.keys, cfg.k, subset)
    n, sub = _rows(data.ids, subset, cfg.batch)
    frac = n / cfg.batch
    if importlib.util.find_spec("torch") is not None:
        emb, target, planes, tsub = _as_torch(data.embedding, data.target[:n], data.planes, sub)
        methods += [
            ("torch inner product", lambda: baselines.torch_inner_product(target, tsub, emb, cfg.k), frac,
             "gather + einsum + topk (exact)"),
            ("torch ETA port", lambda: baselines.torch_eta_port(target, tsub, emb, planes, cfg.k), frac,
             "float bits, |a-b|.sum, topk"),
        ]
    if importlib.util.find_spec("faiss") is not None:
        how = "one call, all targets" if cfg.shared else f"per row, {threads} threads"
        query = data.query[:n]
        methods.append(
            ("faiss knn_hamming", lambda: baselines.faiss_knn_lookup(query, sub, data.table, cfg.k, threads=threads),
             frac, how)
        )
    return methods


def _cuda_methods(data: Data) -> tuple[list[Method], Callable[[], None]]:
    """The library on device arrays, and torch's CUDA baselines; ``SystemExit`` without a usable GPU."""
    try:
        from ..cuda._backend import cuda as cuda_module

        cuda = cuda_module()
    except ImportError as exc:
        raise SystemExit(f"--device cuda: {exc}") from None
    if not cuda.is_available():
        raise SystemExit("--device cuda: no CUDA GPU is visible (numba.cuda.is_available() is False)")
    cfg = data.config
    q, ids, table, keys = (cuda.to_device(a) for a in (data.query, data.ids, data.table, data.keys))
    try:
        topk_hamming_lookup(q, ids, table, cfg.k)
    except (TypeError, ValueError) as exc:
        raise SystemExit(f"--device cuda: this etaretrieval does not accept device arrays ({exc})") from None
    methods: list[Method] = [
        ("floor", lambda: floor_lookup_cuda(q, ids, table), 1.0, "read ids, gather, popcount; no selection, cuda"),
        ("etaretrieval topk_hamming_lookup", lambda: topk_hamming_lookup(q, ids, table, cfg.k), 1.0, "fused, cuda"),
        ("etaretrieval topk_hamming", lambda: topk_hamming(q, keys, cfg.k), 1.0, "keys pre-gathered, cuda"),
    ]
    syncs = [cuda.synchronize]
    if importlib.util.find_spec("torch") is not None:
        import torch

        if torch.cuda.is_available():
            dev = torch.device("cuda")
            host = _as_torch(data.embedding, data.target, data.planes, data.ids)
            emb, target, planes, tids = (t.to(dev) for t in host)
            op = _torch_op()
            if op is not None:
                oq, oids, otable = (t.to(dev) for t in _as_torch(data.query, data.ids, data.table))
                methods.append(("torch.ops.etaretrieval.topk_hamming_lookup", lambda: op(oq, oids, otable, cfg.k), 1.0,
                                "torch op, cuda"))
            methods += [
                ("torch inner product", lambda: baselines.torch_inner_product(target, tids, emb, cfg.k), 1.0, "cuda"),
                ("torch ETA port", lambda: baselines.torch_eta_port(target, tids, emb, planes, cfg.k), 1.0, "cuda"),
            ]
            syncs.append(torch.cuda.synchronize)

    def sync() -> None:
        for wait in syncs:
            wait()

    return methods, sync


def run_config(data: Data, *, repeat: int = 5, subset: int = 16, threads: int = 1, device: str = "cpu") -> list[Timing]:
    """Time every available method on ``data``.

    Parameters
    ----------
    data : Data
        From :func:`make_data`.
    repeat : int, default 5
        Rounds of :func:`time_interleaved`.
    subset : int, default 16
        Rows that the slow baselines (numpy, torch, faiss) run on when the
        sequences are per-row, scaled to the batch (``0``: all rows).
    threads : int, default 1
        Worker threads of the per-row faiss calls.
    device : {"cpu", "cuda"}
        Where the library runs; ``"cuda"`` raises ``SystemExit`` with a
        clear message when no GPU (or no device support) is available.

    Returns
    -------
    list of Timing
        The floor first (the CPU's or the GPU's); it is the reference of the
        ratios.
    """
    if device == "cuda":
        methods, sync = _cuda_methods(data)
        return time_interleaved(methods, repeat, sync)
    return time_interleaved(_cpu_methods(data, subset, threads), repeat)


def run_pack(x: np.ndarray, planes: np.ndarray, repeat: int = 3) -> list[tuple[Timing, int]]:
    """:func:`pack_signatures` against the bare BLAS projection it contains.

    Parameters
    ----------
    x : numpy.ndarray
        ``(n, d)`` float embeddings.
    planes : numpy.ndarray
        ``(d, bits)`` hyperplanes.
    repeat : int, default 3
        Rounds.

    Returns
    -------
    list of (Timing, int)
        ``x @ planes`` (allocating its ``(n, bits)`` result, as users write
        it), the same product into a preallocated buffer (BLAS alone), then
        :func:`pack_signatures`; each with its peak traced memory in bytes
        beyond its output (:mod:`tracemalloc`, which sees NumPy's allocations).
    """
    planes = planes.astype(x.dtype)
    words = (planes.shape[1] + 63) // 64
    product = np.empty((x.shape[0], planes.shape[1]), dtype=x.dtype)
    methods: list[Method] = [
        ("x @ planes", lambda: np.matmul(x, planes), 1.0, ""),
        ("x @ planes, out=", lambda: np.matmul(x, planes, out=product), 1.0, ""),
        ("pack_signatures", lambda: pack_signatures(x, planes), 1.0, ""),
    ]
    timings = time_interleaved(methods, repeat)
    outputs = [product.nbytes, 0, x.shape[0] * words * 8]
    peaks = []
    for (_, call, _, _), out_bytes in zip(methods, outputs):
        tracemalloc.start()
        call()
        peaks.append(tracemalloc.get_traced_memory()[1] - out_bytes)
        tracemalloc.stop()
    return list(zip(timings, peaks))


def _rate(x: float) -> str:
    """A rate with an SI prefix, e.g. ``1.2G``."""
    for scale, prefix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if x >= scale:
            return f"{x / scale:.3g}{prefix}"
    return f"{x:.3g}"


def format_table(config: Config, timings: Sequence[Timing], title: str = "") -> str:
    """The side-by-side table: time, behaviours per second and the ratio to the first row.

    Parameters
    ----------
    config : Config
        The sizes (for the title and the behaviours per call).
    timings : sequence of Timing
        The first row is the reference of the ratio column.
    title : str, optional
        Extra text for the title line.

    Returns
    -------
    str
        A plain-text table.

    Examples
    --------
    >>> cfg = Config("tiny", 2, 5, 10, 4, 64, 3, shared=False)
    >>> print(format_table(cfg, [Timing("floor", 1e-3, 1e-3), Timing("x", 2e-3, 3e-3, 0.5, "half")]))
    ... # doctest: +NORMALIZE_WHITESPACE
    tiny: B=2 L=5 N=10 d=4 bits=64 k=3 per-row sequences
    method  best ms  median ms  behaviours/s  x floor  note
    floor     1.000      1.000           10k     1.00
    x         2.000      3.000            5k     2.00  half [1 of 2 rows, scaled]
    """
    seqs = "one shared sequence" if config.shared else "per-row sequences"
    head = f"{config.name}: B={config.batch} L={config.length} N={config.rows} d={config.dim} " \
        f"bits={config.bits} k={config.k} {seqs}{' ' + title if title else ''}"
    ref = timings[0]
    rows = [["method", "best ms", "median ms", "behaviours/s", f"x {ref.name}", "note"]]
    for t in timings:
        note = t.note
        if t.fraction < 1:
            n = round(t.fraction * config.batch)
            note = f"{note} [{n} of {config.batch} rows, scaled]".strip()
        rows.append([t.name, f"{t.best * 1e3:.3f}", f"{t.median * 1e3:.3f}", _rate(config.behaviours / t.best),
                     f"{t.best / ref.best:.2f}", note])
    widths = [max(len(r[i]) for r in rows) for i in range(5)]
    lines = [head]
    for r in rows:
        cells = [r[0].ljust(widths[0])] + [r[i].rjust(widths[i]) for i in range(1, 5)] + [r[5]]
        lines.append("  ".join(cells).rstrip())
    return "\n".join(lines)
