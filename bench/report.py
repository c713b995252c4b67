"""The bench report: medians over rounds with their spread, a markdown table, charts.

Everything is rendered from the results JSON alone, so a report can be redrawn
(or published to ``docs/bench/`` and the README) from any past run.  Even the
README's prose about IO models is generated here from the figures, so that no
number in it can outlive the run it came from.
"""

from __future__ import annotations

import json
import re
import statistics
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs" / "bench"
README = ROOT / "README.md"
# Where the README sits relative to the published report, for its links.
README_LINKS = "docs/bench/"

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
_cpu_pct = _server("cpu_mean_pct")
_rss = _server("rss_peak_bytes")
_rss_per_conn = _server("rss_per_connection_bytes")


def _mib(value: float | None) -> str:
    return f"{value / 1048576:.1f} MiB" if value else "-"


def _kib(value: float | None) -> str:
    return "-" if value is None else f"{value / 1024:.1f} KiB"


def _row(cells: Iterable[str]) -> str:
    return "| " + " | ".join(cells) + " |"


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    return [_row(header), "|" + "---|" * len(header), *(_row(r) for r in rows)]


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
        self.all_cells: list[dict[str, Any]] = data["cells"]
        # The workers cell runs other servers, unpinned: it gets its own section.
        self.cells = [c for c in self.all_cells if not c.get("workers")]
        self.workers_cell = next((c for c in self.all_cells if c.get("workers")), None)
        self.reference: str | None = data.get("reference")
        # The "Which IO model?" pair: the same load over few and over many connections.
        self.few = next((c for c in self.cells if c.get("role") == "few"), None)
        self.many = next((c for c in self.cells if c.get("role") == "many"), None)

    def runs(self, server: str, cell: str) -> list[dict[str, Any]]:
        """The rounds that count: those no other load overlapped, when they are at least
        half; otherwise all of them, as a median over mostly disturbed rounds is no better
        than the one undisturbed round it would otherwise rest on."""
        found = [r for r in self.data["runs"] if r["server"] == server and r["cell"] == cell]
        clean = [r for r in found if not r.get("contended")]
        return clean if clean and 2 * len(clean) >= len(found) else found

    def contended(self, server: str, cell: str) -> bool:
        """Whether the figures shown rest on rounds that overlapped other load."""
        return any(r.get("contended") for r in self.runs(server, cell))

    def figures(self, server: str, cell: str) -> list[dict[str, Any]]:
        return [r["figures"] for r in self.runs(server, cell) if "figures" in r]

    def spread(self, server: str, cell: str, metric: Metric) -> Spread:
        values = [v for v in (metric(f) for f in self.figures(server, cell)) if v is not None]
        return Spread([float(v) for v in values])

    def median(self, server: str, cell: str, metric: Metric) -> float | None:
        return self.spread(server, cell, metric).median

    def ratio(self, server: str, cell: str, metric: Metric) -> str:
        if self.reference is None or server == self.reference:
            return "-"
        mine = self.median(server, cell, metric)
        ref = self.median(self.reference, cell, metric)
        return f"{mine / ref:.2f}" if mine and ref else "-"

    def generator_bound(self, server: str, cell: str) -> bool:
        """Whether a generator worker was saturated in any round of this cell."""
        return any(w["saturated"] for f in self.figures(server, cell) for w in f["workers"])

    def faults(self, server: str, cell: str) -> dict[str, int]:
        """Transport errors summed over rounds; a round that failed outright counts too."""
        total: dict[str, int] = {}
        for r in self.runs(server, cell):
            errors = r["figures"]["errors"] if "figures" in r else {"failed": 1}
            for kind, count in errors.items():
                total[kind] = total.get(kind, 0) + count
        return total

    def marks(self, server: str, cell: str) -> str:
        return (
            (" †" if self.generator_bound(server, cell) else "")
            + (" ✗" if self.faults(server, cell) else "")
            + (" ‡" if self.contended(server, cell) else "")
        )

    def contention_note(self) -> str | None:
        runs = self.data["runs"]
        hit = [r for r in runs if r.get("contended")]
        if not hit:
            return None
        what = sorted({c for r in hit for c in r["contended"]})
        return (
            f"{len(hit)} of {len(runs)} runs overlapped other load on this machine "
            f"({'; '.join(what[:4])}{' …' if len(what) > 4 else ''}). Where at least half of "
            "a cell's rounds were undisturbed, its figures use only those; ‡ marks figures "
            "that include disturbed rounds: throughput and latency there are understated, "
            "CPU per message and RSS much less affected."
        )

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


