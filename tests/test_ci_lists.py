"""The Makefile's simulator step runs every test file that holds ``cudasim``-marked tests.

The CPU run skips those tests (``conftest.py``), so a file missing from the
``test-cudasim`` line would never run them anywhere.
"""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_every_cudasim_file_runs_in_the_simulator_step() -> None:
    line = next(s for s in (ROOT / "Makefile").read_text().splitlines() if "NUMBA_ENABLE_CUDASIM=1" in s)
    listed = set(re.findall(r"tests/\S+\.py", line))
    mark = re.compile(r"^(@pytest\.mark\.cudasim|pytestmark = .*\bcudasim\b)", re.MULTILINE)
    marked = {f"tests/{p.name}" for p in (ROOT / "tests").glob("test_*.py") if mark.search(p.read_text())}
    assert marked, "no cudasim-marked test found: the search is broken"
    assert marked <= listed, f"cudasim-marked tests not in the Makefile's test-cudasim line: {sorted(marked - listed)}"
