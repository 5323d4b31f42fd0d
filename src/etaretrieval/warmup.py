"""Compile ahead what a configuration's first calls would: ``python -m etaretrieval.warmup``.

Numba compiles a kernel on its first call with each combination of argument
types and keeps the machine code in its on-disk cache (see
:mod:`etaretrieval._jit`); a new container, CI job or notebook on a new
machine pays the compile on its first call. Running this module once at
image-build time (or in a CI step whose ``NUMBA_CACHE_DIR`` is cached) moves
that cost out of the first request::

    NUMBA_CACHE_DIR=/opt/numba-cache python -m etaretrieval.warmup --ids int32 --lengths --torch

The warm-up calls the public functions (and the torch ops) on small inputs
(a tiny call and one past the size thresholds of the call path), each
variant in the calling thread and split over two threads, so
it compiles exactly what real calls of those kinds use, whatever the kernels'
signatures. A call compiles the variant of the kernels its signature width
and table size select (one word, two, four, more; tables above or below
``etaretrieval.cpu.topk.CACHED_TABLE_BYTES``): the step labelled 64 bits
also runs 128-bit signatures, the 256-bit one 320-bit signatures and large
tables, so every width is warmed. One progress line per variant says what was compiled and how long
it took. Results are discarded; nothing else is changed.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any, TextIO

import numpy as np

from . import config
from ._jit import CACHE, PURE_PYTHON
from ._threads import threads
from .cpu.topk import CACHED_TABLE_BYTES
from .distance import hamming
from .ragged import topk_hamming_lookup_ragged, topk_hamming_ragged
from .sdim import sdim_buckets, sdim_codes, sdim_from_buckets, sdim_group_sums, sdim_pool
from .simhash import hyperplanes, pack_signatures
from .topk import topk_hamming, topk_hamming_lookup

__all__ = ["OPS", "ID_DTYPES", "FLOAT_DTYPES", "Step", "steps", "warmup", "main"]

#: The operations that can be warmed up: the fused lookup with ``(B, L)`` or shared ``(L,)`` ids, top-K
#: over ``(B, L, W)`` or shared ``(L, W)`` keys, both over ragged rows (flat values and offsets), the
#: Hamming distance, the signature projection and SDIM.
OPS = ("lookup", "lookup-shared", "topk", "topk-shared", "ragged", "hamming", "pack", "sdim")
#: Item-id dtypes (each is a compiled variant of the lookups).
ID_DTYPES = ("int64", "int32", "int16", "int8", "uint64", "uint32", "uint16", "uint8")
#: Floating dtypes of embeddings (:func:`pack_signatures`) and SDIM values.
FLOAT_DTYPES = ("float32", "float64")
_TORCH_ID_DTYPES = ("int64", "int32", "int16", "int8", "uint8")  # the integer dtypes torch tensors carry

_N, _K, _D = 20, 4, 4  # table rows, k, embedding width
#: ``(B, L)`` of the calls: a tiny one, and one above the size thresholds of the call path (the small-call fast
#: path takes ``B x L x W`` up to ``1 << 15``), so that both paths are compiled.
_SIZES = ((3, 9), (8, 4500))


@dataclass(frozen=True)
class Step:
    """One variant to compile: a label for the progress line and the calls that compile it."""

    label: str
    calls: tuple[Callable[[], object], ...]

    def run(self) -> None:
        """Each call in the calling thread, then split over two threads (the row-range path of big calls)."""
        for call in self.calls:
            call()
        old = config.SERIAL_WORK
        config.SERIAL_WORK = 0
        try:
            with threads(2):
                for call in self.calls:
                    call()
        finally:
            config.SERIAL_WORK = old


def _step(label: str, *calls: Callable[[], object]) -> Step:
    return Step(label, calls)


def _validity(size: tuple[int, int], lengths: bool, mask: bool, padding: bool) -> list[tuple[str, dict[str, Any]]]:
    """``(label, keyword arguments)`` of the valid-position variants asked for (always the plain call)."""
    rng = np.random.default_rng(0)
    batch, length = size
    found: list[tuple[str, dict[str, Any]]] = [("", {})]
    if lengths:
        prefix = np.linspace(0, length, batch).astype(np.int64)  # empty to full rows
        found.append(("lengths", {"lengths": prefix}))
        found.append(("lengths, left padding", {"lengths": prefix, "padding_side": "left"}))
    if mask:
        found.append(("(B, L) mask", {"mask": rng.random(size) < 0.7}))
        found.append(("(L,) mask", {"mask": rng.random(length) < 0.7}))
    if padding:
        found.append(("padding id", {"padding_id": 0}))
    return found


def _strided(a: np.ndarray) -> np.ndarray:
    """``a`` as a non-contiguous view of the same values (every other element of a doubled last axis)."""
    return np.repeat(a, 2, axis=-1)[..., ::2]


def _join(*parts: str) -> str:
    return ", ".join(p for p in parts if p)


def _lookup_steps(id_dtypes: Sequence[str], validity: list[tuple[str, dict[str, Any]]], strided: bool,
                  shared: bool, query: np.ndarray, ids: np.ndarray, table: np.ndarray) -> list[Step]:
    found = []
    for dtype in id_dtypes:
        typed = (ids[0] if shared else ids).astype(dtype)
        what = f"shared {dtype} (L,) ids" if shared else f"{dtype} (B, L) ids"
        for label, kw in validity:
            found.append(_step(_join(f"topk_hamming_lookup: {what}", label),
                               partial(topk_hamming_lookup, query, typed, table, _K, **kw)))
        if strided:
            found.append(_step(f"topk_hamming_lookup: non-contiguous {what} and table",
                               partial(topk_hamming_lookup, query, _strided(typed), _strided(table), _K)))
    return found


def _topk_steps(validity: list[tuple[str, dict[str, Any]]], strided: bool, shared: bool,
                query: np.ndarray, keys: np.ndarray) -> list[Step]:
    what = "shared (L, W) keys" if shared else "(B, L, W) keys"
    found = [_step(_join(f"topk_hamming: {what}", label), partial(topk_hamming, query, keys, _K, **kw))
             for label, kw in validity if "padding_id" not in kw]
    if strided:
        found.append(_step(f"topk_hamming: non-contiguous {what}", partial(topk_hamming, query, _strided(keys), _K)))
    return found


def _ragged_steps(id_dtypes: Sequence[str], validity: list[tuple[str, dict[str, Any]]], query: np.ndarray,
                  ids: np.ndarray, table: np.ndarray, plain_only: bool) -> list[Step]:
    """The ragged lookup and top-K: each ``(B, L)`` row of ``ids`` as a ragged row (flat ids, offsets)."""
    offsets = np.arange(ids.shape[0] + 1) * ids.shape[1]
    flat = ids.ravel()
    found = []
    for label, kw in validity[:1] if plain_only else validity:
        mask = kw.get("mask")  # ragged rows have their own lengths: no lengths, no shared (L,) mask
        if "lengths" in kw or (mask is not None and np.ndim(mask) == 1):
            continue
        kw = {name: value.ravel() if name == "mask" else value for name, value in kw.items()}
        found += [_step(_join(f"topk_hamming_lookup_ragged: {dtype} ids", label),
                        partial(topk_hamming_lookup_ragged, query, flat.astype(dtype), table, _K, offsets, **kw))
                  for dtype in id_dtypes]
        if not plain_only and "padding_id" not in kw:
            found.append(_step(_join("topk_hamming_ragged", label),
                               partial(topk_hamming_ragged, query, table[flat], _K, offsets, **kw)))
    return found


def _from_buckets(query: np.ndarray, keys: np.ndarray, values: np.ndarray, **kw: Any) -> np.ndarray:
    return sdim_from_buckets(query, sdim_buckets(keys, values, 4, **kw))


def _sdim_steps(float_dtypes: Sequence[str], validity: list[tuple[str, dict[str, Any]]],
                query: np.ndarray, keys: np.ndarray) -> list[Step]:
    rng = np.random.default_rng(2)
    found = [_step("sdim_codes", partial(sdim_codes, keys, 4))]
    for dtype in float_dtypes:
        values = rng.standard_normal((*keys.shape[:2], _D)).astype(dtype)
        for label, kw in validity:
            if "padding_id" in kw or "padding_side" in kw:
                continue
            found.append(_step(_join(f"sdim: {dtype} values", label),
                               partial(sdim_group_sums, query, keys, values, 4, **kw),
                               partial(sdim_pool, query, keys, values, 4, **kw),
                               partial(_from_buckets, query, keys, values, **kw)))
        found.append(_step(f"sdim: {dtype} values, shared (L, d) sequence",
                           partial(sdim_group_sums, query, keys[0], values[0], 4),
                           partial(sdim_pool, query, keys[0], values[0], 4),
                           partial(_from_buckets, query, keys[0], values[0])))
        flat_keys, flat_values = keys.reshape(-1, keys.shape[-1]), values.reshape(-1, _D)
        offsets = np.arange(keys.shape[0] + 1) * keys.shape[1]  # each (B, L) row a ragged row
        ragged_kw: list[tuple[str, dict[str, Any]]] = [("", {})]
        if any("mask" in kw for _, kw in validity):
            ragged_kw.append(("flat mask", {"mask": np.arange(flat_keys.shape[0]) % 3 > 0}))
        for label, kw in ragged_kw:
            found.append(_step(_join(f"sdim: {dtype} values, ragged rows", label),
                               partial(sdim_group_sums, query, flat_keys, flat_values, 4, offsets=offsets, **kw),
                               partial(sdim_pool, query, flat_keys, flat_values, 4, offsets=offsets, **kw),
                               partial(_from_buckets, query, flat_keys, flat_values, offsets=offsets, **kw)))
    return found


#: Signature words of the steps (their labels' bits), each with the widths whose calls join its steps: one
#: word (and two), four (and five), and for plain lookups of two words or more a table above
#: ``CACHED_TABLE_BYTES``, select every variant of the kernels (``etaretrieval.cpu.topk.pass_variant``).
_WORDS = ((1, (2,)), (4, (5,)))


def _merged(steps: list[Step]) -> list[Step]:
    """One step per label, in order of first appearance, with the calls of every step of that label."""
    calls: dict[str, tuple[Callable[[], object], ...]] = {}
    for step in steps:
        calls[step.label] = calls.get(step.label, ()) + step.calls
    return [Step(label, these) for label, these in calls.items()]


def _numpy_steps(ops: Sequence[str], id_dtypes: Sequence[str], float_dtypes: Sequence[str],
                 validity: list[tuple[str, dict[str, Any]]], strided: bool, size: tuple[int, int]) -> list[Step]:
    rng = np.random.default_rng(0)
    batch = size[0]
    found: list[Step] = []
    for words, siblings in _WORDS:
        these: list[Step] = []
        for width in (words, *siblings):  # the sibling widths' calls join the steps of ``words``
            table = rng.integers(0, 2**63, size=(_N, width), dtype=np.int64).view(np.uint64)
            query, ids = table[:batch].copy(), rng.integers(1, _N, size=size)
            # a table above CACHED_TABLE_BYTES (one gather pass per word; all zeros: no memory touched but its rows')
            large = np.zeros((CACHED_TABLE_BYTES // (8 * width) + 1, width), dtype=np.uint64)
            for shared in (False, True):
                if ("lookup-shared" if shared else "lookup") in ops:
                    these += _lookup_steps(id_dtypes, validity, strided, shared, query, ids, table)
                    if width > 1 and not shared:
                        these += _lookup_steps(id_dtypes, validity[:1], False, shared, query, ids, large)
                if ("topk-shared" if shared else "topk") in ops:
                    these += _topk_steps(validity, strided, shared, query, table[ids[0] if shared else ids])
            if "ragged" in ops:
                these += _ragged_steps(id_dtypes, validity, query, ids, table, plain_only=False)
                if width > 1:
                    these += _ragged_steps(id_dtypes, validity, query, ids, large, plain_only=True)
            if "hamming" in ops and width == words:
                these.append(_step("hamming", partial(hamming, query[:, None], table[ids]),
                                   partial(hamming, query, query)))
        found += [Step(_join(step.label, f"{64 * words} bits"), step.calls) for step in _merged(these)]
    planes = hyperplanes(8, 128, seed=0)
    for dtype in float_dtypes if "pack" in ops else ():
        x = rng.standard_normal((*size, 8)).astype(dtype)
        found.append(_step(f"pack_signatures: {dtype} embeddings", partial(pack_signatures, x, planes),
                           partial(pack_signatures, x[0], planes, check_finite=False)))
    if "sdim" in ops:
        signatures = pack_signatures(rng.standard_normal((_N, 8)).astype(np.float32), planes)
        found += _sdim_steps(float_dtypes, validity, signatures[:batch], signatures[ids])
    return found


def _torch_steps(ops: Sequence[str], id_dtypes: Sequence[str], float_dtypes: Sequence[str],
                 validity: list[tuple[str, dict[str, Any]]], size: tuple[int, int]) -> list[Step]:
    import torch

    import etaretrieval.torch  # noqa: F401  (registers torch.ops.etaretrieval)

    op = torch.ops.etaretrieval
    rng = np.random.default_rng(1)
    valid = [(label, {k: torch.from_numpy(v) if isinstance(v, np.ndarray) else v for k, v in kw.items()})
             for label, kw in validity]
    table = torch.from_numpy(rng.integers(0, 2**62, size=(_N, 2), dtype=np.int64))
    ids = rng.integers(1, _N, size=size)
    query, keys = table[:size[0]].clone(), table[torch.from_numpy(ids)]
    found: list[Step] = []
    if "lookup" in ops or "lookup-shared" in ops:
        for dtype in [d for d in id_dtypes if d in _TORCH_ID_DTYPES]:
            typed = torch.from_numpy(ids.astype(dtype))
            found += [_step(_join(f"torch topk_hamming_lookup: {dtype} ids", label),
                            partial(op.topk_hamming_lookup, query, typed, table, _K, **kw)) for label, kw in valid]
    if "topk" in ops or "topk-shared" in ops:
        found += [_step(_join("torch topk_hamming", label), partial(op.topk_hamming, query, keys, _K, **kw))
                  for label, kw in valid if "padding_id" not in kw]
    planes = torch.from_numpy(hyperplanes(8, 128, seed=0))
    for dtype in float_dtypes if "pack" in ops else ():
        x = torch.from_numpy(rng.standard_normal((*size, 8)).astype(dtype))
        found.append(_step(f"torch pack_signatures: {dtype} embeddings", partial(op.pack_signatures, x, planes)))
    for dtype in float_dtypes if "sdim" in ops else ():
        values = torch.from_numpy(rng.standard_normal((*size, _D)).astype(dtype))

        def sdim(v: torch.Tensor = values) -> None:
            grad = v.clone().requires_grad_(True)
            op.sdim_group_sums(query, keys, grad, 4, 128).sum().backward()  # the backward kernel too
            op.sdim_from_buckets(query, op.sdim_buckets(keys, v, 4, 128))

        found.append(_step(f"torch sdim: {dtype} values (forward and backward)", sdim))
    return found


def steps(ops: Iterable[str] = ("lookup",), id_dtypes: Iterable[str] = ("int64",),
          float_dtypes: Iterable[str] = ("float32",), *, lengths: bool = False, mask: bool = False,
          padding: bool = False, strided: bool = False, torch: bool = False) -> list[Step]:
    """The variants a configuration needs, each as a :class:`Step` that calls the public functions.

    Parameters
    ----------
    ops : iterable of str
        Names from :data:`OPS` (``ragged``: the ragged lookup and top-K, with
        the masks and padding ids asked for).
    id_dtypes : iterable of str
        Item-id dtypes from :data:`ID_DTYPES` (the lookups).
    float_dtypes : iterable of str
        Embedding / SDIM value dtypes from :data:`FLOAT_DTYPES`.
    lengths, mask, padding : bool
        Also the variants with ``lengths`` (right and left padding), masks,
        and a ``padding_id`` (the lookups); the plain call is always included.
    strided : bool
        Also non-contiguous ids, tables and keys (their own variants).
    torch : bool
        Also the torch ops (``torch.ops.etaretrieval``) of the same kinds.

    Returns
    -------
    list of Step
    """
    ops, id_dtypes, float_dtypes = list(ops), list(id_dtypes), list(float_dtypes)
    for name, given, known in [("op", ops, OPS), ("id dtype", id_dtypes, ID_DTYPES),
                               ("float dtype", float_dtypes, FLOAT_DTYPES)]:
        unknown = sorted(set(given) - set(known))
        if unknown:
            raise ValueError(f"unknown {name} {', '.join(unknown)}; expected some of {', '.join(known)}")
    per_size = []
    for size in _SIZES:
        validity = _validity(size, lengths, mask, padding)
        found = _numpy_steps(ops, id_dtypes, float_dtypes, validity, strided, size)
        if torch:
            found += _torch_steps(ops, id_dtypes, float_dtypes, validity, size)
        per_size.append(found)
    return [Step(variants[0].label, tuple(call for step in variants for call in step.calls))
            for variants in zip(*per_size)]


def _compiles() -> tuple[int, int]:
    """Variants compiled and loaded from the on-disk cache so far, over the library's Numba functions."""
    compiled = loaded = 0
    for name, module in list(sys.modules.items()):
        if name.split(".")[0] != "etaretrieval" or module is None:
            continue
        for value in list(vars(module).values()):
            stats = getattr(value, "stats", None)
            if stats is not None and hasattr(stats, "cache_misses") and getattr(value, "__module__", None) == name:
                compiled += sum(stats.cache_misses.values())
                loaded += sum(stats.cache_hits.values())
    return compiled, loaded


