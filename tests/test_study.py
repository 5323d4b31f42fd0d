"""The study: metrics against brute force, and ``python -m etaretrieval.study --quick`` end to end (tiny)."""

from __future__ import annotations

import dataclasses
import importlib.util
import itertools
import json
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from etaretrieval.study import auc, logloss, recall_at_k


def auc_pairs(y: list[int], s: list[float]) -> float:
    """Brute force: over all (positive, negative) pairs, 1 if the positive scores higher, 1/2 if tied."""
    pos = [v for v, t in zip(s, y) if t]
    neg = [v for v, t in zip(s, y) if not t]
    wins = sum(1.0 if p > n else 0.5 if p == n else 0.0 for p, n in itertools.product(pos, neg))
    return wins / (len(pos) * len(neg))


@settings(deadline=None, max_examples=100)
@given(pairs=st.lists(st.tuples(st.integers(0, 1), st.integers(0, 5)), min_size=2, max_size=40))
def test_auc_equals_the_pairwise_count_with_ties(pairs: list[tuple[int, int]]) -> None:
    y = [p[0] for p in pairs]
    s = [p[1] / 2 for p in pairs]  # few distinct values: many ties
    if len(set(y)) < 2:
        with pytest.raises(ValueError, match="both classes"):
            auc(y, s)
        return
    assert auc(np.array(y), np.array(s)) == pytest.approx(auc_pairs(y, s), abs=1e-12)


def test_auc_edges_and_errors() -> None:
    assert auc([0, 1], [0.2, 0.9]) == 1.0 and auc([1, 0], [0.2, 0.9]) == 0.0
    assert auc([True, False, True], [3, 3, 3]) == 0.5
    with pytest.raises(ValueError, match="same length"):
        auc([0, 1], [0.5])
    with pytest.raises(ValueError, match="NaN"):
        auc([0, 1], [0.5, float("nan")])


def test_logloss_and_recall() -> None:
    y, p = np.array([1, 0, 1, 0]), np.array([0.9, 0.2, 0.6, 0.5])
    want = -np.mean(y * np.log(p) + (1 - y) * np.log(1 - p))
    assert logloss(y, p) == pytest.approx(want)
    assert np.isfinite(logloss([1, 0], [0.0, 1.0]))  # clipped
    assert recall_at_k([[0, 1]], [[-1, -1]]) != recall_at_k([[0, 1]], [[-1, -1]])  # nan: nothing to find
    assert recall_at_k([[4, 2, 7]], [[2, 7, 9]]) == pytest.approx(2 / 3)
    with pytest.raises(ValueError, match="same B"):
        recall_at_k([[1]], [[1], [2]])


def test_quick_study_runs_every_row(tmp_path: Path) -> None:
    pytest.importorskip("torch")
    pytest.importorskip("matplotlib")
    import numba
    import torch

    from etaretrieval import _threads
    from etaretrieval.study.cli import main
    from etaretrieval.study.variants import variants

    out = tmp_path / "study"
    args = ["--quick", "--users", "40", "--max-len", "60", "--batch-size", "32", "--k", "8",
            "--long-len", "300", "--long-batch", "2", "--threads", "1", "--out", str(out)]
    before = torch.get_num_threads(), numba.get_num_threads(), _threads.thread_count()
    assert main(args) == 0
    # --threads held for the run only: the caller's settings are as they were
    assert (torch.get_num_threads(), numba.get_num_threads(), _threads.thread_count()) == before
    table = (out / "study.md").read_text(encoding="utf-8")
    for variant in variants():
        assert f"| {variant.name} |" in table
    assert "Inference at L = 300" in table and "signature cache" in table
    runs = json.loads((out / "results.json").read_text(encoding="utf-8"))["runs"]
    assert len(runs) == len(variants()) and all(0 <= r["auc"] <= 1 for r in runs)
    hashed = {v.name for v in variants() if v.retrieval_bits is not None}
    assert hashed and all(0 <= r["recall"] <= 1 for r in runs if r["variant"] in hashed)
    assert (out / "study.png").stat().st_size > 0
    assert ".. list-table::" in (out / "study_tables.rst").read_text(encoding="utf-8")


