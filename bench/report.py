"""The bench report: every section built once, rendered into the full report and the README.

Everything is rendered from the results JSON alone, so a report can be redrawn
(or published to ``docs/bench/`` and the README) from any past run. The query
model is in ``query``, tables in ``tables``, sentences in ``prose``, charts in
``charts`` and README splicing in ``readme``; this module assembles them, once.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench import prose, tables
from bench.charts import charts
from bench.query import Results
from bench.readme import README, update_readme

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs" / "bench"
# Where the README sits relative to the published report, for its links.
README_LINKS = "docs/bench/"


@dataclass(frozen=True)
class Section:
    """One part of the report: what it says, in the order it says it."""

    key: str
    title: str
    intro: str = ""
    table: list[str] = field(default_factory=list)
    charts: list[tuple[str, str]] = field(default_factory=list)  # (alt text, chart name)
    findings: list[str] = field(default_factory=list)

    def render(self, level: int, links: str, intro: str | None = None) -> list[str]:
        """As markdown under a heading of ``level`` (0: no heading)."""
        out = [f"{'#' * level} {self.title}", ""] if level else []
        text = self.intro if intro is None else intro
        out += [text, ""] if text else []
        out += [*self.table, ""] if self.table else []
        for alt, name in self.charts:
            out += [f"![{alt}]({links}{name}.png)", ""]
        out += [*(f"- {line}" for line in self.findings), ""] if self.findings else []
        return out


def sections(res: Results) -> list[Section]:
    """Every section a run supports, in report order."""
    out = []
    if res.cells:  # a run of only the workers cell has no summary
        out.append(
            Section(
                "summary",
                "Summary",
                table=tables.summary_table(res),
                charts=[
                    ("throughput", "throughput"),
                    ("latency", "latency"),
                    ("server CPU per message", "cpu"),
                ],
            )
        )
    if res.compared and res.reference:
        out.append(
            Section(
                "ceiling",
                "Generator ceiling",
                prose.CEILING_INTRO,
                [*tables.ceiling_table(res), "", *tables.c_client_table(res)],
                findings=prose.ceiling_findings(res),
            )
        )
    if prose.has_iomodel(res):
        caption = prose.iomodel_caption(res)
        out.append(
            Section(
                "iomodel",
                "Which IO model?",
                caption + ".",
                tables.iomodel_table(res),
                [(caption, "iomodel")],
                prose.iomodel_findings(res),
            )
        )
    if len(res.ladder) > 1:
        out.append(
            Section(
                "c100k",
                "Holding 1k to 100k connections",
                "The same 100 active connections (64 B rr) among ever more held open, "
                "opened from several loopback source addresses (`--source-address`). "
                '"not run" is a cell a server cannot hold on this machine; Notes say why.',
                tables.ladder_table(res),
            )
        )
    if res.workers_cell:
        cell = res.workers_cell
        out.append(
            Section(
                "workers",
                f"One worker against two ({cell['label']})",
                f"`{' '.join(cell['args'])}`, echod `--workers 1` and `--workers 2` in its "
                "default listen mode. " + prose.WORKERS_CAVEAT,
                tables.workers_table(res),
                findings=prose.workers_findings(res),
            )
        )
    if any(res.ran(c["name"]) for c in res.tls_cells):
        # The C handshake client's table, where it ran (issue 19): below echod-bench's.
        by_c_client = (
            ["", prose.TLS_C_CLIENT, "", *tables.handshake_c_client_table(res)]
            if tables.c_client_handshakes(res)
            else []
        )
        out.append(
            Section(
                "tls",
                "TLS",
                prose.TLS_INTRO,
                [*tables.handshake_table(res), *by_c_client],
                findings=prose.tls_findings(res),
            )
        )
    if any(res.ran(c["name"]) for c in res.proxy_cells):
        out.append(
            Section("proxy", "The PROXY header's cost", prose.PROXY_INTRO, tables.proxy_table(res))
        )
    out += [
        Section(
            f"cell:{c['name']}",
            f"{c['label']} (`{' '.join(c['args'])}`)",
            table=tables.cell_table(res, c) if res.ran(c["name"]) else [],
            intro="" if res.ran(c["name"]) else "∅ No server ran in this cell here: see Notes.",
        )
        for c in (*res.cells, *res.tls_cells, *res.proxy_cells)
    ]
    return out


def notes(res: Results) -> list[str]:
    problems = [p for p in res.problems() if "of a CPU: the figures measure" not in p]
    found = list(res.data.get("notes", []))
    contention = res.contention_note()
    if contention:
        found.append(contention)
    found += problems[:60]
    if len(problems) > 60:
        found.append(f"… and {len(problems) - 60} more in the JSON")
    return found


def markdown(data: dict[str, Any], image_prefix: str) -> str:
    """The full report."""
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
    ]
    for section in sections(res):
        out += section.render(2, image_prefix)
    out += [prose.LEGEND, ""]
    found = notes(res)
    if found:
        out += ["## Notes", "", *(f"- {n}" for n in found), ""]
    return "\n".join(out)


def readme_sections(data: dict[str, Any], links: str = README_LINKS) -> dict[str, str]:
    """The README's bench block: the headline table and its marks; every other table
    is in the full report it links to, rendered from the same sections."""
    res = Results(data)
    timing = data["timing"]
    found = sections(res)
    by_key = {s.key: s for s in found}
    contention = res.contention_note()
    others = ", ".join(
        f'"{s.title}"' for s in found if s.key != "summary" and not s.key.startswith("cell:")
    )
    bench = [
        "## Benchmark",
        "",
        f"Latest `make bench` ({data['timestamp']}, echod "
        f"{data['environment'].get('source', 'unknown')}): {len(res.servers)} servers, "
        f"{timing['rounds']} round(s) of {timing['duration_s']:g} s after "
        f"{timing['warmup_s']:g} s warmup, {data['elapsed_s'] / 60:.0f} min in all; medians; "
        f"{data['environment']['pinning']}. "
        "This section is rewritten by `python -m bench --publish`.",
        "",
        *(by_key["summary"].table if "summary" in by_key else []),
        "",
        prose.LEGEND,
        "",
        *([contention, ""] if contention else []),
        f"The full report, [{links}latest.md]({links}latest.md), has every cell with its "
        f"spread, the charts and the notes" + (f"; and {others}." if others else "."),
    ]
    return {"bench": "\n".join(bench)}


def write(data: dict[str, Any], directory: Path, stem: str) -> list[Path]:
    paths = charts(data, directory, f"{stem}-")
    md = directory / f"{stem}.md"
    md.write_text(markdown(data, f"{stem}-"))
    return [md, *paths]


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
