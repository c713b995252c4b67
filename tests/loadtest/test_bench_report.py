"""The bench report's pure parts: the README it rewrites, the conclusions it draws,
and the marks it puts on figures that are not a server's own.

The README's prose is generated from the figures, so these tests pin down that it
names the numbers of the run it is given, that publishing touches only the text
between its markers, and that a killed server, a generator-bound row and a faulty
cell are marked in every table and chart, from small synthetic results files.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:  # bench/ is a directory of the repository, not installed
    sys.path.insert(0, str(ROOT))

from bench import charts, prose, query, report, tables  # noqa: E402
from bench.readme import update_readme  # noqa: E402


def figures(
    rate: float, p99: int, cpu: float, per_conn: float, errors: dict[str, int] | None = None
) -> dict[str, Any]:
    return {
        "requests_per_s": rate,
        "latency_us": {"p50": p99 // 2, "p99": p99, "p99.9": p99 * 2},
        "errors": errors or {},
        "warnings": [],
        "workers": [{"cpu_pct": 70.0, "saturated": False}],
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
            "rr-1k-10": figures(55_000, 300, 4.0, 0),
            "idle-10k": figures(95_000, 1_500, 4.5, 4096),
        },
    }
    runs: list[dict[str, Any]] = []
    for round_number in (1, 2, 3):
        # The C client in rr-1k-10, beside echod-bench: 100,000 against the C reference
        # (echod-bench's 55,000 there makes the ceiling ratio 0.55); none for threads.
        for server, rate in (
            ("c-epoll", 100_000), ("epoll", 92_000), ("poll", 60_000), ("select", 50_000)
        ):  # fmt: skip
            runs.append(
                {
                    "server": server,
                    "cell": "rr-1k-10",
                    "generator": "c-client",
                    "round": round_number,
                    "figures": figures(rate, 300, 4.0, 0),
                }
            )
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
            "c_client": True,
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
    text = "\n".join(prose.iomodel_findings(query.Results(results())))
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
    lines = prose.workers_findings(query.Results(results()))
    assert lines == [
        "epoll: 2 workers 150,000 req/s against 1 worker 100,002 req/s (1.50x), "
        "server CPU 7.50 µs against 6.00 µs per message."
    ]


def test_update_readme_rewrites_only_between_markers(tmp_path: Path) -> None:
    readme = tmp_path / "README.md"
    head = "# x\n\nintro\n"
    tail = "## Documentation\n\nnone\n"
    readme.write_text(head + "\n" + tail)
    update_readme({"bench": "first", "iomodel": "io"}, readme)
    text = readme.read_text()
    assert text.startswith(head) and text.endswith(tail)
    assert text.index("<!-- bench:start -->\nfirst\n<!-- bench:end -->") < text.index(
        "## Documentation"
    )
    update_readme({"bench": "second"}, readme)
    again = readme.read_text()
    assert "first" not in again and "second" in again
    assert again.count("<!-- bench:start -->") == 1
    assert "<!-- iomodel:start -->\nio\n<!-- iomodel:end -->" in again


def test_markdown_has_every_section() -> None:
    text = report.markdown(results(), "")
    for heading in (
        "## Summary",
        "## Generator ceiling",
        "## Which IO model?",
        "## One worker against two",
    ):
        assert heading in text
    assert "| select | 49,000 | 80,000 ✗ |" in text


def test_rounds_that_overlapped_other_load_are_left_out_when_others_exist() -> None:
    data = results()
    poll_10 = [r for r in data["runs"] if r["server"] == "poll" and r["cell"] == "rr-1k-10"]
    poll_10[0]["figures"] = figures(1.0, 1, 1.0, 0)
    poll_10[0]["contended"] = ["pytest tests/robust"]
    for run in (r for r in data["runs"] if r["server"] == "epoll" and r["cell"] == "idle-10k"):
        run["contended"] = ["pytest tests/robust"]
    res = query.Results(data)
    assert res.median("poll", "rr-1k-10", query.rate) == 48_000
    assert not res.contended("poll", "rr-1k-10")  # two of three rounds were undisturbed
    assert res.contended("epoll", "idle-10k") and "‡" in res.marks("epoll", "idle-10k")
    note = res.contention_note()
    assert note is not None and note.startswith("4 of 48 runs overlapped other load")


def _killed(data: dict[str, Any], server: str, cell: str) -> dict[str, Any]:
    """Mark the first round of ``server`` in ``cell`` as killed after SIGTERM, as the
    runner records it; the figures stay clean, so only the kill can mark the row."""
    run = next(
        r
        for r in data["runs"]
        if r["server"] == server and r["cell"] == cell and r.get("generator") != "c-client"
    )
    run.update(server_exit=-9, server_killed=True, error="server killed after SIGTERM")
    return data


def _row(lines: list[str], name: str) -> str:
    return next(line for line in lines if line.startswith(f"| {name} |"))


def test_a_server_killed_after_sigterm_is_marked_in_every_table() -> None:
    data = results()
    for server, cell in (("poll", "rr-1k-10"), ("poll", "idle-10k"), ("epoll x2", "workers-1k")):
        _killed(data, server, cell)
    res = query.Results(data)
    assert res.faults("poll", "rr-1k-10") == {"killed after SIGTERM": 1}
    summary = _row(tables.summary_table(res), "poll")
    assert summary.startswith("| poll | 48,000 ✗ |") and summary.endswith("0.7 KiB ✗ |")
    assert "48,000 ✗ | 20,000 ✗ |" in _row(tables.iomodel_table(res), "poll")
    assert "✗" in _row(tables.workers_table(res), "epoll | 2")
    cell = next(c for c in res.cells if c["name"] == "rr-1k-10")
    assert "✗" in _row(tables.cell_table(res, cell), "poll")
    # The clean rows stay clean, and Notes say what happened.
    assert "✗" not in _row(tables.summary_table(res), "threads")
    assert "round 1, poll, rr-1k-10: server killed after SIGTERM" in report.markdown(data, "")
    assert (
        "**poll did not stop cleanly at 10,000 connections**: it did not stop cleanly on SIGTERM "
        "(killed after SIGTERM in 1 round)." in prose.iomodel_findings(res)
    )
    # A record from before "server_killed" existed says so by its exit status alone.
    del data["runs"][next(i for i, r in enumerate(data["runs"]) if r.get("server_killed"))][
        "server_killed"
    ]
    assert "killed after SIGTERM" in query.Results(data).faults("poll", "rr-1k-10")


def test_rows_are_generator_bound_judged_against_the_ceiling() -> None:
    res = query.Results(results())
    # No worker saturated: epoll (50,000 of echod-bench's 55,000 ceiling) is bound by the
    # ceiling alone; poll (48,000: 0.87) is not.
    assert not res.saturated("epoll", "rr-1k-10")
    assert res.share_of_ceiling("epoll", "rr-1k-10") == 50_000 / 55_000
    assert res.generator_bound("epoll", "rr-1k-10")
    assert not res.generator_bound("poll", "rr-1k-10")
    # A cell with no ceiling falls back on saturation alone.
    assert not res.generator_bound("epoll", "idle-10k")
    assert res.ceiling_ratio("rr-1k-10") == 0.55
    summary = tables.summary_table(res)
    assert _row(summary, "epoll").startswith("| epoll | 50,000 † | 400 | 6.00 | 0.91 |")
    assert _row(summary, "poll").startswith("| poll | 48,000 | 450 | 6.50 | 0.87 |")
    assert _row(summary, "generator ceiling").startswith(
        "| generator ceiling | 55,000 † of C client's 100,000 | 0.55 of C client |"
    )
    ceiling = _row(tables.ceiling_table(res), "1 KiB rr, 10 conns")
    assert "| 55,000 (55,000..55,000) † | 100,000 (100,000..100,000) | 0.55 |" in ceiling
    assert prose.ceiling_findings(res) == [
        "**1 KiB rr, 10 conns:** echod-bench drove the C reference at 55,000 req/s, the "
        "C client at 100,000 req/s: 0.55 of the ceiling (median of the rounds' ratios). "
        "1 of 4 echod "
        "backends reached 90% of echod-bench's figure there (epoll): their req/s is the "
        "generator's (†). Against the same echod backends echod-bench reached 0.54 (epoll) "
        "to 0.98 of the C client's req/s. By the C client's own medians, epoll came within "
        "10% of what it drove the C reference at: where the two generators disagree on a "
        "row, runs minutes apart differed by more than the servers do; compare those rows "
        "by CPU µs/msg."
    ]


def test_the_c_client_drives_every_server_beside_echod_bench() -> None:
    res = query.Results(results())
    assert res.c_client_rate("epoll", "rr-1k-10") == 92_000
    assert res.of_c_client("poll", "rr-1k-10") == 48_000 / 60_000
    assert res.c_client_share("epoll", "rr-1k-10") == 0.92
    # A server the C client did not drive has no ratio, not a zero.
    assert res.of_c_client("threads", "rr-1k-10") is None
    by_c = tables.c_client_table(res)
    assert by_c[0] == (
        "| backend | C client req/s, 1 KiB rr, 10 conns | echod-bench / C client "
        "| C client: of its ceiling |"
    )
    assert _row(by_c, "epoll") == "| epoll | 92,000 | 0.54 | 0.92 |"
    assert _row(by_c, "threads") == "| threads | - | - | - |"
    assert _row(by_c, "**c-epoll**") == "| **c-epoll** | 100,000 | 0.55 | 1.00 |"
    section = report.markdown(results(), "docs/bench/")
    assert by_c[2] in section.split("## Generator ceiling")[1]


def test_the_published_report_and_readme_are_what_the_stored_results_render() -> None:
    """docs/bench/latest.md and the README's bench block are generated: a change to the
    rendering republishes them (`python -m bench --publish-only` renders latest.json)."""
    data = json.loads((ROOT / "docs" / "bench" / "latest.json").read_text())
    assert (ROOT / "docs" / "bench" / "latest.md").read_text() == report.markdown(data, "")
    block = report.readme_sections(data)["bench"]
    assert f"<!-- bench:start -->\n{block}\n<!-- bench:end -->" in (ROOT / "README.md").read_text()


def test_the_readme_carries_the_headline_table_and_links_the_rest(tmp_path: Path) -> None:
    readme_file = tmp_path / "README.md"
    readme_file.write_text("# x\n\n## Documentation\n")
    blocks = report.readme_sections(results())
    update_readme(blocks, readme_file)
    text = readme_file.read_text()
    assert "| generator ceiling | 55,000 † of C client's 100,000 | 0.55 of C client |" in text
    # The front page holds the headline table; the other tables are the report's alone,
    # named and linked, and the marks are explained once.
    assert "[docs/bench/latest.md](docs/bench/latest.md)" in text
    assert '"Generator ceiling", "Which IO model?"' in text
    assert "### Generator ceiling" not in text and "## Which IO model?" not in text
    assert text.count(prose.LEGEND) == 1
    # One assembly path: the README's table is the report's, line for line.
    full = report.markdown(results(), "docs/bench/")
    for line in tables.summary_table(query.Results(results())):
        assert line in full and line in text


def _bars(fig: Any) -> dict[str, Any]:
    return {bar.get_gid(): bar for ax in fig.axes for bar in ax.patches if bar.get_gid()}


def _legend_texts(fig: Any) -> list[str]:
    legends = [*fig.legends, *(ax.get_legend() for ax in fig.axes if ax.get_legend())]
    return [t.get_text() for legend in legends for t in legend.get_texts()]


def _gap_labels(fig: Any) -> list[str]:
    return [t.get_text() for ax in fig.axes for t in ax.texts]


def _not_run(data: dict[str, Any], server: str, cell: str) -> dict[str, Any]:
    """``server`` kept out of ``cell`` in every round, as the runner records it."""
    for r in data["runs"]:
        if r["server"] == server and r["cell"] == cell and r.get("generator") != "c-client":
            r.pop("figures", None)
            r["error"] = "not run: select() watches descriptors below FD_SETSIZE (1024)"
    return data


def test_a_cell_not_run_has_its_own_mark_one_note_and_no_failure_sentence() -> None:
    data = _not_run(results(), "select", "idle-10k")
    res = query.Results(data)
    assert res.faults("select", "idle-10k") == {}
    assert res.marks("select", "idle-10k") == " ∅"
    assert "| select | 49,000 | - ∅ |" in _row(tables.iomodel_table(res), "select")
    assert _row(tables.summary_table(res), "select").endswith("| - ∅ |")
    text = report.markdown(data, "")
    # One note for the three rounds, and the legend says what the mark means.
    assert text.count("FD_SETSIZE (1024)") == 2  # the note, and the sentence below
    assert "- ∅ not run: select in idle-10k: select() watches descriptors below" in text
    assert "∅ not run: the cell is beyond what the server can do" in prose.LEGEND
    findings = prose.iomodel_findings(res)
    assert not any("did not hold" in f for f in findings)
    assert (
        "**select was not run at 10,000 connections**: select() watches descriptors "
        "below FD_SETSIZE (1024)." in findings
    )


def test_charts_label_gaps_and_draw_no_group_for_a_cell_nothing_ran_in() -> None:
    data = _not_run(results(), "select", "idle-10k")
    # A cell nothing ran in, and a round that failed outright for threads.
    data["cells"].append(
        {"name": "c100k-100k", "label": "100k", "args": [], "connections": 100_000}
    )
    data["runs"] += [
        {"server": s, "cell": "c100k-100k", "round": 1, "error": "not run: the hard limit"}
        for s in data["servers"]
    ]
    for r in data["runs"]:
        if r["server"] == "threads" and r["cell"] == "rr-1k-10":
            r.pop("figures")
            r["error"] = "echod-bench exited 1"
    drawn = charts.figures(data)
    try:
        for name in ("throughput", "cpu"):
            ticks = [t.get_text() for t in drawn[name].axes[0].get_xticklabels()]
            assert ticks == ["rr-1k-10", "idle-10k"], ticks
            assert sorted(_gap_labels(drawn[name])) == ["failed", "not run"]
            assert not any(gid.endswith("|c100k-100k") for gid in _bars(drawn[name]))
        assert "not run" in _gap_labels(drawn["iomodel"])
        # The legend sits below the panels, not over the bars of one of them.
        assert drawn["iomodel"].legends and not any(ax.get_legend() for ax in drawn["iomodel"].axes)
        # 0.0 KiB per connection is drawn and labelled on the RSS panel.
        rss = drawn["iomodel"].axes[3]
        assert rss.get_yscale() == "symlog"
        assert _bars(drawn["iomodel"])["epoll|rr-1k-10"] in rss.patches
        assert "0.0" in [t.get_text() for t in rss.texts]
    finally:
        import matplotlib.pyplot as plt

        plt.close("all")


def test_charts_mark_generator_bound_and_faulty_bars() -> None:
    data = _killed(results(), "threads", "rr-1k-10")
    drawn = charts.figures(data)
    try:
        bars = _bars(drawn["throughput"])
        assert bars["epoll|rr-1k-10"].get_hatch() == charts.BOUND_HATCH  # bound by the ceiling
        assert bars["poll|rr-1k-10"].get_hatch() is None
        assert bars["poll|rr-1k-10"].get_alpha() is None
        for faulty in ("select|idle-10k", "threads|rr-1k-10"):  # refused conns; killed
            assert bars[faulty].get_hatch() == charts.FAULTY_HATCH
            assert bars[faulty].get_alpha() == charts.FAULTY_ALPHA
        legend = _legend_texts(drawn["throughput"])
        assert any("generator-bound" in t for t in legend) and any("faulty" in t for t in legend)
        # CPU per message is the server's own even when the generator is saturated.
        cpu = _bars(drawn["cpu"])
        assert cpu["epoll|rr-1k-10"].get_hatch() is None
        assert cpu["select|idle-10k"].get_alpha() == charts.FAULTY_ALPHA
        latency = _bars(drawn["latency"])
        assert latency["epoll|p99"].get_hatch() == charts.BOUND_HATCH
        assert latency["threads|p99"].get_alpha() == charts.FAULTY_ALPHA
        iomodel = _bars(drawn["iomodel"])
        assert iomodel["select|idle-10k"].get_alpha() == charts.FAULTY_ALPHA
        assert any("faulty" in t for t in _legend_texts(drawn["iomodel"]))
    finally:
        import matplotlib.pyplot as plt

        plt.close("all")


def test_charts_of_a_clean_run_carry_no_marks() -> None:
    data = results()
    for run in data["runs"]:
        run["figures"] = {**run["figures"], "errors": {}}
    data["runs"] = [r for r in data["runs"] if r.get("generator") != "c-client"]
    data["cells"] = [{**c, "c_client": False} for c in data["cells"]]
    drawn = charts.figures(data)
    try:
        for fig in drawn.values():
            assert all(b.get_hatch() is None for b in _bars(fig).values())
            assert not any("faulty" in t or "bound" in t for t in _legend_texts(fig))
    finally:
        import matplotlib.pyplot as plt

        plt.close("all")


def test_a_run_without_the_c_reference_has_no_ceiling(tmp_path: Path) -> None:
    """`python -m bench --no-reference`: the C client's rows stay, the ceiling goes."""
    data = results()
    data["servers"] = [s for s in data["servers"] if s != "c-epoll"]
    data["runs"] = [r for r in data["runs"] if r["server"] != "c-epoll"]
    data["reference"] = None
    res = query.Results(data)
    assert res.ceiling("rr-1k-10") is None and res.ceiling_ratio("rr-1k-10") is None
    assert res.of_c_client("epoll", "rr-1k-10") == 50_000 / 92_000
    report.write(data, tmp_path, "bare")
    text = (tmp_path / "bare.md").read_text()
    assert "## Generator ceiling" not in text and "## Summary" in text
    assert _row(tables.summary_table(res), "epoll").startswith("| epoll | 50,000 | 400 |")