def test_quick_frontier_runs_every_block_and_resumes(tmp_path: Path) -> None:
    pytest.importorskip("torch")
    pytest.importorskip("matplotlib")
    from etaretrieval.study.cli import main
    from etaretrieval.study.frontier import frontier_variants

    out = tmp_path / "frontier"
    args = ["--quick", "--frontier", "--users", "40", "--max-len", "60", "--batch-size", "32", "--ks", "4",
            "--k-fracs", "0.2", "--val-users", "0.25", "--threads", "1", "--out", str(out)]
    assert main(args) == 0
    saved = json.loads((out / "frontier.json").read_text(encoding="utf-8"))
    runs = {r["variant"]: r for r in saved["runs"]}
    ks = sorted({r["k"] for r in saved["runs"] if r["variant"] != "full attention + time"})
    assert len(ks) == 2 and ks[0] == 4  # --ks and a fraction of the median history
    assert set(runs) == {v.name for v in frontier_variants(ks)}
    assert all(0 <= r["auc"] <= 1 and 0 <= r["val_auc"] <= 1 and r["train_ms"] > 0 for r in runs.values())
    for name, r in runs.items():
        if name.startswith("TWIN"):
            assert r["consistency"] == 1.0  # it retrieves its own attention's top-k
        elif name.startswith("ETA"):
            assert 0 <= r["consistency"] <= 1 and 0 <= r["recall"] <= 1
        else:
            assert r["consistency"] != r["consistency"]  # nan: full attention retrieves nothing
    table = (out / "frontier.md").read_text(encoding="utf-8")
    assert "| full attention + time | all | 1 |" in table and "| TWIN + time | 4 |" in table
    assert "attention-space hash" in table and (out / "frontier.png").stat().st_size > 0
    assert "times: paired, median of 2 interleaved rounds" in table  # --quick: 2 timing rounds
    assert ".. list-table::" in (out / "frontier_table.rst").read_text(encoding="utf-8")
    before = (out / "frontier.json").read_text(encoding="utf-8")
    assert main(args) == 0  # every run is saved: nothing reruns, the same results
    assert (out / "frontier.json").read_text(encoding="utf-8") == before
    with pytest.raises(SystemExit, match="another configuration"):
        main(args[:-2] + ["--lr", "0.01", "--out", str(out)])
    with pytest.raises(SystemExit, match="another configuration"):
        main(args + ["--ragged"])
    older = json.loads(before)  # saved before the ragged option: read as padded runs
    del older["config"]["ragged"]
    (out / "frontier.json").write_text(json.dumps(older), encoding="utf-8")
    assert main(args) == 0  # nothing reruns
    assert json.loads((out / "frontier.json").read_text(encoding="utf-8"))["runs"] == older["runs"]
    assert main(args[:-2] + ["--ks", "4,64", "--report-only", "--out", str(out)]) == 0  # k = 64: no runs, none made
    assert json.loads((out / "frontier.json").read_text(encoding="utf-8"))["runs"] == older["runs"]
    table = (out / "frontier.md").read_text(encoding="utf-8")
    assert "| ETA 64 bits + time | 4 |" in table and "| 64 |" not in table
    with pytest.raises(SystemExit, match="unknown frontier blocks"):
        main(["--quick", "--frontier", "--blocks", "eta,sim", "--out", str(tmp_path / "x")])


def test_pick_k_reads_the_validation_auc() -> None:
    from etaretrieval.study.frontier import FULL, k_values, pick_k
    from etaretrieval.study.report import Summary

    def row(name: str, k: int, val: float) -> Summary:
        return Summary(name, 3, 0.8, 0.0, 0.5, 0.0, 10.0, 1.0, float("nan"), val_auc=val, k=k)

    rows = [row(FULL, 0, 0.80), row("ETA 64 bits + time, k = 16", 16, 0.790),
            row("ETA 64 bits + time, k = 64", 64, 0.7951), row("ETA 64 bits + time, k = 32", 32, 0.7949),
            row("TWIN + time, k = 16", 16, 0.70)]
    assert pick_k(rows) == {"ETA 64 bits + time": 64}  # the smallest k within 0.005; TWIN never gets there
    assert pick_k(rows, tolerance=0.011) == {"ETA 64 bits + time": 16}
    assert pick_k([row(FULL, 0, float("nan"))]) == {}
    assert k_values([16, 4], [0.5, 0.01], 100.0) == [1, 4, 16, 50]


def test_block_timing_rows(tmp_path: Path) -> None:
    pytest.importorskip("torch")
    from etaretrieval.study.cli import main

    out = tmp_path / "blocks"
    assert main(["--block-timing", "--k", "4", "--long-len", "50", "--long-batch", "2", "--threads", "1",
                 "--out", str(out)]) == 0
    table = (out / "blocks.md").read_text(encoding="utf-8")
    lines = [line for line in table.splitlines() if line.startswith("| ") and "ms" not in line]
    assert len(lines) == 6 and lines[0].startswith("| full attention + time | ") and "1.0x" in lines[0]
    assert "of which: retrieval" in table and "attention-space hash" in table and "TWIN + time (k = 4)" in table


def _small_samples():  # type: ignore[no-untyped-def]
    from etaretrieval.datasets import make_sequence_ctr

    return make_sequence_ctr(n_users=12, max_len=80, min_len=21, seed=3)


def test_to_tensors_of_a_ragged_batch_are_jagged_views() -> None:
    pytest.importorskip("torch")
    import torch

    from etaretrieval.study.runner import StudyConfig, load_batch, to_tensors

    data = _small_samples()
    rows = np.arange(0, data.n_samples, 3)
    ragged = data.ragged_batch(rows, 60)
    x, y = to_tensors(ragged)
    assert "mask" not in x and x["history"].is_nested and x["history"].layout == torch.jagged
    offsets = x["history"].offsets()
    for name in ("history", "times", "categories"):
        values = x[name].values()
        assert values.data_ptr() == getattr(ragged, name).ctypes.data  # no copy
        assert x[name].offsets() is offsets  # one ragged dimension for every per-behaviour input
        assert x[name].shape[0] == rows.size
    assert offsets.data_ptr() == ragged.offsets.ctypes.data
    np.testing.assert_array_equal(x["target"].numpy(), data.target[rows])
    np.testing.assert_array_equal(y.numpy(), data.label[rows])
    padded, _ = load_batch(data, rows, StudyConfig(max_len=60))
    assert not padded["history"].is_nested and padded["history"].shape == (rows.size, 60)
    again, _ = load_batch(data, rows, StudyConfig(max_len=60, ragged=True))
    np.testing.assert_array_equal(again["history"].values().numpy(), ragged.history)
    np.testing.assert_array_equal(again["history"].offsets().numpy(), ragged.offsets)


