"""The bench report: medians over rounds with their spread, a markdown table, charts.

Everything is rendered from the results JSON alone, so a report can be redrawn
(or published to ``docs/bench/``) from any past run.
"""

from __future__ import annotations

import json
import statistics
from collections.abc import Callable
from pathlib import Path
from typing import Any

DOCS = Path(__file__).resolve().parent.parent / "docs" / "bench"
CHARTS = ("throughput", "latency", "cpu")

Metric = Callable[[dict[str, Any]], float | None]


def _number(value: Any) -> float | None:
    return None if value is None else float(value)


def _rate(f: dict[str, Any]) -> float | None:
    return _number(f["requests_per_s"])


def _latency(percentile: str) -> Metric:
    return lambda f: _number(f["latency_us"].get(percentile))


def _server(key: str) -> Metric:
    return lambda f: _number((f.get("server") or {}).get(key))


_p99 = _latency("p99")
_cpu = _server("cpu_us_per_msg")
_rss = _server("rss_peak_bytes")
_rss_per_conn = _server("rss_per_connection_bytes")


def _mib(value: float | None) -> str:
    return f"{value / 1048576:.1f} MiB" if value else "-"


class Spread:
    """Median, min and max of one figure over the rounds."""

    def __init__(self, values: list[float]) -> None:
        self.values = values
        self.median = statistics.median(values) if values else None
        self.low = min(values) if values else None
        self.high = max(values) if values else None

    def show(self, fmt: str = "{:,.0f}", spread: bool = True) -> str:
        if self.median is None:
            return "-"
        text = fmt.format(self.median)
        if spread and len(self.values) > 1:
            text += f" ({fmt.format(self.low)}..{fmt.format(self.high)})"
        return text


class Results:
    def __init__(self, data: dict[str, Any]) -> None:
        self.data = data
        self.servers: list[str] = data["servers"]
        self.cells: list[dict[str, Any]] = data["cells"]
        self.reference: str | None = data.get("reference")

    def figures(self, server: str, cell: str) -> list[dict[str, Any]]:
        return [
            r["figures"]
            for r in self.data["runs"]
            if r["server"] == server and r["cell"] == cell and "figures" in r
        ]

    def spread(self, server: str, cell: str, metric: Metric) -> Spread:
        values = [v for v in (metric(f) for f in self.figures(server, cell)) if v is not None]
        return Spread([float(v) for v in values])

    def ratio(self, server: str, cell: str, metric: Metric) -> str:
        if self.reference is None or server == self.reference:
            return "-"
        mine = self.spread(server, cell, metric).median
        ref = self.spread(self.reference, cell, metric).median
        return f"{mine / ref:.2f}" if mine and ref else "-"

    def generator_bound(self, server: str, cell: str) -> bool:
        """Whether a generator worker was saturated in any round of this cell."""
        return any(w["saturated"] for f in self.figures(server, cell) for w in f["workers"])

    def problems(self) -> list[str]:
        lines = []
        for r in self.data["runs"]:
            where = f"round {r.get('round')}, {r['server']}, {r['cell']}"
            if "error" in r:
                lines.append(f"{where}: {r['error']}")
            figures = r.get("figures")
            if figures:
                if figures["errors"]:
                    lines.append(f"{where}: errors {figures['errors']}")
                lines.extend(f"{where}: {w}" for w in figures["warnings"])
        return lines


