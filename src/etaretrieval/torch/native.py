"""Native C++ kernels of the top-K operators, for models served from C++ at the speed of the Numba kernels.

The ATen forms of :mod:`etaretrieval.torch.aten` run wherever PyTorch runs,
but their ``torch.topk`` alone costs more than the whole Numba kernel. This
module builds and loads a small C++ library, ``libetaretrieval_native``
(its source ships in :func:`etaretrieval.torch.native.source_dir`: one file and a ``CMakeLists.txt``,
linked against libtorch only), that registers
``torch.ops.etaretrieval_native.topk_hamming`` and
``.topk_hamming_lookup``: the arguments and results of the etaretrieval
operators of the same names, equal to the Numba kernels' bit for bit (a
counting sort over the possible distances per row, run over rows with
libtorch's threads).

Deploying with it:

1. :func:`etaretrieval.torch.native.build` the library once (CMake and a C++17 compiler; about 15 s)
   and :func:`etaretrieval.torch.native.load` it into the exporting Python process;
2. ``program.run_decompositions(decompositions(native=True))``: the top-K
   operators become calls of the native ones, every other etaretrieval
   operator its ATen form;
3. compile the program with AOTInductor; the C++ program that serves the
   package links ``libetaretrieval_native`` (with ``--no-as-needed``, so
   that its operators register at start-up), see ``examples/serve_cpp``.

The native kernels cover padded rows on the CPU; ragged rows, CUDA tensors
and the SDIM operators keep their ATen forms.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path
from typing import Callable, Optional, Union

import torch

from . import _ops, aten

__all__ = [
    "source_dir",
    "build",
    "library_name",
    "load",
    "is_loaded",
    "topk_hamming",
    "topk_hamming_lookup",
    "decompositions",
]


def source_dir() -> Path:
    """The folder holding the library's source: ``etaretrieval_native.cpp`` and ``CMakeLists.txt``.

    Examples
    --------
    >>> from etaretrieval.torch import native
    >>> sorted(p.name for p in native.source_dir().iterdir() if p.suffix in {".cpp", ".txt"})
    ['CMakeLists.txt', 'etaretrieval_native.cpp']
    """
    return Path(__file__).resolve().parent / "csrc"


def library_name() -> str:
    """The file name of the built library on this platform (``libetaretrieval_native.so`` on Linux)."""
    return {"darwin": "libetaretrieval_native.dylib", "win32": "etaretrieval_native.dll"}.get(
        sys.platform, "libetaretrieval_native.so")


def build(directory: Union[str, Path], *, native_arch: bool = True, timeout: float = 900) -> Path:
    """Configure and build the library with CMake against this torch's libtorch; return its path.

    Parameters
    ----------
    directory : str or Path
        The CMake build folder (created if missing; a second call rebuilds
        only what changed).
    native_arch : bool, default True
        Compile for this machine's CPU (``-march=native``, as Numba does);
        ``False`` for a library that must run on other x86-64 machines.
    timeout : float, default 900
        Seconds each CMake step may take.

    Returns
    -------
    Path
        The built library, to pass to :func:`etaretrieval.torch.native.load` and to link the serving program against.

    Raises
    ------
    FileNotFoundError
        ``cmake`` is not on the ``PATH``.
    RuntimeError
        A CMake step failed (its output is in the message).
    """
    cmake = shutil.which("cmake")
    if cmake is None:
        raise FileNotFoundError("building the native kernels needs cmake on the PATH (and a C++17 compiler)")
    out = Path(directory)
    steps = (
        [cmake, "-S", str(source_dir()), "-B", str(out), "-DCMAKE_BUILD_TYPE=Release",
         f"-DCMAKE_PREFIX_PATH={torch.utils.cmake_prefix_path}",
         f"-DETARETRIEVAL_NATIVE_ARCH={'ON' if native_arch else 'OFF'}"],
        [cmake, "--build", str(out)],
    )
    for step in steps:
        done = subprocess.run(step, capture_output=True, text=True, timeout=timeout, check=False)
        if done.returncode != 0:
            raise RuntimeError(f"{' '.join(step)} failed:\n{done.stdout}\n{done.stderr}")
    return out / library_name()


def is_loaded() -> bool:
    """Whether ``torch.ops.etaretrieval_native`` holds the native operators in this process."""
    try:
        torch.ops.etaretrieval_native.topk_hamming_lookup.default  # noqa: B018 - the lookup is the test
    except (AttributeError, RuntimeError):
        return False
    return True


def load(path: Union[str, Path]) -> None:
    """Load the built library into this process (a no-op once its operators are registered).

    Parameters
    ----------
    path : str or Path
        The library that :func:`etaretrieval.torch.native.build` returned.

    Raises
    ------
    FileNotFoundError
        ``path`` does not exist.
    """
    if is_loaded():
        return
    lib = Path(path)
    if not lib.is_file():
        raise FileNotFoundError(f"no native library at {lib}: build it first with etaretrieval.torch.native.build")
    torch.ops.load_library(str(lib))


def _require_loaded() -> None:
    if not is_loaded():
        raise RuntimeError(
            "the native kernels are not loaded in this process: call etaretrieval.torch.native.load(path) with the "
            "library that etaretrieval.torch.native.build(folder) returns"
        )


def topk_hamming(
    query: torch.Tensor,
    keys: torch.Tensor,
    k: int,
    lengths: Optional[torch.Tensor] = None,
    mask: Optional[torch.Tensor] = None,
    padding_side: str = "right",
) -> tuple[torch.Tensor, torch.Tensor]:
    """``torch.ops.etaretrieval.topk_hamming`` on the native kernel (same arguments, checks and results).

    The shapes and dtypes are checked here (under ``torch.export``, once,
    while tracing); ``lengths`` outside ``0..L`` raise ``ValueError`` in the
    kernel. CPU tensors only.
    """
    _require_loaded()
    _ops.check_topk(query, keys, k, lengths, mask, padding_side)
    _ops._require_cpu("topk_hamming (native)", query)
    return torch.ops.etaretrieval_native.topk_hamming(query, keys, k, lengths, mask, padding_side)


def topk_hamming_lookup(
    query: torch.Tensor,
    ids: torch.Tensor,
    table: torch.Tensor,
    k: int,
    lengths: Optional[torch.Tensor] = None,
    mask: Optional[torch.Tensor] = None,
    padding_id: Optional[int] = None,
    padding_side: str = "right",
) -> tuple[torch.Tensor, torch.Tensor]:
    """``torch.ops.etaretrieval.topk_hamming_lookup`` on the native kernel (same arguments, checks and results).

    A valid position holding an id outside ``[0, N)`` raises ``IndexError``
    in the kernel, with the Numba driver's message. CPU tensors only.
    """
    _require_loaded()
    _ops.check_lookup(query, ids, table, k, lengths, mask, padding_side)
    _ops._require_cpu("topk_hamming_lookup (native)", query)
    pad = _ops.padding_bits(padding_id, ids.dtype)  # its int64 bit pattern, or None
    return torch.ops.etaretrieval_native.topk_hamming_lookup(query, ids, table, k, lengths, mask, pad, padding_side)


def decompositions() -> dict[torch._ops.OpOverload, Callable[..., object]]:
    """The table of :func:`etaretrieval.torch.decompositions` with the top-K operators on the native kernels.

    ``torch.ops.etaretrieval.topk_hamming`` and ``.topk_hamming_lookup``
    become calls of this module's functions; every other operator its ATen
    form. The library must be loaded (:func:`etaretrieval.torch.native.load`) when the program is
    decomposed.
    """
    _require_loaded()
    table = aten.decompositions()
    ops = torch.ops.etaretrieval
    table[ops.topk_hamming.default] = topk_hamming
    table[ops.topk_hamming_lookup.default] = topk_hamming_lookup
    return table
