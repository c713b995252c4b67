"""echod(8) and echod-bench(1): generated from the option tables, current, and valid roff."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from echod import manpage
from echod.config import OPTIONS
from loadtest import params
from tests.support import require_tool

PAGES = {name: manpage.PAGES_DIR / name for name in ("echod.8", "echod-bench.1")}


def render(page: Path) -> subprocess.CompletedProcess[str]:
    """``man -l`` as a reader would see it; groff's warnings go to stderr."""
    man = require_tool("man")
    env = {**os.environ, "MANWIDTH": "200", "LC_ALL": "C.UTF-8", "MAN_KEEP_FORMATTING": ""}
    return subprocess.run(
        [man, "--warnings", "-l", str(page)],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )


def test_committed_pages_match_the_option_tables() -> None:
    assert manpage.main(["--check"]) == 0, "run: python -m echod.manpage"


def test_check_catches_a_stale_page(tmp_path: Path) -> None:
    assert manpage.main([str(tmp_path)]) == 0
    assert manpage.main(["--check", str(tmp_path)]) == 0
    page = tmp_path / "echod.8"
    page.write_text(page.read_text().replace("ECHOD_PORT", "ECHOD_PROT"))
    assert manpage.main(["--check", str(tmp_path)]) == 1
    (tmp_path / "echod-bench.1").unlink()
    assert manpage.main(["--check", str(tmp_path)]) == 1


@pytest.mark.parametrize("name", sorted(PAGES))
def test_page_renders_without_warnings(name: str) -> None:
    result = render(PAGES[name])
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    assert "NAME" in result.stdout and "SYNOPSIS" in result.stdout


def test_echod_page_documents_every_option_and_its_variable() -> None:
    text = render(PAGES["echod.8"]).stdout
    for option in OPTIONS:
        assert option.flag in text
        assert option.env in text
    for flag in ("--version", "--list-backends"):
        assert flag in text


def test_bench_page_documents_every_option() -> None:
    text = render(PAGES["echod-bench.1"]).stdout
    for flag, *_ in params.OPTIONS:
        assert flag in text
    assert "--no-progress" in text


def test_bad_roff_would_be_caught(tmp_path: Path) -> None:
    """The render check is not blind: an unknown request draws a groff warning."""
    page = tmp_path / "broken.8"
    page.write_text(PAGES["echod.8"].read_text().replace(".SH OPTIONS", ".XX OPTIONS"))
    assert render(page).stderr != ""


@pytest.mark.slow
def test_install_script_puts_the_pages_where_man_finds_them(tmp_path: Path) -> None:
    """What Documentation=man:echod(8) resolves to after `make install-systemd`."""
    man = require_tool("man")
    env = {**os.environ, "DESTDIR": str(tmp_path), "PYTHON": sys.executable}
    script = manpage.PAGES_DIR.parent.parent / "systemd" / "install.sh"
    result = subprocess.run(
        ["sh", str(script)], env=env, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr
    mandir = tmp_path / "usr/local/share/man"
    for name, page in PAGES.items():
        installed = mandir / f"man{name.rsplit('.', 1)[1]}" / name
        assert installed.read_text() == page.read_text()
    found = subprocess.run(
        [man, "-M", str(mandir), "-w", "8", "echod"], capture_output=True, text=True, timeout=60
    )
    assert found.stdout.strip() == str(mandir / "man8/echod.8")
    assert (tmp_path / "etc/systemd/system/echod-metrics.socket").exists()


def test_bench_page_describes_merge() -> None:
    text = render(PAGES["echod-bench.1"]).stdout
    assert "echod-bench merge RESULT.json..." in text
    merge = text.split("\nMERGE\n", 1)[1].split("\nEXIT STATUS\n", 1)[0]
    assert "--start-at" in merge and "--json FILE" in merge and "overlap" in merge