def markdown(data: dict[str, Any], image_prefix: str) -> str:
    res = Results(data)
    cell_names = [c["name"] for c in res.cells]
    first = cell_names[0]
    big = next((c for c in res.cells if c["connections"] >= 1000), None)
    timing = data["timing"]
    env = data["environment"]
    out = [
        f"# echod benchmark, {data['timestamp']}",
        "",
        f"{len(res.servers)} servers, {len(res.cells)} cells, {timing['rounds']} round(s) of "
        f"{timing['duration_s']:g} s after {timing['warmup_s']:g} s warmup, in {data['elapsed_s']:.0f} s. "
        f"{env['cpus']} CPUs, Python {env['python']}, Linux {env['kernel']}; {env['pinning']}. "
        "Load from `echod-bench` over loopback; every echoed byte checked. "
        "Figures are medians over rounds, (min..max) when there is more than one. "
        "Server CPU is user+system time of the server's whole process tree (psutil) "
        "over the measured window, divided by the messages echoed in it.",
        "",
        "## Summary",
        "",
    ]
    first_label = res.cells[0]["label"]
    header = [
        "backend",
        f"req/s ({first_label})",
        "p99 µs",
        "server CPU µs/msg",
        "req/s vs C",
        "CPU/msg vs C",
        "RSS peak",
    ]
    if big:
        header.append(f"RSS/conn at {big['connections']:,}")
    out.append("| " + " | ".join(header) + " |")
    out.append("|" + "---|" * len(header))
    for server in res.servers:
        row = [
            f"**{server}**" if server == res.reference else server,
            res.spread(server, first, _rate).show(spread=False),
            res.spread(server, first, _p99).show(spread=False),
            res.spread(server, first, _cpu).show("{:.2f}", spread=False),
            res.ratio(server, first, _rate),
            res.ratio(server, first, _cpu),
            _mib(res.spread(server, first, _rss).median),
        ]
        if big:
            per = res.spread(server, big["name"], _rss_per_conn)
            row.append(f"{per.median / 1024:.1f} KiB" if per.median is not None else "-")
        out.append("| " + " | ".join(row) + " |")
    out += ["", f"![throughput]({image_prefix}throughput.png)", "", f"![latency]({image_prefix}latency.png)", "",
            f"![server CPU per message]({image_prefix}cpu.png)", ""]  # fmt: skip
    for cell in res.cells:
        name = cell["name"]
        rate_name = "conn/s" if "--churn" in cell["args"] else "req/s"
        out += [
            f"## {cell['label']} (`{' '.join(cell['args'])}`)",
            "",
            f"| backend | {rate_name} | vs C | p50 µs | p99 µs | p99.9 µs | server CPU µs/msg | vs C | server CPU % | RSS peak |",
            "|---|---|---|---|---|---|---|---|---|---|",
        ]
        for server in res.servers:
            cpu_pct = res.spread(server, name, _server("cpu_mean_pct"))
            rss = res.spread(server, name, _rss)
            out.append(
                "| "
                + " | ".join(
                    [
                        server,
                        res.spread(server, name, _rate).show()
                        + (" †" if res.generator_bound(server, name) else ""),
                        res.ratio(server, name, _rate),
                        res.spread(server, name, _latency("p50")).show(spread=False),
                        res.spread(server, name, _p99).show(),
                        res.spread(server, name, _latency("p99.9")).show(spread=False),
                        res.spread(server, name, _cpu).show("{:.2f}"),
                        res.ratio(server, name, _cpu),
                        cpu_pct.show("{:.0f}", spread=False),
                        _mib(rss.median),
                    ]
                )
                + " |"
            )
        out.append("")
    out += [
        "† a generator worker used over 90% of its CPU in at least one round: that throughput "
        "is the generator's ceiling, not the server's; compare servers there by CPU µs/msg.",
        "",
    ]
    problems = [p for p in res.problems() if "of a CPU: the figures measure" not in p]
    notes = list(data.get("notes", []))
    if notes or problems:
        out += ["## Notes", ""]
        out += [f"- {n}" for n in notes]
        out += [f"- {p}" for p in problems[:50]]
        if len(problems) > 50:
            out.append(f"- … and {len(problems) - 50} more in the JSON")
        out.append("")
    return "\n".join(out)


def charts(data: dict[str, Any], directory: Path, prefix: str) -> list[Path]:
    """Throughput per backend and cell, latency percentiles, server CPU per message."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    res = Results(data)
    written = []
    cells = [c["name"] for c in res.cells]
    width = 0.8 / max(1, len(res.servers))

    def grouped(
        name: str,
        groups: list[str],
        metric: Callable[[str, str], float | None],
        ylabel: str,
        title: str,
    ) -> None:
        fig, ax = plt.subplots(figsize=(max(7, 1.3 * len(groups) + 3), 4.5))
        for i, server in enumerate(res.servers):
            values = [metric(server, g) or 0.0 for g in groups]
            ax.bar([x + i * width for x in range(len(groups))], values, width, label=server)
        ax.set_xticks([x + width * (len(res.servers) - 1) / 2 for x in range(len(groups))], groups)
        ax.set_yscale("log")
        ax.set_ylabel(ylabel)
        ax.set_title(title)
        ax.legend(fontsize="small", ncol=2)
        ax.grid(axis="y", alpha=0.3)
        fig.tight_layout()
        path = directory / f"{prefix}{name}.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        written.append(path)

    grouped("throughput", cells, lambda s, c: res.spread(s, c, _rate).median, "messages/s (connections/s for churn)",
            "Throughput per backend and workload (median)")  # fmt: skip
    first = cells[0]
    percentiles = ["p50", "p90", "p99", "p99.9", "max"]
    grouped(
        "latency",
        percentiles,
        lambda s, p: res.spread(s, first, _latency(p)).median,
        "µs",
        f"Latency percentiles, {res.cells[0]['label']} (median over rounds)",
    )
    grouped("cpu", cells, lambda s, c: res.spread(s, c, _cpu).median, "server CPU µs per message",
            "Server CPU time per echoed message (lower is better)")  # fmt: skip
    return written


def write(data: dict[str, Any], directory: Path, stem: str) -> list[Path]:
    paths = charts(data, directory, f"{stem}-")
    md = directory / f"{stem}.md"
    md.write_text(markdown(data, f"{stem}-"))
    return [md, *paths]


def publish(data: dict[str, Any], directory: Path = DOCS) -> list[Path]:
    """Render the report and charts into the tracked ``docs/bench/`` for the README."""
    directory.mkdir(parents=True, exist_ok=True)
    paths = charts(data, directory, "")
    md = directory / "latest.md"
    md.write_text(markdown(data, ""))
    for path in [md, *paths]:
        print(f"bench: published {path}")
    return [md, *paths]


def publish_latest(results: Path) -> int:
    """Publish the newest full run (a quick run only when there is nothing else)."""
    found = sorted(results.glob("*.json"))
    full = [p for p in found if not p.stem.endswith("-quick")]
    chosen = (full or found)[-1:] if found else []
    if not chosen:
        print(f"bench: no results in {results} to publish")
        return 2
    publish(json.loads(chosen[0].read_text()))
    return 0
