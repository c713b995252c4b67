"""docs/examples/test_retrying_client.py passes as another project would run it, and is
the example docs/api.md shows."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "docs" / "examples" / "test_retrying_client.py"


def test_the_retrying_client_example_passes(tmp_path: Path) -> None:
    # From another directory, with an empty configuration instead of echod's own.
    ini = tmp_path / "pytest.ini"
    ini.write_text("[pytest]\n")
    run = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-c", str(ini), "--rootdir", str(tmp_path),
         "-p", "no:cacheprovider", str(EXAMPLE)],
        cwd=tmp_path, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert run.returncode == 0, run.stdout + run.stderr
    assert "2 passed" in run.stdout


def test_docs_api_shows_the_example_as_it_is() -> None:
    page = (ROOT / "docs" / "api.md").read_text()
    shown = page.split("<!-- example:start -->", 1)[1].split("<!-- example:end -->", 1)[0]
    code = shown.split("```python\n", 1)[1].rsplit("```", 1)[0]
    assert code == EXAMPLE.read_text()