def warmup(work: Sequence[Step], out: TextIO | None = None) -> list[tuple[str, float]]:
    """Run each step, writing one progress line per step to ``out`` (default: standard output).

    Parameters
    ----------
    work : sequence of Step
        From :func:`steps`.
    out : file, optional
        Where the progress lines go.

    Returns
    -------
    list of (label, seconds)
        Each step's wall time (compiling, or loading from the cache).
    """
    out = sys.stdout if out is None else out
    seconds = []
    width = len(str(len(work)))
    for n, step in enumerate(work, 1):
        print(f"[{n:>{width}}/{len(work)}] {step.label} ...", end="", file=out, flush=True)
        before = _compiles()
        start = time.perf_counter()
        step.run()
        took = time.perf_counter() - start
        compiled, loaded = (a - b for a, b in zip(_compiles(), before))
        print(f" {took:.2f} s ({compiled} compiled, {loaded} loaded)", file=out, flush=True)
        seconds.append((step.label, took))
    return seconds


def _list(value: str, known: Sequence[str]) -> list[str]:
    names = [v.strip() for v in value.split(",") if v.strip()]
    return list(known) if names == ["all"] else names


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m etaretrieval.warmup``: compile a configuration's variants into Numba's cache."""
    parser = argparse.ArgumentParser(
        prog="python -m etaretrieval.warmup",
        description="Compile the kernels a configuration needs into Numba's on-disk cache (NUMBA_CACHE_DIR, "
                    "else next to the installed sources or the user's cache directory), with one progress "
                    "line per variant. Run it at image build or in a CI step whose cache is kept.")
    parser.add_argument("--ops", default="lookup", help=f"comma-separated, or 'all': {', '.join(OPS)} "
                        "(default: lookup)")
    parser.add_argument("--ids", default="int64", help=f"id dtypes, comma-separated, or 'all': {', '.join(ID_DTYPES)} "
                        "(default: int64)")
    parser.add_argument("--floats", default="float32", help="embedding / SDIM value dtypes: float32, float64, or "
                        "'all' (default: float32)")
    parser.add_argument("--lengths", action="store_true", help="also calls with lengths (right and left padding)")
    parser.add_argument("--mask", action="store_true", help="also calls with (B, L) and (L,) masks")
    parser.add_argument("--padding", action="store_true", help="also lookups with a padding_id")
    parser.add_argument("--strided", action="store_true", help="also non-contiguous ids, tables and keys")
    parser.add_argument("--torch", action="store_true", help="also the torch ops (needs torch)")
    parser.add_argument("--all", action="store_true", help="every op, dtype and variant (torch ops if installed)")
    args = parser.parse_args(argv)
    if args.all:
        try:
            import torch  # noqa: F401
        except ImportError:
            has_torch = False
        else:
            has_torch = True
        work = steps(OPS, ID_DTYPES, FLOAT_DTYPES, lengths=True, mask=True, padding=True, strided=True,
                     torch=has_torch)
    else:
        try:
            work = steps(_list(args.ops, OPS), _list(args.ids, ID_DTYPES), _list(args.floats, FLOAT_DTYPES),
                         lengths=args.lengths, mask=args.mask, padding=args.padding, strided=args.strided,
                         torch=args.torch)
        except ValueError as exc:
            parser.error(str(exc))
    if PURE_PYTHON or not CACHE:
        print("warning: NUMBA_DISABLE_JIT or ETARETRIEVAL_NO_CACHE is set: nothing is kept on disk", file=sys.stderr)
    where = os.environ.get("NUMBA_CACHE_DIR") or "Numba's default (next to the sources, else the user's cache)"
    print(f"etaretrieval warm-up: {len(work)} variants, cache: {where}", flush=True)
    start = time.perf_counter()
    warmup(work)
    print(f"done in {time.perf_counter() - start:.1f} s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
