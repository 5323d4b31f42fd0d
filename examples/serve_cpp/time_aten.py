"""Time the ATen form of ``topk_hamming_lookup`` against the Numba kernel, in one process.

For each standard configuration of ``python -m etaretrieval.bench`` (``paper``:
1,024 targets against one shared sequence of L = 1,024, 256 bits, k = 48;
``long``: 256 rows of L = 10,000 from a 1,000,000-row table, 64 bits, k = 64)
it times, interleaved (in a new random order each round), on the same
random signatures:

- ``torch.ops.etaretrieval.topk_hamming_lookup`` (the Numba kernel);
- the ATen form (:func:`etaretrieval.torch.aten.topk_hamming_lookup`)
  compiled by AOTInductor into a package, loaded with
  ``torch._inductor.aoti_load_package`` (its C++ runtime, called from Python);
- the ATen form under ``torch.compile`` (Inductor's generated code).

Each is first checked equal to the kernel. Prints the medians and their
ratios to the kernel. Run: ``python examples/serve_cpp/time_aten.py [--configs paper]``.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from etaretrieval.bench.pipeline import interleaved
from etaretrieval.bench.runner import CONFIGS
from etaretrieval.bench.sweep import random_inputs
from etaretrieval.torch import aten


class Lookup(torch.nn.Module):
    """The ATen form of ``topk_hamming_lookup`` with a fixed ``k``, as a module to export."""

    def __init__(self, k: int) -> None:
        super().__init__()
        self.k = k

    def forward(self, query: torch.Tensor, ids: torch.Tensor, table: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return aten.topk_hamming_lookup(query, ids, table, self.k)


def tensors(name: str) -> tuple[tuple[torch.Tensor, ...], int]:
    """``(query, ids, table)`` int64 tensors of configuration ``name``, and its ``k``."""
    cfg = CONFIGS[name]
    query, ids, table, _ = random_inputs(cfg)
    as_t = [torch.from_numpy(a.view(np.int64) if a.dtype == np.uint64 else a) for a in (query, ids, table)]
    return (as_t[0], as_t[1], as_t[2]), cfg.k


def aoti(k: int, args: tuple[torch.Tensor, ...], where: Path) -> Callable[..., object]:
    """The ATen form exported, compiled and packaged by AOTInductor, loaded back."""
    program = torch.export.export(Lookup(k), args)
    path = torch._inductor.aoti_compile_and_package(program, package_path=str(where / f"lookup_{k}.pt2"))
    return torch._inductor.aoti_load_package(path)


def run(name: str, repeat: int, compile_too: bool, where: Path) -> None:
    """Time configuration ``name`` and print the medians and their ratios to the kernel."""
    args, k = tensors(name)
    kernel = torch.ops.etaretrieval.topk_hamming_lookup
    want = kernel(*args, k)
    calls: dict[str, Callable[[], object]] = {"numba kernel": lambda: kernel(*args, k)}
    start = time.perf_counter()
    package = aoti(k, args, where)
    built = time.perf_counter() - start
    calls["aten, AOTInductor"] = lambda: package(*args)
    if compile_too:
        compiled = torch.compile(aten.topk_hamming_lookup, fullgraph=True)
        calls["aten, torch.compile"] = lambda: compiled(*args, k)
    for label, call in calls.items():
        got = call()
        assert all(torch.equal(g, w) for g, w in zip(got, want)), f"{label} differs from the kernel"
    medians = {label: float(np.median(seconds)) for label, seconds in interleaved(calls, repeat).items()}
    base = medians["numba kernel"]
    print(f"{name}: B={args[0].shape[0]} L={args[1].shape[-1]} bits={64 * args[2].shape[1]} k={k} "
          f"(package built in {built:.0f} s)")
    for label, seconds in medians.items():
        print(f"  {label:22s} {seconds * 1e3:9.3f} ms  {seconds / base:6.2f}x")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--configs", nargs="+", default=list(CONFIGS), choices=list(CONFIGS))
    parser.add_argument("--repeat", type=int, default=30)
    parser.add_argument("--no-compile", action="store_true", help="skip torch.compile")
    parser.add_argument("--torch-threads", type=int, default=0, help="torch's threads (default: torch's choice)")
    opts = parser.parse_args()
    if opts.torch_threads:
        torch.set_num_threads(opts.torch_threads)
    with tempfile.TemporaryDirectory() as tmp:
        for name in opts.configs:
            run(name, opts.repeat, not opts.no_compile, Path(tmp))


if __name__ == "__main__":
    main()