LEGEND = (
    "† a generator worker used over 90% of its CPU in at least one round: that throughput "
    "is the generator's ceiling, not the server's; compare servers there by CPU µs/msg. "
    "✗ the generator saw transport errors (or the run failed) in at least one round: see Notes. "
    "‡ the figure includes rounds that overlapped other load on the machine (see Notes)."
)


# The summary: one row per server ---------------------------------------------------------
def summary_table(res: Results) -> list[str]:
    first = res.cells[0]
    big = next((c for c in res.cells if c["connections"] >= 1000), None)
    header = [
        "backend",
        f"req/s ({first['label']})",
        "p99 µs",
        "server CPU µs/msg",
        "req/s vs C",
        "CPU/msg vs C",
        "RSS peak",
    ]
    if big:
        header.append(f"RSS/conn at {big['connections']:,}")
    rows = []
    for server in res.servers:
        name = first["name"]
        row = [
            f"**{server}**" if server == res.reference else server,
            res.spread(server, name, _rate).show(spread=False) + res.marks(server, name),
            res.spread(server, name, _p99).show(spread=False),
            res.spread(server, name, _cpu).show("{:.2f}", spread=False),
            res.ratio(server, name, _rate),
            res.ratio(server, name, _cpu),
            _mib(res.median(server, name, _rss)),
        ]
        if big:
            faulty = " ✗" if res.faults(server, big["name"]) else ""
            row.append(_kib(res.median(server, big["name"], _rss_per_conn)) + faulty)
        rows.append(row)
    return _table(header, rows)


# Issue 6: which IO model? ----------------------------------------------------------------
def has_iomodel(res: Results) -> bool:
    return res.few is not None and res.many is not None


def _count(connections: int) -> str:
    return f"{connections // 1000}k" if connections >= 1000 else str(connections)


def iomodel_caption(res: Results) -> str:
    assert res.few is not None and res.many is not None
    return f"{res.few['label']} against {res.many['label']}"


def iomodel_pair(res: Results) -> tuple[str, str, int, int]:
    """Names and connection counts of the few- and many-connection cells."""
    assert res.few is not None and res.many is not None
    return res.few["name"], res.many["name"], res.few["connections"], res.many["connections"]


def iomodel_table(res: Results) -> list[str]:
    few, many, n_few, n_many = iomodel_pair(res)
    pair = (few, many)
    a, b = _count(n_few), _count(n_many)
    header = [
        "backend",
        f"req/s, {a} conns",
        f"req/s, {b} conns",
        f"p99 µs, {a}",
        f"p99 µs, {b}",
        f"CPU µs/req, {a}",
        f"CPU µs/req, {b}",
        f"RSS/conn, {a}",
        f"RSS/conn, {b}",
    ]
    rows = []
    for server in res.servers:
        row = [f"**{server}**" if server == res.reference else server]
        row += [
            res.spread(server, c, _rate).show(spread=False) + res.marks(server, c) for c in pair
        ]
        row += [res.spread(server, c, _p99).show(spread=False) for c in pair]
        row += [res.spread(server, c, _cpu).show("{:.2f}", spread=False) for c in pair]
        row += [
            _kib(res.median(server, few, _rss_per_conn)),
            _kib(res.median(server, many, _rss_per_conn)),
        ]
        rows.append(row)
    return _table(header, rows)


def _fmt_rate(value: float) -> str:
    return f"{value:,.0f} req/s"


def _fmt_cpu(value: float) -> str:
    return f"{value:.2f} µs"


def _fmt_us(value: float) -> str:
    return f"{value:,.0f} µs"