def test_c100k_ladder_shows_growth_and_says_not_run_instead_of_a_figure() -> None:
    data = results()
    ladder = [("c100k-1k", 1_000), ("c100k-10k", 10_000), ("c100k-100k", 100_000)]
    data["cells"] += [
        {"name": n, "label": f"{c} conns", "args": ["--active", "100"], "connections": c,
         "role": "c100k"}
        for n, c in ladder
    ]  # fmt: skip
    for server in data["servers"]:
        for name, count in ladder:
            record: dict[str, Any] = {"server": server, "cell": name, "round": 1}
            if name == "c100k-100k" or (server == "select" and count > 1000):
                record["error"] = "not run: the hard limit"
            else:
                record["figures"] = figures(50_000, 1_000 * count // 1000, count / 1000, 500)
            data["runs"].append(record)
    res = query.Results(data)
    rows = {line.split(" | ")[0].strip("| *"): line for line in tables.ladder_table(res)}
    epoll = [c.strip() for c in rows["epoll"].strip("|").split("|")]
    # CPU/req at 1k, 10k, 100k; then p99 at each; then RSS/conn at each.
    assert epoll[1:4] == ["1.00", "10.00", "not run"]
    assert epoll[4:7] == ["1,000", "10,000", "not run"]
    select = [c.strip() for c in rows["select"].strip("|").split("|")]
    assert select[1:4] == ["1.00", "not run", "not run"]
    assert any(s.key == "c100k" for s in report.sections(res))


def test_a_cell_not_run_is_said_once_is_no_fault_and_draws_no_empty_group() -> None:
    data = results()
    data["cells"].append(
        {"name": "c100k-100k", "label": "100,000 conns", "args": ["--active", "100"],
         "connections": 100_000, "role": "c100k"}
    )  # fmt: skip
    for server in data["servers"]:
        for round_index in (1, 2, 3):
            data["runs"].append(
                {"server": server, "cell": "c100k-100k", "round": round_index,
                 "error": "not run: the hard limit"}
            )  # fmt: skip
    res = query.Results(data)
    said = [p for p in res.problems() if "not run" in p]
    assert len(said) == 1 and "in c100k-100k" in said[0]
    assert all(s in said[0].split(" in ")[0] for s in data["servers"])
    assert not any(res.faults(s, "c100k-100k") for s in data["servers"])
    drawn = charts.figures(data)
    groups = [t.get_text() for t in drawn["throughput"].axes[0].get_xticklabels()]
    assert "c100k-100k" not in groups


def test_echod_bench_against_the_c_client_is_paired_by_round() -> None:
    """The machine drifts between rounds; each round's pair drifts together, so the
    ratio is the median of the rounds' ratios, not the ratio of two medians."""
    data = results()
    drift = {1: 1.0, 2: 2.0, 3: 0.5}
    for r in data["runs"]:
        if r["server"] == "poll" and r["cell"] == "rr-1k-10":
            base = 48_000 if r.get("generator") != "c-client" else 60_000
            # echod-bench's third round ran in a quiet moment its pair did not share.
            lucky = 3.0 if r["round"] == 3 and base == 48_000 else 1.0
            r["figures"] = {**r["figures"], "requests_per_s": base * drift[r["round"]] * lucky}
    res = query.Results(data)
    assert res.of_c_client("poll", "rr-1k-10") == 0.8  # rounds 1 and 2 say 0.8, round 3 2.4
    # A round with no partner does not count.
    data["runs"] = [
        r
        for r in data["runs"]
        if not (r["server"] == "poll" and r.get("generator") == "c-client" and r["round"] != 3)
    ]
    assert query.Results(data).of_c_client("poll", "rr-1k-10") == 48_000 * 0.5 * 3.0 / (
        60_000 * 0.5
    )


def test_where_the_ceiling_was_measured_it_decides_not_the_workers_cpu() -> None:
    data = results()
    for r in data["runs"]:
        if r["server"] == "poll" and r.get("generator") != "c-client":
            r["figures"] = {**r["figures"], "workers": [{"cpu_pct": 95.0, "saturated": True}]}
    res = query.Results(data)
    # poll's worker was saturated, but poll reached 0.87 of the ceiling measured beside it.
    assert res.saturated("poll", "rr-1k-10") and not res.generator_bound("poll", "rr-1k-10")
    # With no ceiling in the cell, the saturated worker is the only evidence.
    assert res.saturated("poll", "idle-10k") and res.generator_bound("poll", "idle-10k")
    # The C client's own rows have no ceiling of theirs: saturation decides.
    assert not res.generator_bound("poll", "rr-1k-10", query.C_CLIENT)
