"""Shared test configuration: hypothesis profiles, JIT warm-up, chunk-size patching.

Hypothesis profiles (all ``deadline=None``: the first call of a kernel signature
compiles it):

``dev``      25 examples, the default on a workstation;
``ci``       50 examples, derandomized (stable set of compiled kernel variants),
             loaded when the ``CI`` environment variable is set;
``nightly``  1000 examples.

``HYPOTHESIS_PROFILE=<name>`` selects a profile explicitly.
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, settings

# ``--import-mode=importlib`` does not put the tests folder on sys.path; the test
# modules import the reference (``import reference``) from here.
_HERE = str(Path(__file__).resolve().parent)
if _HERE not in sys.path:
    sys.path.insert(0, _HERE)

import etaretrieval  # noqa: E402
from etaretrieval import config  # noqa: E402

settings.register_profile("dev", max_examples=25, deadline=None)
settings.register_profile(
    "ci",
    max_examples=50,
    deadline=None,
    derandomize=True,
    database=None,
    print_blob=True,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.register_profile(
    "nightly",
    max_examples=1000,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE") or ("ci" if os.environ.get("CI") else "dev"))

#: Whether numba's CUDA simulator is on (it must be set before numba is imported).
CUDASIM = os.environ.get("NUMBA_ENABLE_CUDASIM", "0") not in ("", "0")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Skip the ``cudasim``-marked tests unless the simulator is on (they run in a process of their own)."""
    if CUDASIM:
        return
    skip = pytest.mark.skip(reason="cudasim: needs NUMBA_ENABLE_CUDASIM=1 (make test-cudasim runs them)")
    for item in items:
        if "cudasim" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session", autouse=True)
def warm_jit() -> None:
    """Compile (or load from the on-disk cache) the common kernel signatures once per session."""
    rng = np.random.default_rng(0)
    for dtype in (np.float32, np.float64):
        planes = etaretrieval.hyperplanes(4, 70, seed=0)
        etaretrieval.pack_signatures(rng.standard_normal((3, 4)).astype(dtype), planes)
    q = rng.integers(0, 2**64, size=(2, 2), dtype=np.uint64)
    keys = rng.integers(0, 2**64, size=(2, 5, 2), dtype=np.uint64)
    etaretrieval.hamming(q, keys[:, 0])
    etaretrieval.topk_hamming(q, keys, 3)
    etaretrieval.topk_hamming(q, keys[0], 3, lengths=[1, 5])
    etaretrieval.topk_hamming(q, keys, 3, mask=np.ones((2, 5), dtype=bool))
    ids = np.array([[0, 1, 2, 1, 0], [2, 2, 1, 0, 0]], dtype=np.int64)
    etaretrieval.topk_hamming_lookup(q, ids, keys[0], 3)
    etaretrieval.topk_hamming_lookup(q, ids, keys[0], 3, padding_id=0, lengths=[4, 5])


@pytest.fixture(scope="session")
def pack_chunk_elements() -> Callable[[int], contextlib.AbstractContextManager[None]]:
    """Context-manager factory: ``with pack_chunk_elements(3): ...`` runs with a tiny pack chunk.

    Session-scoped (so hypothesis tests may use it); it also sends every
    input to the chunked BLAS path (``PACK_BLAS_WORK = 0``) and restores
    both constants on exit.
    """

    @contextlib.contextmanager
    def patch(n: int) -> Iterator[None]:
        old = config.PACK_CHUNK_ELEMENTS, config.PACK_BLAS_WORK
        config.PACK_CHUNK_ELEMENTS, config.PACK_BLAS_WORK = n, 0
        try:
            yield
        finally:
            config.PACK_CHUNK_ELEMENTS, config.PACK_BLAS_WORK = old

    return patch


@pytest.fixture(params=[1, 7, 130])
def tiny_pack_chunks(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> int:
    """Run the test with ``config.PACK_CHUNK_ELEMENTS`` set tiny (1 row per chunk, and a few rows), on the BLAS path."""
    monkeypatch.setattr(config, "PACK_CHUNK_ELEMENTS", request.param)
    monkeypatch.setattr(config, "PACK_BLAS_WORK", 0)
    return int(request.param)


@pytest.fixture(scope="session")
def num_threads_and_tasks() -> Callable[[int, int], contextlib.AbstractContextManager[None]]:
    """Context-manager factory: ``etaretrieval.threads(n)``, ``TASKS_PER_THREAD = t`` and no serial threshold.

    With ``SERIAL_WORK = 0`` even the tests' tiny calls are split over ``n``
    threads (``n`` may exceed the cores).
    """
    import etaretrieval

    @contextlib.contextmanager
    def patch(n: int, t: int) -> Iterator[None]:
        old_t, old_w = config.TASKS_PER_THREAD, config.SERIAL_WORK
        config.TASKS_PER_THREAD, config.SERIAL_WORK = t, 0
        try:
            with etaretrieval.threads(n):
                yield
        finally:
            config.TASKS_PER_THREAD, config.SERIAL_WORK = old_t, old_w

    return patch


@pytest.fixture(scope="session")
def native_library(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``libetaretrieval_native`` built once per session (CMake against this torch) and loaded; its path.

    Skips where cmake or a C++ compiler is missing.
    """
    import shutil

    if shutil.which("cmake") is None or shutil.which("c++") is None:
        pytest.skip("the native kernels need cmake and a C++ compiler")
    pytest.importorskip("torch")
    from etaretrieval.torch import native

    path = native.build(tmp_path_factory.mktemp("native_build"))
    native.load(path)
    return path
