"""``topk_hamming_lookup`` compiled by AOTInductor (the C++ serving paths) against the kernel: its ATen form, and
the native C++ kernel the package calls with ``decompositions(native=True)``."""

from __future__ import annotations

import importlib.util
import os
from typing import Any

import numpy as np

from .common import CONFIG_NAMES, signature_inputs

Inputs = dict[str, Any]


def _need_torch() -> None:
    """Skip (asv's convention: ``NotImplementedError`` in setup) in environments without torch."""
    if importlib.util.find_spec("torch") is None:
        raise NotImplementedError("needs torch")


def _packages(kind: str) -> Inputs:
    """Per configuration: ``(args, k, package path)`` of ``topk_hamming_lookup`` exported and decomposed to
    ``kind``: ``"aten"`` forms, or ``"native"`` top-K (its library must be loaded)."""
    import torch

    from etaretrieval.torch import decompositions

    class Lookup(torch.nn.Module):
        def __init__(self, k: int) -> None:
            super().__init__()
            self.k = k

        def forward(self, query: Any, ids: Any, table: Any) -> Any:
            return torch.ops.etaretrieval.topk_hamming_lookup(query, ids, table, self.k)

    out: Inputs = {}
    for name, (query, ids, table, _, k) in signature_inputs().items():
        args = tuple(torch.from_numpy(a.view(np.int64) if a.dtype == np.uint64 else a) for a in (query, ids, table))
        program = torch.export.export(Lookup(k), args).run_decompositions(decompositions(native=kind == "native"))
        path = os.path.abspath(f"{kind}_lookup_{name}.pt2")
        torch._inductor.aoti_compile_and_package(program, package_path=path)
        out[name] = (args, k, path)
    return out


def _load_package(bench: Any, inputs: Inputs, config: str) -> None:
    """Set ``bench.args``, ``.k``, ``.kernel`` (the Numba op) and ``.package`` (loaded); warm both, check once."""
    import torch

    import etaretrieval.torch  # noqa: F401  (registers the ops)

    bench.args, bench.k, path = inputs[config]
    bench.kernel = torch.ops.etaretrieval.topk_hamming_lookup
    bench.package = torch._inductor.aoti_load_package(path)
    want, got = bench.kernel(*bench.args, bench.k), bench.package(*bench.args)
    assert all(torch.equal(g, w) for g, w in zip(got, want))


class ATenTopK:
    """``torch.ops.etaretrieval.topk_hamming_lookup`` (Numba) and its ATen form as an AOTInductor package.

    Standard configurations (see ``bench_topk``); the package is built once
    (``setup_cache``, minutes) and run through ``aoti_load_package``, the
    runtime a C++ server uses.
    """

    param_names = ["config"]
    params = [CONFIG_NAMES]
    timeout = 900

    def setup_cache(self) -> Inputs:
        _need_torch()
        return _packages("aten")

    def setup(self, inputs: Inputs, config: str) -> None:
        _need_torch()
        _load_package(self, inputs, config)

    def time_kernel(self, inputs: Inputs, config: str) -> None:
        self.kernel(*self.args, self.k)

    def time_aten_aoti(self, inputs: Inputs, config: str) -> None:
        self.package(*self.args)


class NativeTopK:
    """The Numba kernel against an AOTInductor package whose top-K runs on the native C++ kernel.

    ``setup_cache`` builds ``libetaretrieval_native`` (CMake, seconds) and
    the packages; skipped where cmake or a C++ compiler is missing.
    """

    param_names = ["config"]
    params = [CONFIG_NAMES]
    timeout = 900

    def setup_cache(self) -> Inputs:
        _need_torch()
        import shutil

        from etaretrieval.torch import native

        if shutil.which("cmake") is None or shutil.which("c++") is None:
            raise NotImplementedError("needs cmake and a C++ compiler")
        library = native.build(os.path.abspath("native_build"))
        native.load(library)
        return {"library": str(library), **_packages("native")}

    def setup(self, inputs: Inputs, config: str) -> None:
        _need_torch()
        from etaretrieval.torch import native

        native.load(inputs["library"])
        _load_package(self, inputs, config)

    def time_kernel(self, inputs: Inputs, config: str) -> None:
        self.kernel(*self.args, self.k)

    def time_native_aoti(self, inputs: Inputs, config: str) -> None:
        self.package(*self.args)
