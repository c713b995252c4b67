"""docs/metrics.md's example is what ``docs/examples/metrics.py`` prints today."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
# Lines that depend on the kernel's choice of worker, or on the CPU time spent.
VARIABLE = ("echod_connections_open", "process_cpu_seconds_total")


def test_the_readme_shows_what_the_example_prints() -> None:
    printed = subprocess.run(
        [sys.executable, str(ROOT / "docs" / "examples" / "metrics.py")],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    ).stdout.splitlines()
    readme = (ROOT / "docs" / "metrics.md").read_text()
    block = readme.split("docs/examples/metrics.py` runs this", 1)[1].split("```")[1]
    shown = block.strip().splitlines()
    assert [line.split(" ")[0] for line in shown] == [line.split(" ")[0] for line in printed]
    assert [line for line in shown if not line.startswith(VARIABLE)] == [
        line for line in printed if not line.startswith(VARIABLE)
    ]
