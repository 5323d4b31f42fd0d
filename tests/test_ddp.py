"""Data-parallel training: examples/train_ddp.py under torchrun with 2 processes (gloo on CPU).

After every optimizer step the SignatureCache is the same on both ranks and equals fresh hashing of the
rank's weights, with sparse and with dense embedding gradients, and the loss falls.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
dist = pytest.importorskip("torch.distributed")

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "train_ddp.py"


@pytest.mark.skipif(not dist.is_available() or not dist.is_gloo_available(), reason="needs torch.distributed with gloo")
@pytest.mark.parametrize("gradients", ["sparse", "dense"])
def test_two_ranks_keep_identical_caches_and_learn(tmp_path: Path, gradients: str) -> None:
    report = tmp_path / "report.json"
    command = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", str(EXAMPLE),
        "--steps", "30", "--users", "200", "--seq-len", "150", "--batch", "128", "--lr", "0.03",
        "--report", str(report),
    ] + (["--dense"] if gradients == "dense" else [])
    done = subprocess.run(command, check=False, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    result = json.loads(report.read_text())
    assert result["world_size"] == 2 and result["backend"] == "gloo"
    assert result["sparse"] is (gradients == "sparse")
    assert len(result["digests"]) == 30
    for step, (rank0, rank1) in enumerate(result["digests"]):
        assert rank0[1] == rank1[1], f"weights differ across ranks after step {step}"
        assert rank0[0] == rank1[0], f"caches differ across ranks after step {step}"
    assert all(all(ok) for ok in result["cache_is_fresh"]), "a cache differs from fresh hashing of its weights"
    assert len({tuple(d[0]) for d in result["digests"]}) > 1  # the caches did follow the training
    losses = result["losses"]
    assert sum(losses[-6:]) / 6 < sum(losses[:6]) / 6 - 0.03, losses
