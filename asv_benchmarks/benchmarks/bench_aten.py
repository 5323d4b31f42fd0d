"""The ATen form of ``topk_hamming_lookup`` compiled by AOTInductor (the C++ serving path) against the kernel."""

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
        import torch

        from etaretrieval.torch import aten

        class Lookup(torch.nn.Module):
            def __init__(self, k: int) -> None:
                super().__init__()
                self.k = k

            def forward(self, query: Any, ids: Any, table: Any) -> Any:
                return aten.topk_hamming_lookup(query, ids, table, self.k)

        out: Inputs = {}
        for name, (query, ids, table, _, k) in signature_inputs().items():
            args = tuple(torch.from_numpy(a.view(np.int64) if a.dtype == np.uint64 else a) for a in (query, ids, table))
            program = torch.export.export(Lookup(k), args)
            path = os.path.abspath(f"aten_lookup_{name}.pt2")
            torch._inductor.aoti_compile_and_package(program, package_path=path)
            out[name] = (args, k, path)
        return out

    def setup(self, inputs: Inputs, config: str) -> None:
        _need_torch()
        import torch

        import etaretrieval.torch  # noqa: F401  (registers the ops)

        self.args, self.k, path = inputs[config]
        self.kernel = torch.ops.etaretrieval.topk_hamming_lookup
        self.package = torch._inductor.aoti_load_package(path)
        want, got = self.kernel(*self.args, self.k), self.package(*self.args)  # warm both, and check once
        assert all(torch.equal(g, w) for g, w in zip(got, want))

    def time_kernel(self, inputs: Inputs, config: str) -> None:
        self.kernel(*self.args, self.k)

    def time_aten_aoti(self, inputs: Inputs, config: str) -> None:
        self.package(*self.args)
