"""Export an ETAModel to an AOTInductor package that a C++ program serves, without Python.

Steps (see the "Deploying" page of the user guide):

1. ``torch.export.export`` the model (here with the retrieved positions as a
   second output, to compare them);
2. ``run_decompositions(etaretrieval.torch.decompositions())``: every
   ``torch.ops.etaretrieval`` operator becomes plain ATen operators, so the
   program needs neither this package nor Numba. With ``--native``,
   ``decompositions(native=True)`` instead: the top-K operators become calls
   of the native C++ kernels (``torch.ops.etaretrieval_native``, equal to
   the Numba ones bit for bit), whose library ``etaretrieval.torch.native.build`` makes
   in ``OUT_DIR/native_build`` and ``native.load`` loads here first;
3. ``torch._inductor.aoti_compile_and_package``: one ``.pt2`` file holding
   the compiled model and its weights (the planes and embeddings included);
4. ``runner.cpp`` (built with ``CMakeLists.txt`` against the libtorch of the
   torch wheel; for a ``--native`` package also linked with that library, so
   that its operators are registered when the package loads) loads it with
   ``torch::inductor::AOTIModelPackageLoader``.

Run::

    python examples/serve_cpp/export_model.py OUT_DIR [--native]
    cmake -S examples/serve_cpp -B OUT_DIR/build \\
        -DCMAKE_PREFIX_PATH=$(python -c "import torch; print(torch.utils.cmake_prefix_path)") \\
        [-DETARETRIEVAL_NATIVE_LIBRARY=OUT_DIR/native_build/libetaretrieval_native.so]
    cmake --build OUT_DIR/build
    OUT_DIR/build/eta_runner OUT_DIR/model.pt2 OUT_DIR 100

``OUT_DIR`` then holds the request (``*.bin``), the eager outputs
(``eager_*.bin``) and the runner's (``cpp_*.bin``). A ``.bin`` file is a
little-endian int64 ``ndim``, the ``ndim`` sizes, then the data (int64 for
ids, float32 for logits).
"""

from __future__ import annotations

import argparse
import subprocess
import time
from pathlib import Path
from typing import Optional

import numpy as np
import torch
from torch import nn

from etaretrieval.torch import ETAModel, decompositions
from etaretrieval.torch import native as native_kernels

#: Inputs of a request, in the order the package takes them (the runner reads them in this order).
INPUTS = ("history", "target", "times", "target_time")


class Scoring(nn.Module):
    """An ETAModel request: logits, and the positions its long-term block retrieves (to check them)."""

    def __init__(self, model: ETAModel) -> None:
        super().__init__()
        self.model = model

    def forward(
        self, history: torch.Tensor, target: torch.Tensor, times: torch.Tensor, target_time: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        logits = self.model(history, target, times=times, target_time=target_time)
        query = self.model.embed(target, None)
        retrieved = self.model.long.retriever(query, mask=history != 0, seq_ids=history, items=self.model.item_table())
        return logits, retrieved.index


def build_model(n_items: int = 500, dim: int = 16, k: int = 16, bits: int = 64, seed: int = 0) -> ETAModel:
    """A small ETAModel with time information (its default long-term block), random weights."""
    torch.manual_seed(seed)
    return ETAModel(n_items, dim, k=k, bits=bits, recent=8, heads=2, seed=seed, hidden=(64, 32)).eval()


def request(n_items: int, batch: int, length: int, seed: int = 1) -> tuple[torch.Tensor, ...]:
    """Candidates of one user: ``batch`` targets, left-padded histories of ids and their timestamps."""
    gen = torch.Generator().manual_seed(seed)
    history = torch.randint(1, n_items + 1, (batch, length), generator=gen)
    history[:, : length // 4] = 0  # padding
    times = torch.sort(torch.randint(0, 10**6, (batch, length), generator=gen), dim=1).values
    target = torch.randint(1, n_items + 1, (batch,), generator=gen)
    return history, target, times, torch.full((batch,), 10**6)


def native_library(out: Path) -> Path:
    """``libetaretrieval_native`` built in ``out/native_build`` and loaded into this process; its path."""
    path = native_kernels.build(out / "native_build")
    native_kernels.load(path)
    return path


def package(model: ETAModel, args: tuple[torch.Tensor, ...], path: Path, native: bool = False) -> Path:
    """Export, decompose and compile ``Scoring(model)`` into the AOTInductor package ``path``.

    ``native``: the top-K operators call the native kernels (the library must
    be loaded, :func:`native_library`) instead of their ATen forms.
    """
    program = torch.export.export(Scoring(model), args)
    decomposed = program.run_decompositions(decompositions(native=native))
    return Path(torch._inductor.aoti_compile_and_package(decomposed, package_path=str(path)))


def build_runner(build: Path, library: Optional[Path] = None) -> Path:
    """``eta_runner`` built in ``build`` with CMake against the torch wheel's libtorch (Release); also linked with
    ``library`` (``libetaretrieval_native``, for packages made with ``native=True``) when given. Raises
    ``RuntimeError`` with CMake's output if a step fails."""
    native = [f"-DETARETRIEVAL_NATIVE_LIBRARY={library}"] if library else []
    for cmd in (["cmake", "-S", str(Path(__file__).resolve().parent), "-B", str(build), "-DCMAKE_BUILD_TYPE=Release",
                 f"-DCMAKE_PREFIX_PATH={torch.utils.cmake_prefix_path}", *native], ["cmake", "--build", str(build)]):
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=900, check=False)
        if done.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd)} failed:\n{done.stdout}\n{done.stderr}")
    return build / "eta_runner"


