"""The benchmark package: its kernels and baselines agree with the library, and the CLI runs.

No timing is asserted anywhere: these tests only check that what the
benchmarks measure is the same work as the library does.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest

import etaretrieval as er
from etaretrieval.bench import baselines, cli, floor, sweep
from etaretrieval.bench.coldstart import first_call
from etaretrieval.bench.floor import floor_lookup
from etaretrieval.bench.runner import Config, make_data
from etaretrieval.cpu.topk import CHUNK

HAS_TORCH = importlib.util.find_spec("torch") is not None
HAS_FAISS = importlib.util.find_spec("faiss") is not None


def _inputs(
    batch: int, length: int, rows: int, words: int, *, shared: bool, seed: int = 0
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Low-entropy signatures (many ties), ids, queries."""
    rng = np.random.default_rng(seed)
    table = rng.integers(0, 16, size=(rows, words), dtype=np.uint64) * np.uint64(0x0101_0101_0101_0101)
    query = table[rng.integers(0, rows, size=batch)] ^ np.uint64(1)
    ids = rng.integers(0, rows, size=(length,) if shared else (batch, length))
    return query, ids, table


@pytest.mark.parametrize("words", [1, 2, 3, 4, 16])
@pytest.mark.parametrize("shared", [False, True])
def test_floor_sums_the_library_distances(words: int, shared: bool) -> None:
    query, ids, table = _inputs(5, 37, 11, words, shared=shared)
    expected = er.hamming(query[:, None, :], table[ids]).sum(axis=1)
    np.testing.assert_array_equal(floor_lookup(query, ids, table), expected)


