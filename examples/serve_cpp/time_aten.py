"""Time the ATen form and the native kernel of ``topk_hamming_lookup`` against the Numba kernel, in one process.

For each standard configuration of ``python -m etaretrieval.bench`` (``paper``:
1,024 targets against one shared sequence of L = 1,024, 256 bits, k = 48;
``long``: 256 rows of L = 10,000 from a 1,000,000-row table, 64 bits, k = 64)
it times, on the same random signatures:

- ``torch.ops.etaretrieval.topk_hamming_lookup`` (the Numba kernel);
- a module calling that operator, exported, decomposed with
  ``etaretrieval.torch.decompositions()`` (the ATen form,
  :func:`etaretrieval.torch.aten.topk_hamming_lookup`), compiled by
  AOTInductor into a package and loaded with
  ``torch._inductor.aoti_load_package`` (its C++ runtime, called from Python);
- the same with ``decompositions(native=True)``: the package calls the native
  C++ kernel (``torch.ops.etaretrieval_native``, through AOTInductor's proxy
  executor; the library is built with ``etaretrieval.torch.native.build`` in
  a temporary folder and loaded first);
- ``torch.ops.etaretrieval_native.topk_hamming_lookup`` called directly
  (the native kernel, eager);
- the ATen form under ``torch.compile`` (Inductor's generated code);
- with ``--pieces``, its two parts: the distances alone (``torch.compile``)
  and ``torch.topk`` of the keys it ranks (eager, the same ATen call the
  compiled forms make).

under each thread setting asked for: ``default`` (torch's default threads,
the Numba kernel on the library's default) and ``1`` (one torch thread, the
kernel inside ``etaretrieval.threads(1)``). Generated code takes the thread
count it is compiled under, so each setting gets its own package. Every call
runs under its setting and all take turns, in a new random order each round;
each is first checked equal to the kernel. Prints the load average, the
medians and their ratios to the kernel of the same setting.

Run: ``python examples/serve_cpp/time_aten.py [--configs paper] [--threads default 1] [--pieces]``
(cmake and a C++17 compiler build the native library, about 15 s).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import torch

import etaretrieval
from etaretrieval.bench.pipeline import interleaved
from etaretrieval.bench.runner import CONFIGS
from etaretrieval.bench.sweep import random_inputs
from etaretrieval.torch import aten, decompositions, native


class Lookup(torch.nn.Module):
    """``torch.ops.etaretrieval.topk_hamming_lookup`` with a fixed ``k``, as a module to export."""

    def __init__(self, k: int) -> None:
        super().__init__()
        self.k = k

    def forward(self, query: torch.Tensor, ids: torch.Tensor, table: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return torch.ops.etaretrieval.topk_hamming_lookup(query, ids, table, self.k)


def distances(query: torch.Tensor, ids: torch.Tensor, table: torch.Tensor) -> torch.Tensor:
    """The distances part of the ATen form (all ids valid): ``(B, L)`` int32."""
    keys = aten._halves(table)[:, ids.unsqueeze(0) if ids.dim() == 1 else ids]
    return aten._hamming_halves(aten._halves(query).unsqueeze(-1), aten._stored(keys) if keys.shape[1] == 1 else keys)


def tensors(name: str) -> tuple[tuple[torch.Tensor, ...], int]:
    """``(query, ids, table)`` int64 tensors of configuration ``name``, and its ``k``."""
    cfg = CONFIGS[name]
    query, ids, table, _ = random_inputs(cfg)
    as_t = [torch.from_numpy(a.view(np.int64) if a.dtype == np.uint64 else a) for a in (query, ids, table)]
    return (as_t[0], as_t[1], as_t[2]), cfg.k


def aoti(k: int, args: tuple[torch.Tensor, ...], where: Path, use_native: bool) -> Callable[..., object]:
    """``Lookup(k)`` exported, decomposed (the top-K on the native kernel if ``use_native``, else its ATen form),
    compiled and packaged by AOTInductor, loaded back."""
    program = torch.export.export(Lookup(k), args).run_decompositions(decompositions(native=use_native))
    name = f"lookup_{k}_{'native' if use_native else 'aten'}.pt2"
    path = torch._inductor.aoti_compile_and_package(program, package_path=str(where / name))
    return torch._inductor.aoti_load_package(path)


class Setting:
    """A thread setting: torch's threads, and the Numba kernel's (``None``: the library's default)."""

    def __init__(self, name: str, default_torch_threads: int) -> None:
        self.name = name
        self.torch_threads = default_torch_threads if name == "default" else int(name)
        self.numba_threads = None if name == "default" else int(name)

    @contextlib.contextmanager
    def active(self) -> Iterator[None]:
        torch.set_num_threads(self.torch_threads)
        with contextlib.nullcontext() if self.numba_threads is None else etaretrieval.threads(self.numba_threads):
            yield

    def label(self) -> str:
        numba = "library default" if self.numba_threads is None else self.numba_threads
        return f"threads {self.name}: torch {self.torch_threads}, numba {numba}"

    def wrap(self, call: Callable[[], object]) -> Callable[[], object]:
        def run() -> object:
            with self.active():
                return call()

        return run


def calls_for(
    setting: Setting, args: tuple[torch.Tensor, ...], k: int, compile_too: bool, pieces: bool, where: Path
) -> dict[str, Callable[[], object]]:
    """The timed calls of one setting, built (and checked) under it."""
    kernel = torch.ops.etaretrieval.topk_hamming_lookup
    native_op = torch.ops.etaretrieval_native.topk_hamming_lookup
    calls: dict[str, Callable[[], object]] = {"numba kernel": lambda: kernel(*args, k)}
    with setting.active():
        want = kernel(*args, k)
        where.mkdir()
        start = time.perf_counter()
        aten_package, native_package = aoti(k, args, where, False), aoti(k, args, where, True)
        print(f"  [{setting.label()}] packages built in {time.perf_counter() - start:.0f} s")
        calls["aten, AOTInductor"] = lambda: aten_package(*args)
        calls["native, AOTInductor"] = lambda: native_package(*args)
        calls["native op (eager)"] = lambda: native_op(*args, k)
        if compile_too:
            compiled = torch.compile(aten.topk_hamming_lookup, fullgraph=True)
            calls["aten, torch.compile"] = lambda: compiled(*args, k)
        for label, call in calls.items():
            got = call()
            assert all(torch.equal(g, w) for g, w in zip(got, want)), f"{label} differs from the kernel"
        if pieces:
            dist = torch.compile(distances, fullgraph=True)
            length = args[1].shape[-1]
            key = dist(*args).to(torch.int64) * length + torch.arange(length - 1, -1, -1)
            assert torch.equal(key.topk(k, dim=1, largest=False).values // length, want[1].to(torch.int64))
            calls["  distances (compile)"] = lambda: dist(*args)
            calls["  torch.topk of keys"] = lambda: key.topk(k, dim=1, largest=False, sorted=True)
    return {f"{label} [{setting.name}]": setting.wrap(call) for label, call in calls.items()}


def run(name: str, settings: list[Setting], repeat: int, compile_too: bool, pieces: bool, where: Path) -> None:
    """Time configuration ``name`` under every setting and print the medians and their ratios to the kernel."""
    args, k = tensors(name)
    print(f"{name}: B={args[0].shape[0]} L={args[1].shape[-1]} bits={64 * args[2].shape[1]} k={k}")
    calls: dict[str, Callable[[], object]] = {}
    for setting in settings:
        calls.update(calls_for(setting, args, k, compile_too, pieces, where / f"{name}_{setting.name}"))
    load = os.getloadavg()[0]
    medians = {label: float(np.median(seconds)) for label, seconds in interleaved(calls, repeat).items()}
    print(f"  load average {load:.1f} before timing, {os.getloadavg()[0]:.1f} after; medians of {repeat} rounds")
    for setting in settings:
        print(f"  {setting.label()}")
        base = medians[f"numba kernel [{setting.name}]"]
        for label, seconds in medians.items():
            if label.endswith(f"[{setting.name}]"):
                print(f"    {label.rsplit(' [', 1)[0]:22s} {seconds * 1e3:9.3f} ms  {seconds / base:6.2f}x")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--configs", nargs="+", default=list(CONFIGS), choices=list(CONFIGS))
    parser.add_argument("--threads", nargs="+", default=["default", "1"],
                        help="thread settings: 'default' (torch's and the library's defaults) or a count for both")
    parser.add_argument("--repeat", type=int, default=30)
    parser.add_argument("--no-compile", action="store_true", help="skip torch.compile")
    parser.add_argument("--pieces", action="store_true", help="also time the distances and torch.topk alone")
    opts = parser.parse_args()
    settings = [Setting(name, torch.get_num_threads()) for name in opts.threads]
    with tempfile.TemporaryDirectory() as tmp:
        native.load(native.build(Path(tmp) / "native_build"))
        for name in opts.configs:
            run(name, settings, opts.repeat, not opts.no_compile, opts.pieces, Path(tmp))


if __name__ == "__main__":
    main()