def write_bin(path: Path, t: torch.Tensor) -> None:
    """``t`` as a ``.bin`` file: int64 ``ndim``, the sizes, the raw data."""
    header = np.array([t.dim(), *t.shape], dtype="<i8")
    path.write_bytes(header.tobytes() + t.detach().contiguous().numpy().tobytes())


def read_bin(path: Path, dtype: torch.dtype) -> torch.Tensor:
    """A tensor written by :func:`write_bin` (or by the runner)."""
    raw = path.read_bytes()
    ndim = int(np.frombuffer(raw[:8], dtype="<i8")[0])
    shape = tuple(int(s) for s in np.frombuffer(raw[8 : 8 * (ndim + 1)], dtype="<i8"))
    data = np.frombuffer(raw[8 * (ndim + 1) :], dtype=torch.empty(0, dtype=dtype).numpy().dtype)
    return torch.from_numpy(data.copy()).reshape(shape)


def eager_latency(model: ETAModel, args: tuple[torch.Tensor, ...], repeat: int) -> float:
    """Median seconds of one eager request (Python, Numba kernels): the packaged computation, positions included."""
    scoring = Scoring(model)
    times = []
    with torch.no_grad():
        scoring(*args)  # warm
        for _ in range(repeat):
            start = time.perf_counter()
            scoring(*args)
            times.append(time.perf_counter() - start)
    return float(np.median(times))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path, help="directory for model.pt2, the request and the eager outputs")
    parser.add_argument("--batch", type=int, default=64, help="candidates per request")
    parser.add_argument("--length", type=int, default=256, help="history length")
    parser.add_argument("--repeat", type=int, default=0, help="time this many eager requests")
    parser.add_argument("--torch-threads", type=int, default=0, help="torch's threads (default: torch's choice)")
    parser.add_argument("--no-package", action="store_true", help="reuse OUT/model.pt2 (only write and time)")
    parser.add_argument("--native", action="store_true",
                        help="top-K on the native kernels (builds OUT/native_build/libetaretrieval_native)")
    opts = parser.parse_args()
    if opts.torch_threads:
        torch.set_num_threads(opts.torch_threads)
    opts.out.mkdir(parents=True, exist_ok=True)
    model = build_model()
    args = request(model.items.num_embeddings - 1, opts.batch, opts.length)
    if not opts.no_package:
        start = time.perf_counter()
        if opts.native:
            print(f"built {native_library(opts.out)}: link the runner with -DETARETRIEVAL_NATIVE_LIBRARY=<it>")
        path = package(model, args, opts.out / "model.pt2", native=opts.native)
        print(f"packaged {path} in {time.perf_counter() - start:.0f} s")
    with torch.no_grad():
        logits, positions = Scoring(model)(*args)
    for name, t in zip(INPUTS, args):
        write_bin(opts.out / f"{name}.bin", t)
    write_bin(opts.out / "eager_logits.bin", logits)
    write_bin(opts.out / "eager_positions.bin", positions)
    if opts.repeat:
        print(f"eager request: {eager_latency(model, args, opts.repeat) * 1e3:.3f} ms median")


if __name__ == "__main__":
    main()