def iomodel_findings(res: Results) -> list[str]:
    """Conclusions computed from the figures: each sentence names the numbers it rests on."""
    few, many, n_few, n_many = iomodel_pair(res)
    ours = [s for s in res.servers if s != res.reference]
    ref = res.reference

    def value(server: str, cell: str, metric: Metric) -> float:
        return res.median(server, cell, metric) or 0.0

    def clean(cell: str) -> list[str]:
        """Servers with figures and no transport error in any round of ``cell``."""
        return [s for s in ours if not res.faults(s, cell) and res.median(s, cell, _cpu)]

    def span(servers: list[str], cell: str, metric: Metric, fmt: Callable[[float], str]) -> str:
        order = sorted(servers, key=lambda s: value(s, cell, metric))
        low, high = order[0], order[-1]
        return (
            f"{fmt(value(low, cell, metric))} ({low}) to {fmt(value(high, cell, metric))} ({high})"
        )

    findings = []
    served = clean(few)
    if served:
        rates = sorted(served, key=lambda s: value(s, few, _rate))
        text = (
            f"**{n_few:,} connections.** {rates[-1]} served the most "
            f"({_fmt_rate(value(rates[-1], few, _rate))}) and {rates[0]} the least "
            f"({_fmt_rate(value(rates[0], few, _rate))}); CPU per request ran from "
            + span(served, few, _cpu, _fmt_cpu)
        )
        if ref and res.median(ref, few, _cpu):
            text += f", against {_fmt_cpu(value(ref, few, _cpu))} for the C reference"
        text += "; p99 from " + span(served, few, _p99, _fmt_us) + "."
        bound = [s for s in res.servers if res.generator_bound(s, few)]
        if bound:
            text += (
                f" The generator was saturated (†) for {len(bound)} of {len(res.servers)} "
                "servers there, so CPU per request ranks them more fairly than req/s."
            )
        findings.append(text)

    for server in (s for s in ours if res.faults(s, many)):
        faults = ", ".join(f"{n:,} {k}" for k, n in sorted(res.faults(server, many).items()))
        why = (
            " — select(2) cannot watch descriptors ≥ 1024 (FD_SETSIZE), so echod turns "
            "those connections away"
            if server == "select"
            else ""
        )
        findings.append(
            f"**{server} did not hold {n_many:,} connections cleanly**: the generator saw "
            f"{faults} over the rounds{why}; its {_count(n_many)} figures measure only the "
            "connections it kept."
        )

    held = [s for s in clean(many) if s in served]
    if held:
        growth = {s: value(s, many, _cpu) / value(s, few, _cpu) for s in held}
        order = sorted(held, key=growth.__getitem__)
        worst = order[-1]
        text = (
            f"**{n_many:,} connections, {active(res.many)} of them busy.** CPU per request "
            f"grew most for {worst}, {growth[worst]:.2f}x ({_fmt_cpu(value(worst, few, _cpu))} "
            f"→ {_fmt_cpu(value(worst, many, _cpu))})"
        )
        if worst in ("poll", "select"):
            text += f": {worst}(2) hands the kernel every descriptor on every wait"
        steady = [s for s in order if growth[s] <= 1.25]
        if steady:
            text += (
                f"; for {', '.join(steady)} it changed by at most "
                f"{max(growth[s] for s in steady):.2f}x"
            )
        text += ". p99 ranged from " + span(held, many, _p99, _fmt_us) + "."
        findings.append(text)

    memory = [s for s in clean(many) if res.median(s, many, _rss_per_conn) is not None]
    if len(memory) >= 2:
        order = sorted(memory, key=lambda s: value(s, many, _rss_per_conn))
        low, high = order[0], order[-1]
        low_kib = value(low, many, _rss_per_conn) / 1024
        high_kib = value(high, many, _rss_per_conn) / 1024
        text = (
            f"**Memory.** At {n_many:,} connections each one cost {high} {high_kib:.1f} KiB "
            f"of RSS and {low} {low_kib:.1f} KiB"
        )
        if low_kib >= 0.1:
            text += f" ({high_kib / low_kib:.0f}x)"
        if ref and res.median(ref, many, _rss_per_conn) is not None:
            text += (
                f"; the C reference, which keeps a buffer per connection, "
                f"{value(ref, many, _rss_per_conn) / 1024:.1f} KiB"
            )
        findings.append(text + ".")

    if served and held:
        best_few = min(served, key=lambda s: value(s, few, _cpu))
        best_many = min(held, key=lambda s: value(s, many, _cpu))
        if best_few == best_many:
            where = (
                f"{best_few} at both ({_fmt_cpu(value(best_few, few, _cpu))} and "
                f"{_fmt_cpu(value(best_few, many, _cpu))})"
            )
        else:
            where = (
                f"{best_few} at {n_few:,} connections ({_fmt_cpu(value(best_few, few, _cpu))}) "
                f"and {best_many} at {n_many:,} ({_fmt_cpu(value(best_many, many, _cpu))})"
            )
        findings.append(f"**So:** the cheapest echod backend per request was {where}.")
    return findings


