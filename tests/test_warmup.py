"""``python -m etaretrieval.warmup``: progress lines, and a later process's real calls compile nothing."""

from __future__ import annotations

import io
import os
import re
import subprocess
import sys

import pytest

from etaretrieval import warmup
from etaretrieval._jit import CACHE, PURE_PYTHON

_LINE = re.compile(r"^\[\s*(\d+)/(\d+)\] (.+) \.\.\. (\d+\.\d\d) s \((\d+) compiled, (\d+) loaded\)$")

_REAL_CALLS = r"""
import numpy as np
import etaretrieval as er
from etaretrieval.warmup import _compiles

rng = np.random.default_rng(5)
table = rng.integers(0, 2**63, size=(1000, 2), dtype=np.int64).view(np.uint64)
ids = rng.integers(0, 1000, size=(64, 3000)).astype(np.int32)
er.topk_hamming_lookup(table[:64], ids, table, 16, lengths=rng.integers(0, 3001, size=64))  # threaded
er.topk_hamming_lookup(table[:64], ids, table, 16)  # threaded, no lengths
er.topk_hamming_lookup(table[:8], ids[:8, :2500], table, 16)  # past the small-call fast path, one thread
er.topk_hamming_lookup(table[:2], ids[:2, :50], table, 5)  # the fast path
er.topk_hamming_lookup(table[:2], ids[0, :50], table, 5, lengths=np.array([3, 50]), padding_side="left")
print(*_compiles())
"""


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, timeout=900,
                          env={k: v for k, v in os.environ.items() if k != "ETARETRIEVAL_NO_CACHE"})


def test_cli_warms_what_later_calls_use() -> None:
    """A tiny configuration: one progress line per variant; a new process's calls of it then compile nothing."""
    done = _run("-m", "etaretrieval.warmup", "--ops", "lookup,lookup-shared", "--ids", "int32", "--lengths")
    assert done.returncode == 0, done.stderr[-5000:]
    lines = done.stdout.splitlines()
    assert lines[0].startswith("etaretrieval warm-up: 12 variants, cache: ")
    progress = [_LINE.match(line) for line in lines[1:-1]]
    assert all(progress), lines
    assert [int(m.group(1)) for m in progress if m] == list(range(1, 13))
    assert all("topk_hamming_lookup: " in m.group(3) and "int32" in m.group(3) for m in progress if m)
    assert re.fullmatch(r"done in \d+\.\d s", lines[-1])
    if PURE_PYTHON or not CACHE:
        return
    assert sum(int(m.group(5)) + int(m.group(6)) for m in progress if m) > 0  # compiled or loaded something
    later = _run("-c", _REAL_CALLS)
    assert later.returncode == 0, later.stderr[-5000:]
    compiled, loaded = map(int, later.stdout.split())
    assert compiled == 0 and loaded > 0


def test_warmup_writes_a_line_per_step_and_returns_the_seconds() -> None:
    out = io.StringIO()
    work = warmup.steps(["hamming"])
    seconds = warmup.warmup(work, out=out)
    assert [label for label, _ in seconds] == [step.label for step in work] == ["hamming, 64 bits", "hamming, 256 bits"]
    assert all(_LINE.match(line) for line in out.getvalue().splitlines())


def test_every_variant_of_all_has_its_own_label() -> None:
    work = warmup.steps(warmup.OPS, warmup.ID_DTYPES, warmup.FLOAT_DTYPES, lengths=True, mask=True, padding=True,
                        strided=True)
    labels = [step.label for step in work]
    assert len(labels) == len(set(labels))
    assert "topk_hamming_lookup: uint16 (B, L) ids, padding id, 64 bits" in labels
    assert "topk_hamming: non-contiguous shared (L, W) keys, 256 bits" in labels


@pytest.mark.parametrize("argv, message", [(["--ops", "lookup,sort"], "unknown op sort"),
                                           (["--ids", "int128"], "unknown id dtype int128"),
                                           (["--floats", "float16"], "unknown float dtype float16")])
def test_unknown_names_are_refused(argv: list[str], message: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        warmup.main(argv)
    assert exit_.value.code == 2
    assert message in capsys.readouterr().err
