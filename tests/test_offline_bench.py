"""python -m etaretrieval.bench.offline on a few rows: every way runs, is checked, and the floor adds up."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

pytest.importorskip("pyarrow")
pytest.importorskip("distributed")

from etaretrieval.bench import offline  # noqa: E402


def test_offline_bench_runs_every_way_and_its_floor(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert offline.main(["--rows", "300", "--longest", "40", "--items", "1000", "--k", "5", "--repeat", "1",
                         "--json", str(tmp_path / "figures.json")]) == 0
    seconds = json.loads((tmp_path / "figures.json").read_text())["seconds"]
    assert set(seconds) == {
        "padded", "retrieve_arrow", "cli (command)", "cli (job)", "cli, --compression none (command)",
        "cli, --compression none (job)", "start-up", "IO floor (snappy)", "IO floor (none)", "parquet read",
        "parquet write (snappy)", "parquet write (none)"}
    assert all(s > 0 for s in seconds.values())
    for codec in ("snappy", "none"):
        assert seconds[f"IO floor ({codec})"] == pytest.approx(seconds["parquet read"]
                                                               + seconds[f"parquet write ({codec})"])
    table = capsys.readouterr().out
    assert "x floor" in table and "cli (job)" in table


def test_in_process_ways_are_checked_against_the_baseline(monkeypatch: pytest.MonkeyPatch) -> None:
    from etaretrieval import dask as edask

    data = offline.offline_rows(rows=50, longest=30, items=200, k=4)
    assert set(offline.time_in_process(data, repeat=1)) == {"padded", "retrieve_arrow"}
    right = edask.retrieve_arrow
    monkeypatch.setattr(edask, "retrieve_arrow", lambda batch, table, k: right(batch, table, k - 1))
    with pytest.raises(AssertionError, match="retrieve_arrow and the padded API differ"):
        offline.time_in_process(data, repeat=1)