def active(cell: dict[str, Any] | None) -> int:
    """How many of a cell's connections send (``--active``, else all of them)."""
    if cell is None:
        return 0
    args = list(cell["args"])
    if "--active" in args:
        return int(args[args.index("--active") + 1])
    return int(cell["connections"])


# Issue 4: one worker against two --------------------------------------------------------
def workers_servers(res: Results) -> list[tuple[str, str, int]]:
    """(server name, backend, workers) in the order they were measured."""
    cell = res.workers_cell
    if cell is None:
        return []
    seen: dict[str, tuple[str, str, int]] = {}
    for r in res.data["runs"]:
        if r["cell"] == cell["name"]:
            seen.setdefault(r["server"], (r["server"], r["backend"], int(r["workers"])))
    return sorted(seen.values(), key=lambda s: (cell["backends"].index(s[1]), s[2]))


def workers_table(res: Results) -> list[str]:
    cell = res.workers_cell
    if cell is None:
        return []
    name = cell["name"]
    header = [
        "backend",
        "workers",
        "req/s",
        "vs 1 worker",
        "p99 µs",
        "server CPU µs/msg (all processes)",
        "server CPU %",
    ]
    rows = []
    for server, backend, count in workers_servers(res):
        one = res.median(f"{backend} x1", name, _rate)
        mine = res.median(server, name, _rate)
        rows.append(
            [
                backend,
                str(count),
                res.spread(server, name, _rate).show() + res.marks(server, name),
                f"{mine / one:.2f}" if mine and one else "-",
                res.spread(server, name, _p99).show(spread=False),
                res.spread(server, name, _cpu).show("{:.2f}"),
                res.spread(server, name, _cpu_pct).show("{:.0f}", spread=False),
            ]
        )
    return _table(header, rows)


def workers_findings(res: Results) -> list[str]:
    cell = res.workers_cell
    if cell is None:
        return []
    name = cell["name"]
    out = []
    for backend in cell["backends"]:
        one, two = f"{backend} x1", f"{backend} x2"
        r1, r2 = res.median(one, name, _rate), res.median(two, name, _rate)
        c1, c2 = res.median(one, name, _cpu), res.median(two, name, _cpu)
        if r1 and r2 and c1 and c2:
            out.append(
                f"{backend}: 2 workers {_fmt_rate(r2)} against 1 worker {_fmt_rate(r1)} "
                f"({r2 / r1:.2f}x), server CPU {_fmt_cpu(c2)} against {_fmt_cpu(c1)} per message."
            )
    return out


WORKERS_CAVEAT = (
    "Unpinned, and on this machine's 2 cores: the generator's two processes share the cores "
    "with the workers, so a second worker competes with the generator for the CPU it would "
    "need; a machine with spare cores for the generator is needed to show how far workers scale."
)


