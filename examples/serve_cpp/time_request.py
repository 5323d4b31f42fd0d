"""Time a whole ETAModel request: the C++ runner (AOTInductor packages, no Python) against eager Python (Numba kernels).

Builds the example's model and request (``export_model.py``), the native
library (``OUT_DIR/native_build``), two packages per thread setting
(generated code takes the thread count it is compiled under): ``aten``
(``decompositions()``) and ``native`` (``decompositions(native=True)``: the
top-K on the native C++ kernel), and two runners (``CMakeLists.txt``): one
with libtorch only, one also linked with the native library. Every package's
outputs are first checked against eager's. Then it runs rounds: in each,
every setting times ``--repeat`` requests of each runner with its package (one
runner process, the package loaded before its clock starts) and ``--repeat``
eager requests, in a new random order. Settings: ``default`` (torch's default
threads, the Numba kernels on the library's default; the runners with the
environment's OpenMP default) and ``1`` (one torch thread, the kernels inside
``etaretrieval.threads(1)``, the runners with ``OMP_NUM_THREADS=1``). Prints
the load average, each round's medians and each runner's time over eager's,
and the median of those ratios.

Run: ``python examples/serve_cpp/time_request.py OUT_DIR [--batch 128 --length 1000 --rounds 6]``.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch

import etaretrieval

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import export_model as example  # noqa: E402  (the example next to this script)

#: The packages timed: top-K in ATen (``decompositions()``) or on the native kernel (``native=True``).
VARIANTS = ("aten", "native")


@contextlib.contextmanager
def setting(name: str, default_threads: int) -> Iterator[None]:
    """Torch's threads and the kernels' for setting ``name`` (``default`` or a count)."""
    torch.set_num_threads(default_threads if name == "default" else int(name))
    with contextlib.nullcontext() if name == "default" else etaretrieval.threads(int(name)):
        yield


def runner_ms(runner: Path, package: Path, out: Path, repeat: int, name: str) -> float:
    """Median milliseconds of ``repeat`` runner requests, as the runner reports them."""
    env = {"PATH": os.defpath}
    if name != "default":
        env["OMP_NUM_THREADS"] = name
    done = subprocess.run([str(runner), str(package), str(out), str(repeat)], capture_output=True, text=True,
                          env=env, check=True)
    found = re.search(r"request: ([0-9.eE+-]+) ms", done.stdout)
    assert found, done.stdout + done.stderr
    return float(found.group(1))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path, help="directory for the packages, the request and the runner's build")
    parser.add_argument("--batch", type=int, default=128, help="candidates per request")
    parser.add_argument("--length", type=int, default=1000, help="history length")
    parser.add_argument("--repeat", type=int, default=20, help="requests per measurement")
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--threads", nargs="+", default=["default", "1"])
    opts = parser.parse_args()
    default_threads = torch.get_num_threads()
    opts.out.mkdir(parents=True, exist_ok=True)
    model = example.build_model()
    args = example.request(model.items.num_embeddings - 1, opts.batch, opts.length)
    for name, t in zip(example.INPUTS, args):
        example.write_bin(opts.out / f"{name}.bin", t)
    library = example.native_library(opts.out)
    packages: dict[tuple[str, str], Path] = {}
    for name in opts.threads:
        for variant in VARIANTS:
            with setting(name, default_threads):
                start = time.perf_counter()
                path = opts.out / f"model_{name}_{variant}.pt2"
                packages[(name, variant)] = example.package(model, args, path, native=variant == "native")
                print(f"{variant} package for threads {name} built in {time.perf_counter() - start:.0f} s")
    runners = {"aten": example.build_runner(opts.out / "build"),
               "native": example.build_runner(opts.out / "build_native", library)}
    with torch.no_grad():
        logits, positions = example.Scoring(model)(*args)
    for (name, variant), package in packages.items():  # every package's outputs equal eager's
        runner_ms(runners[variant], package, opts.out, 1, name)
        assert torch.equal(example.read_bin(opts.out / "cpp_positions.bin", torch.int64), positions)
        torch.testing.assert_close(example.read_bin(opts.out / "cpp_logits.bin", torch.float32), logits,
                                   rtol=1e-4, atol=1e-6)
    ratios: dict[tuple[str, str], list[float]] = {key: [] for key in packages}
    order = np.random.default_rng(0)
    print(f"B={opts.batch} L={opts.length}, medians of {opts.repeat} requests; load average "
          f"{os.getloadavg()[0]:.1f} at the start")
    for i in range(opts.rounds):
        jobs = [(name, side) for name in opts.threads for side in ("eager", *VARIANTS)]
        got: dict[tuple[str, str], float] = {}
        for j in order.permutation(len(jobs)):
            name, side = jobs[j]
            if side == "eager":
                with setting(name, default_threads):
                    got[jobs[j]] = example.eager_latency(model, args, opts.repeat) * 1e3
            else:
                got[jobs[j]] = runner_ms(runners[side], packages[jobs[j]], opts.out, opts.repeat, name)
        for name in opts.threads:
            eager = got[(name, "eager")]
            line = []
            for variant in VARIANTS:
                ratio = got[(name, variant)] / eager
                ratios[(name, variant)].append(ratio)
                line.append(f"runner-{variant} {got[(name, variant)]:7.2f} ms ({ratio:.2f})")
            print(f"round {i} threads {name:7s}: eager {eager:7.2f} ms, {', '.join(line)} "
                  f"(load {os.getloadavg()[0]:.1f})")
    for (name, variant), r in ratios.items():
        print(f"threads {name}: runner-{variant}/eager median {np.median(r):.2f} (range {min(r):.2f} to {max(r):.2f})")


if __name__ == "__main__":
    main()
