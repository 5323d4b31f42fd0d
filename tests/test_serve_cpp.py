"""examples/serve_cpp: an ETAModel exported, decomposed to ATen (or with its top-K on the native kernels) and
compiled by AOTInductor is served by a C++ program linked against libtorch only (and libetaretrieval_native),
run with no Python reachable; its logits and retrieved positions equal eager's."""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
from pathlib import Path
from types import ModuleType

import pytest

torch = pytest.importorskip("torch")

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "serve_cpp"

#: Inductor uses a deprecated torch.jit API internally and run_decompositions deep-copies a deprecated pytree
#: class (torch 2.13); not ours to fix.
pytestmark = [
    pytest.mark.filterwarnings("ignore:`torch.jit.script_method` is deprecated:DeprecationWarning"),
    pytest.mark.filterwarnings(r"ignore:`isinstance\(treespec, LeafSpec\)` is deprecated:FutureWarning"),
    pytest.mark.skipif(shutil.which("cmake") is None or shutil.which("c++") is None, reason="needs cmake and c++"),
]


def _example() -> ModuleType:
    spec = importlib.util.spec_from_file_location("serve_cpp_export_model", EXAMPLE / "export_model.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _exact(model: torch.nn.Module) -> None:
    """Round the item embeddings and the planes to multiples of 1/8: every projection is then exact, so its sign
    (a signature bit) cannot depend on the summation order of the kernel or of the compiled matmul."""
    with torch.no_grad():
        for t in (model.items.weight, model.long.retriever.planes):
            t.copy_((t * 8).round().clamp(-32, 32) / 8)


@pytest.mark.parametrize("native", [False, True], ids=["aten", "native"])
def test_cpp_runner_equals_eager(tmp_path: Path, native: bool, request: pytest.FixtureRequest) -> None:
    """``native``: the package's top-K ops call torch.ops.etaretrieval_native, the runner links its library."""
    example = _example()
    library = request.getfixturevalue("native_library") if native else None  # built and loaded once a session
    model = example.build_model()
    _exact(model)
    args = example.request(model.items.num_embeddings - 1, batch=16, length=120)
    args[0][0, :-5] = 0  # a history shorter than k: -1 fill
    path = example.package(model, args, tmp_path / "model.pt2", native=native)
    for name, t in zip(example.INPUTS, args):
        example.write_bin(tmp_path / f"{name}.bin", t)
    runner = example.build_runner(tmp_path / "build", library)
    ldd = subprocess.run(["ldd", str(runner)], capture_output=True, text=True, check=False).stdout
    linked = dict(line.split()[:3:2] for line in ldd.splitlines() if "=>" in line)
    assert "libtorch_cpu.so" in linked and not [name for name in linked if "python" in name]
    if library is not None:  # kept by --no-as-needed though no symbol of it is used, found without LD_LIBRARY_PATH
        assert Path(linked[library.name]).resolve() == library.resolve()
    env = {"PATH": os.defpath}  # no PYTHONPATH, PYTHONHOME, LD_LIBRARY_PATH nor virtual environment
    done = subprocess.run([str(runner), str(path), str(tmp_path), "3"], capture_output=True, text=True, env=env,
                          timeout=300, check=False)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "request:" in done.stdout
    with torch.no_grad():
        logits, positions = example.Scoring(model)(*args)
    got_positions = example.read_bin(tmp_path / "cpp_positions.bin", torch.int64)
    assert torch.equal(got_positions, positions)
    assert (positions >= 0).any() and (positions == -1).any()  # rows retrieve, and some are shorter than k
    torch.testing.assert_close(example.read_bin(tmp_path / "cpp_logits.bin", torch.float32), logits,
                               rtol=1e-4, atol=1e-6)