# The whole report ------------------------------------------------------------------------
def markdown(data: dict[str, Any], image_prefix: str) -> str:
    res = Results(data)
    timing = data["timing"]
    env = data["environment"]
    out = [
        f"# echod benchmark, {data['timestamp']}",
        "",
        f"{len(res.servers)} servers, {len(res.all_cells)} cells, {timing['rounds']} round(s) of "
        f"{timing['duration_s']:g} s after {timing['warmup_s']:g} s warmup, in {data['elapsed_s']:.0f} s. "
        f"echod {env.get('source', 'unknown')}; "
        f"{env['cpus']} CPUs, Python {env['python']}, Linux {env['kernel']}; {env['pinning']}"
        + (" (except the workers cell: unpinned)" if res.workers_cell else "")
        + ". Load from `echod-bench` over loopback; every echoed byte checked. "
        "Figures are medians over rounds, (min..max) when there is more than one. "
        "Server CPU is user+system time of the server's whole process tree (psutil) "
        "over the measured window, divided by the messages echoed in it. RSS per connection "
        "is the rise of the tree's RSS from before the generator connected to its peak, "
        "divided by the connections held.",
        "",
        "## Summary",
        "",
        *summary_table(res),
        "",
        f"![throughput]({image_prefix}throughput.png)",
        "",
        f"![latency]({image_prefix}latency.png)",
        "",
        f"![server CPU per message]({image_prefix}cpu.png)",
        "",
    ]
    if has_iomodel(res):
        out += [
            "## Which IO model?",
            "",
            iomodel_caption(res) + ".",
            "",
            *iomodel_table(res),
            "",
            f"![{iomodel_caption(res)}]({image_prefix}iomodel.png)",
            "",
            *[f"- {line}" for line in iomodel_findings(res)],
            "",
        ]
    if res.workers_cell:
        out += [
            f"## One worker against two ({res.workers_cell['label']})",
            "",
            f"`{' '.join(res.workers_cell['args'])}`, echod `--workers 1` and `--workers 2` in its "
            "default listen mode. " + WORKERS_CAVEAT,
            "",
            *workers_table(res),
            "",
            *[f"- {line}" for line in workers_findings(res)],
            "",
        ]
    for cell in res.cells:
        name = cell["name"]
        rate_name = "conn/s" if "--churn" in cell["args"] else "req/s"
        rows = []
        for server in res.servers:
            rows.append(
                [
                    server,
                    res.spread(server, name, _rate).show() + res.marks(server, name),
                    res.ratio(server, name, _rate),
                    res.spread(server, name, _latency("p50")).show(spread=False),
                    res.spread(server, name, _p99).show(),
                    res.spread(server, name, _latency("p99.9")).show(spread=False),
                    res.spread(server, name, _cpu).show("{:.2f}"),
                    res.ratio(server, name, _cpu),
                    res.spread(server, name, _cpu_pct).show("{:.0f}", spread=False),
                    _mib(res.median(server, name, _rss)),
                    _kib(res.median(server, name, _rss_per_conn)),
                ]
            )
        out += [
            f"## {cell['label']} (`{' '.join(cell['args'])}`)",
            "",
            *_table(
                [
                    "backend",
                    rate_name,
                    "vs C",
                    "p50 µs",
                    "p99 µs",
                    "p99.9 µs",
                    "server CPU µs/msg",
                    "vs C",
                    "server CPU %",
                    "RSS peak",
                    "RSS/conn",
                ],
                rows,
            ),
            "",
        ]
    out += [LEGEND, ""]
    problems = [p for p in res.problems() if "of a CPU: the figures measure" not in p]
    notes = list(data.get("notes", []))
    contention = res.contention_note()
    if contention:
        notes.append(contention)
    if notes or problems:
        out += ["## Notes", ""]
        out += [f"- {n}" for n in notes]
        out += [f"- {p}" for p in problems[:60]]
        if len(problems) > 60:
            out.append(f"- … and {len(problems) - 60} more in the JSON")
        out.append("")
    return "\n".join(out)


# Charts ----------------------------------------------------------------------------------
def charts(data: dict[str, Any], directory: Path, prefix: str) -> list[Path]:
    """Throughput per backend and cell, latency percentiles, server CPU per message,
    and the IO-model comparison."""
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

    grouped("throughput", cells, lambda s, c: res.median(s, c, _rate), "messages/s (connections/s for churn)",
            "Throughput per backend and workload (median)")  # fmt: skip
    first = cells[0]
    percentiles = ["p50", "p90", "p99", "p99.9", "max"]
    grouped(
        "latency",
        percentiles,
        lambda s, p: res.median(s, first, _latency(p)),
        "µs",
        f"Latency percentiles, {res.cells[0]['label']} (median over rounds)",
    )
    grouped("cpu", cells, lambda s, c: res.median(s, c, _cpu), "server CPU µs per message",
            "Server CPU time per echoed message (lower is better)")  # fmt: skip

    if has_iomodel(res):
        few, many, n_few, n_many = iomodel_pair(res)
        panels: list[tuple[str, Metric, float, bool]] = [
            ("throughput, req/s", _rate, 1.0, False),
            ("p99 latency, µs (log)", _p99, 1.0, True),
            ("server CPU µs per request", _cpu, 1.0, False),
            ("RSS per connection, KiB (log)", _rss_per_conn, 1 / 1024, True),
        ]
        fig, axes = plt.subplots(2, 2, figsize=(12, 7.5))
        xs = range(len(res.servers))
        for ax, (title, metric, scale, log) in zip(axes.flat, panels, strict=True):
            for offset, cell, label in (
                (-0.2, few, f"{_count(n_few)} conns"),
                (0.2, many, f"{_count(n_many)} conns"),
            ):
                values = []
                for server in res.servers:
                    v = res.median(server, cell, metric)
                    values.append(v * scale if v is not None and v > 0 else float("nan"))
                ax.bar([x + offset for x in xs], values, 0.4, label=label)
            ax.set_xticks(list(xs), res.servers, rotation=30, fontsize="small")
            ax.set_title(title)
            if log:
                ax.set_yscale("log")
            ax.grid(axis="y", alpha=0.3)
        axes.flat[0].legend(fontsize="small")
        fig.suptitle(f"Which IO model? {iomodel_caption(res)} (medians over rounds)")
        fig.tight_layout()
        path = directory / f"{prefix}iomodel.png"
        fig.savefig(path, dpi=100)
        plt.close(fig)
        written.append(path)
    return written


