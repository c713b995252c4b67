"""The bench report's pure parts: the README it rewrites and the conclusions it draws.

The README's IO-model prose is generated from the figures, so these tests pin down
that it names the numbers of the run it is given, and that publishing touches only
the text between its markers.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:  # bench/ is a directory of the repository, not installed
    sys.path.insert(0, str(ROOT))

from bench import report  # noqa: E402


def figures(
    rate: float, p99: int, cpu: float, per_conn: float, errors: dict[str, int] | None = None
) -> dict[str, Any]:
    return {
        "requests_per_s": rate,
        "latency_us": {"p50": p99 // 2, "p99": p99, "p99.9": p99 * 2},
        "errors": errors or {},
        "warnings": [],
        "workers": [{"saturated": False}],
        "server": {
            "cpu_us_per_msg": cpu,
            "cpu_mean_pct": 90.0,
            "rss_peak_bytes": 20 << 20,
            "rss_per_connection_bytes": per_conn,
        },
    }


def results() -> dict[str, Any]:
    # server -> cell -> figures; the same in all three rounds but for one rate.
    table = {
        "epoll": {
            "rr-1k-10": figures(50_000, 400, 6.0, 0),
            "idle-10k": figures(90_000, 2_000, 6.3, 600),
        },
        "poll": {
            "rr-1k-10": figures(48_000, 450, 6.5, 0),
            "idle-10k": figures(20_000, 9_000, 30.0, 700),
        },
        "select": {
            "rr-1k-10": figures(49_000, 420, 6.4, 0),
            "idle-10k": figures(80_000, 5_000, 8.0, 10, {"closed": 1234}),
        },
        "threads": {
            "rr-1k-10": figures(30_000, 900, 12.0, 4096),
            "idle-10k": figures(40_000, 8_000, 14.0, 40_960),
        },
        "c-epoll": {
            "rr-1k-10": figures(60_000, 300, 4.0, 0),
            "idle-10k": figures(95_000, 1_500, 4.5, 4096),
        },
    }
    runs: list[dict[str, Any]] = []
    for round_number in (1, 2, 3):
        for server, by_cell in table.items():
            for cell, figs in by_cell.items():
                runs.append(
                    {"server": server, "cell": cell, "round": round_number, "figures": figs}
                )
        for backend in ("epoll",):
            for count, rate, cpu in ((1, 100_000 + round_number, 6.0), (2, 150_000, 7.5)):
                runs.append(
                    {
                        "server": f"{backend} x{count}",
                        "backend": backend,
                        "workers": count,
                        "cell": "workers-1k",
                        "round": round_number,
                        "figures": figures(rate, 1_000, cpu, 0),
                    }
                )
    cells = [
        {
            "name": "rr-1k-10",
            "label": "1 KiB rr, 10 conns",
            "args": [],
            "connections": 10,
            "role": "few",
        },
        {
            "name": "idle-10k",
            "label": "10k conns, 100 active",
            "args": ["--active", "100"],
            "connections": 10_000,
            "role": "many",
        },
        {
            "name": "workers-1k",
            "label": "workers",
            "args": [],
            "connections": 100,
            "workers": [1, 2],
            "backends": ["epoll"],
        },
    ]
    return {
        "timestamp": "2026-01-01T00:00:00+0000",
        "elapsed_s": 1.0,
        "quick": False,
        "timing": {"rounds": 3, "duration_s": 3.5, "warmup_s": 1.0},
        "environment": {
            "cpus": 2,
            "python": "3.11",
            "kernel": "6",
            "machine": "x86_64",
            "pinning": "pinned",
        },
        "notes": [],
        "servers": list(table),
        "reference": "c-epoll",
        "cells": cells,
        "runs": runs,
    }


def test_findings_name_the_figures_they_rest_on() -> None:
    text = "\n".join(report.iomodel_findings(report.Results(results())))
    assert "epoll served the most (50,000 req/s) and threads the least (30,000 req/s)" in text
    assert "against 4.00 µs for the C reference" in text
    # poll's CPU per request grew most: 6.5 -> 30.0 µs.
    assert "10,000 connections, 100 of them busy.** CPU per request grew most for poll, " in text
    assert "4.62x (6.50 µs → 30.00 µs)" in text
    # select saw errors at 10k: reported, and left out of the 10k rankings.
    assert "select did not hold 10,000 connections cleanly" in text
    assert "3,702 closed" in text  # summed over the three rounds
    assert "threads 40.0 KiB" in text and "epoll 0.6 KiB" in text
    assert "cheapest echod backend per request was epoll at both (6.00 µs and 6.30 µs)" in text


def test_workers_findings_compare_medians() -> None:
    lines = report.workers_findings(report.Results(results()))
    assert lines == [
        "epoll: 2 workers 150,000 req/s against 1 worker 100,002 req/s (1.50x), "
        "server CPU 7.50 µs against 6.00 µs per message."
    ]


def test_update_readme_rewrites_only_between_markers(tmp_path: Path) -> None:
    readme = tmp_path / "README.md"
    head = "# x\n\nintro\n"
    tail = "## Dependencies\n\nnone\n"
    readme.write_text(head + "\n" + tail)
    report.update_readme({"bench": "first", "iomodel": "io"}, readme)
    text = readme.read_text()
    assert text.startswith(head) and text.endswith(tail)
    assert text.index("<!-- bench:start -->\nfirst\n<!-- bench:end -->") < text.index("## Depend")
    report.update_readme({"bench": "second"}, readme)
    again = readme.read_text()
    assert "first" not in again and "second" in again
    assert again.count("<!-- bench:start -->") == 1
    assert "<!-- iomodel:start -->\nio\n<!-- iomodel:end -->" in again


def test_markdown_has_every_section() -> None:
    text = report.markdown(results(), "")
    for heading in ("## Summary", "## Which IO model?", "## One worker against two"):
        assert heading in text
    assert "| select | 49,000 | 80,000 ✗ |" in text


def test_rounds_that_overlapped_other_load_are_left_out_when_others_exist() -> None:
    data = results()
    poll_10 = [r for r in data["runs"] if r["server"] == "poll" and r["cell"] == "rr-1k-10"]
    poll_10[0]["figures"] = figures(1.0, 1, 1.0, 0)
    poll_10[0]["contended"] = ["pytest tests/robust"]
    for run in (r for r in data["runs"] if r["server"] == "epoll" and r["cell"] == "idle-10k"):
        run["contended"] = ["pytest tests/robust"]
    res = report.Results(data)
    assert res.median("poll", "rr-1k-10", report._rate) == 48_000
    assert not res.contended("poll", "rr-1k-10")  # two of three rounds were undisturbed
    assert res.contended("epoll", "idle-10k") and "‡" in res.marks("epoll", "idle-10k")
    note = res.contention_note()
    assert note is not None and note.startswith("4 of 36 runs overlapped other load")