def _study_rows():  # type: ignore[no-untyped-def]
    from etaretrieval.study.frontier import frontier_variants
    from etaretrieval.study.variants import variants

    return variants() + frontier_variants([4], ("eta-attn", "twin"))


@pytest.mark.parametrize("name", [v.name for v in _study_rows()] if importlib.util.find_spec("torch") else [])
def test_ragged_and_padded_batches_give_the_same_logits_and_gradients(name: str) -> None:
    """Every block of the study's table and frontier: one model, the same rows padded to max_len and ragged."""
    import torch

    from etaretrieval.study.runner import StudyConfig, build_model, load_batch

    data = _small_samples()
    cfg = StudyConfig(max_len=60, k=4, dim=8, hidden=(16,))
    variant = next(v for v in _study_rows() if v.name == name)
    model = build_model(variant, data, cfg, 0)
    rows = np.arange(1, data.n_samples, 5)
    grads = []
    for ragged in (False, True):
        x, y = load_batch(data, rows, dataclasses.replace(cfg, ragged=ragged))
        model.zero_grad()
        logits = model(**x)
        torch.nn.functional.binary_cross_entropy_with_logits(logits, y).backward()
        grads.append((logits.detach(), [p.grad.clone() for p in model.parameters() if p.grad is not None]))
    (padded, padded_grads), (ragged_logits, ragged_grads) = grads
    torch.testing.assert_close(ragged_logits, padded, rtol=1e-5, atol=1e-5)
    assert len(ragged_grads) == len(padded_grads)
    for got, want in zip(ragged_grads, padded_grads):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)


def test_quick_study_trains_on_ragged_batches_as_on_padded(tmp_path: Path) -> None:
    """The same rows and seed trained ragged and padded: the same test metrics up to float rounding."""
    pytest.importorskip("torch")
    pytest.importorskip("matplotlib")
    from etaretrieval.study.cli import main

    runs = {}
    for layout in ("--ragged", "--no-ragged"):
        out = tmp_path / layout
        assert main(["--quick", "--users", "40", "--max-len", "60", "--batch-size", "32", "--k", "8",
                     "--only", "ETA 64 bits + time", "--only", "full attention + time", "--long-len", "0",
                     "--threads", "1", layout, "--out", str(out)]) == 0
        runs[layout] = {r["variant"]: r for r in json.loads((out / "results.json").read_text("utf-8"))["runs"]}
        assert ("ragged (torch.nested jagged" in (out / "study.md").read_text("utf-8")) == (layout == "--ragged")
    assert set(runs["--ragged"]) == set(runs["--no-ragged"]) >= {"ETA 64 bits + time", "full attention + time"}
    for name, ragged in runs["--ragged"].items():
        padded = runs["--no-ragged"][name]
        assert ragged["auc"] == pytest.approx(padded["auc"], abs=2e-3)
        assert ragged["logloss"] == pytest.approx(padded["logloss"], rel=1e-3)
        assert ragged["recall"] == pytest.approx(padded["recall"], nan_ok=True, abs=0.01)


def test_train_step_bench_times_every_layout(capsys: pytest.CaptureFixture[str]) -> None:
    pytest.importorskip("torch")
    from etaretrieval.bench import cli
    from etaretrieval.bench.trainstep import LAYOUTS, TrainStepConfig, format_train_step, run_train_step

    cfg = TrainStepConfig(max_len=60, batch_size=16, rounds=2, batches=2, users=12)
    rows, line = run_train_step(cfg)
    assert [(r.block, r.layout) for r in rows] == [(b, layout) for b in cfg.blocks for layout in LAYOUTS]
    assert "batches of 16" in line and "padded to 60" in line
    for r in rows:
        assert r.step_ms > 0 and r.infer_ms > 0 and r.batch_ms > 0
        assert r.max_logit_diff < 1e-4 if r.layout != "recent window only" else r.max_logit_diff != r.max_logit_diff
        assert (r.ragged_speedup == r.infer_speedup == 1.0) == (r.layout == "ragged")
    assert "infer ms" in format_train_step(cfg, rows, line, 1)
    with pytest.raises(ValueError, match="unknown study rows"):
        run_train_step(TrainStepConfig(blocks=("ETA 7 bits",)))
    assert cli.main(["--train-step", "--batch", "8", "--length", "40", "--repeat", "1"]) == 0
    out = capsys.readouterr().out
    assert "B = 8" in out and out.count("padded to the longest row") == 2