@pytest.mark.parametrize("cached", [True, False], ids=["cached", "passes"])
@pytest.mark.parametrize("dtype", [np.int32, np.uint64])
@pytest.mark.parametrize("words", [1, 2, 3])
def test_floor_forms_cross_chunks_with_any_id_dtype(
    dtype: type, words: int, cached: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Both forms of the floor (cached table, passes per word) over rows longer than a chunk, any id dtype."""
    if not cached:
        monkeypatch.setattr(floor, "CACHED_TABLE_BYTES", 0)
    query, ids, table = _inputs(3, 2 * CHUNK + 5, 11, words, shared=False)
    expected = er.hamming(query[:, None, :], table[ids]).sum(axis=1)
    np.testing.assert_array_equal(floor_lookup(query, ids.astype(dtype), table), expected)


@pytest.mark.parametrize(
    ("batch", "length", "words", "k", "shared"),
    [
        (4, 50, 1, 7, False),
        (3, 40, 4, 0, True),
        (2, 30, 2, 45, False),
        (3, 5000, 1, 64, False),
        (2, 4500, 3, 700, True),
        (2, 300, 9, 20, False),
    ],
)
def test_numpy_brute_force_equals_the_library(batch: int, length: int, words: int, k: int, shared: bool) -> None:
    # Rows of 4,096 and more also take the kernel's sampled-threshold path, and
    # signatures of 8 words and more its row-wise distance loop.
    query, ids, table = _inputs(batch, length, 97, words, shared=shared)
    idx, dist = baselines.numpy_topk_lookup(query, ids, table, k)
    for lib_idx, lib_dist in (er.topk_hamming_lookup(query, ids, table, k), er.topk_hamming(query, table[ids], k)):
        np.testing.assert_array_equal(idx, lib_idx)
        np.testing.assert_array_equal(dist, lib_dist)


@pytest.mark.parametrize("k", [10, 1000, 1001, 3000, 8000])
def test_numpy_brute_force_equals_the_library_when_the_sample_misleads(k: int) -> None:
    # Every 8th position (the kernel's sample) is at distance 0, the rest at 64:
    # the sampled bound is too small for k > 1000 and the kernel must widen it.
    table = np.array([[0], [2**64 - 1]], dtype=np.uint64)
    ids = np.ones((1, 8000), dtype=np.int64)
    ids[0, ::8] = 0
    query = np.zeros((1, 1), dtype=np.uint64)
    expected = baselines.numpy_topk_lookup(query, ids, table, k)
    got = er.topk_hamming_lookup(query, ids, table, k)
    np.testing.assert_array_equal(got[0], expected[0])
    np.testing.assert_array_equal(got[1], expected[1])


@pytest.mark.skipif(not HAS_FAISS, reason="faiss is not installed")
@pytest.mark.parametrize("shared", [False, True])
def test_faiss_finds_the_library_distances(shared: bool) -> None:
    query, ids, table = _inputs(4, 60, 23, 2, shared=shared)
    dist, _ = baselines.faiss_knn_lookup(query, ids, table, 9, threads=2)
    np.testing.assert_array_equal(dist, er.topk_hamming_lookup(query, ids, table, 9)[1])


@pytest.mark.skipif(not HAS_TORCH, reason="torch is not installed")
@pytest.mark.parametrize("shared", [False, True])
def test_torch_baselines_agree_with_numpy(shared: bool) -> None:
    import torch

    cfg = Config("t", batch=3, length=40, rows=50, dim=8, bits=64, k=6, shared=shared)
    data = make_data(cfg, seed=3)
    emb, target, ids = (torch.from_numpy(a) for a in (data.embedding, data.target, data.ids))
    values, _ = baselines.torch_inner_product(target, ids, emb, cfg.k)
    scores = np.einsum("bd,bld->bl", data.target, np.broadcast_to(data.embedding[data.ids], (3, 40, 8)))
    np.testing.assert_allclose(values.numpy(), -np.sort(-scores, axis=1)[:, : cfg.k], rtol=1e-5)
    dist, _ = baselines.torch_eta_port(target, ids, emb, torch.from_numpy(data.planes), cfg.k)
    # Same signatures, so the same distances (torch.topk's order of ties is its own).
    lib_dist = er.topk_hamming_lookup(data.query, data.ids, data.table, cfg.k)[1]
    np.testing.assert_array_equal(dist.numpy().astype(np.int32), lib_dist)


def test_cli_runs_both_configurations_and_plots(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sweep, "SWEEPS", {"length": (30, 60), "bits": (64, 128), "rows": (50, 500)})
    png = tmp_path / "sweep.png"
    argv = ["--batch", "4", "--length", "40", "--rows", "100", "--dim", "8", "--k", "5", "--threads", "1",
            "--repeat", "1", "--subset", "2", "--no-coldstart", "--plot", str(png)]
    assert cli.main(argv) == 0
    out = capsys.readouterr().out
    for expected in ("paper:", "long:", "floor", "etaretrieval topk_hamming_lookup", "numpy brute force",
                     "pack_signatures vs its BLAS projection", "[sweep rows]", "scaled"):
        assert expected in out
    assert png.stat().st_size > 0


def test_cli_device_cuda_fails_clearly_without_a_gpu() -> None:
    from numba import cuda

    if cuda.is_available():
        pytest.skip("a GPU is present")
    argv = ["--config", "paper", "--batch", "2", "--length", "8", "--rows", "10", "--dim", "4", "--k", "2",
            "--repeat", "1", "--device", "cuda", "--no-pack", "--no-coldstart"]
    with pytest.raises(SystemExit, match="--device cuda"):
        cli.main(argv)


def test_first_call_reports_each_step() -> None:
    seconds = first_call(None)  # the default on-disk cache, warm after this session's warm-up
    assert {"import", "pack_signatures", "topk_hamming_lookup", "topk_hamming"} <= set(seconds)
    assert HAS_TORCH == ("torch ops (pack, lookup, topk)" in seconds)
    assert all(t > 0 for t in seconds.values())


def test_pipeline_runs_every_measurement_and_formats() -> None:
    """``--pipeline`` on tiny sizes (idle only): every section, parts, sums and ratios; p50 <= p99."""
    from etaretrieval.bench.pipeline import PipelineConfig, format_pipeline, run_pipeline

    cfg = PipelineConfig(candidates=8, length=64, rows=500, dim=8, bits=128, k=5, batch=4, train_length=30,
                         requests=10)
    results = run_pipeline(cfg, load=False)
    titles = ["serving loop (idle)", *(["training step (idle)"] if HAS_TORCH else []), "single-call latency (idle)",
              "concurrent callers (idle)", "small call against NumPy (idle)"]
    assert list(results) == titles
    for title, rows in results.items():
        for label, p50, p99 in rows:
            assert 0 < p50 and ("ratio" in label or "requests/s" in label or p50 <= p99), (title, label)
    serving = dict((label.strip(), p50) for label, p50, _ in results["serving loop (idle)"])
    parts = (serving["hash candidates (alone)"] + serving["fused lookup (alone)"]
             + serving["gather retrieved ids (alone)"])
    assert serving["sum of the parts"] == pytest.approx(parts)
    assert serving["ratio loop / parts"] == pytest.approx(serving["serving request"] / parts)
    text = format_pipeline(cfg, results)
    assert "ratio loop / parts" in text and "topk_hamming_lookup B=64" in text and "ratio 4 callers / 1" in text
    assert "topk_hamming_lookup B=64 L=64, 1 ms apart" in text


def test_load_ratios_compare_each_loaded_p99_with_the_idle_p50s() -> None:
    """Paced rows are divided by their own idle p50 and by the back-to-back one; back-to-back rows by theirs."""
    from etaretrieval.bench.pipeline import _load_ratios

    idle = [("op B=1", 1.0, 5.0), ("op B=1, 1 ms apart", 4.0, 9.0)]
    loaded = [("op B=1", 1.5, 2.0), ("op B=1, 1 ms apart", 3.0, 8.0)]
    assert _load_ratios(idle, loaded) == [("  ratio op B=1", 2.0, 2.0), ("  ratio op B=1, 1 ms apart", 2.0, 8.0)]