def write(data: dict[str, Any], directory: Path, stem: str) -> list[Path]:
    paths = charts(data, directory, f"{stem}-")
    md = directory / f"{stem}.md"
    md.write_text(markdown(data, f"{stem}-"))
    return [md, *paths]


# Publishing ------------------------------------------------------------------------------
def readme_sections(data: dict[str, Any], links: str = README_LINKS) -> dict[str, str]:
    """The README's bench and iomodel sections, rendered from one run."""
    res = Results(data)
    timing = data["timing"]
    bench = [
        "## Benchmark",
        "",
        f"Latest `make bench` ({data['timestamp']}, echod "
        f"{data['environment'].get('source', 'unknown')}): {len(res.servers)} servers, "
        f"{timing['rounds']} round(s) of {timing['duration_s']:g} s after "
        f"{timing['warmup_s']:g} s warmup, {data['elapsed_s'] / 60:.0f} min in all; medians; "
        f"{data['environment']['pinning']}. "
        f"Full report with every cell, spreads and charts: [{links}latest.md]({links}latest.md). "
        "This section is rewritten by `python -m bench --publish`.",
        "",
        *summary_table(res),
        "",
        LEGEND,
        "",
    ]
    contention = res.contention_note()
    if contention:
        bench += [contention, ""]
    if res.workers_cell:
        bench += [
            f"**One worker against two** ({res.workers_cell['label']}). " + WORKERS_CAVEAT,
            "",
            *workers_table(res),
            "",
            *[f"- {line}" for line in workers_findings(res)],
            "",
        ]
    sections = {"bench": "\n".join(bench)}
    if has_iomodel(res):
        sections["iomodel"] = "\n".join(
            [
                "## Which IO model?",
                "",
                f"Every backend, {iomodel_caption(res)}, from the run above "
                f"({data['timestamp']}); medians over {timing['rounds']} round(s). The "
                "sentences below are generated from the same figures by "
                "`python -m bench --publish`.",
                "",
                *iomodel_table(res),
                "",
                LEGEND,
                "",
                f"![{iomodel_caption(res)}]({links}iomodel.png)",
                "",
                *[f"- {line}" for line in iomodel_findings(res)],
                "",
                *([contention, ""] if contention else []),
            ]
        )
    return sections


def update_readme(sections: dict[str, str], readme: Path = README) -> bool:
    """Replace each ``<!-- NAME:start -->``..``<!-- NAME:end -->`` block; add missing
    blocks before "## Dependencies". Nothing else in the README is touched."""
    if not readme.exists():
        return False
    text = readme.read_text()
    for name, body in sections.items():
        block = f"<!-- {name}:start -->\n{body.rstrip()}\n<!-- {name}:end -->"
        pattern = re.compile(rf"<!-- {name}:start -->.*?<!-- {name}:end -->", re.DOTALL)
        found = pattern.search(text)
        if found:
            text = text[: found.start()] + block + text[found.end() :]
        elif "\n## Dependencies" in text:
            text = text.replace("\n## Dependencies", f"\n{block}\n\n## Dependencies", 1)
        else:
            text = text.rstrip() + f"\n\n{block}\n"
    readme.write_text(text)
    return True


def publish(data: dict[str, Any], directory: Path = DOCS, readme: Path = README) -> list[Path]:
    """Render the report and charts into the tracked ``docs/bench/`` and the README."""
    directory.mkdir(parents=True, exist_ok=True)
    paths = charts(data, directory, "")
    md = directory / "latest.md"
    md.write_text(markdown(data, ""))
    (directory / "latest.json").write_text(json.dumps(data, indent=1) + "\n")
    written = [md, directory / "latest.json", *paths]
    if data.get("quick"):
        print("bench: a quick run: README left alone")
    elif update_readme(readme_sections(data), readme):
        written.append(readme)
    for path in written:
        print(f"bench: published {path}")
    return written


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
