"""The report's charts, with every bar that is not a server's own figure marked.

A bar for a generator-bound row (†) is hatched: its height is what the generator
could send. A bar for a faulty row (✗: errors, a failed round, a server killed
after SIGTERM) is greyed and cross-hatched: it measures only what the server did
not refuse. Each chart with such a bar says so in its legend.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bench import query
from bench.prose import has_iomodel, iomodel_caption
from bench.query import Metric, Results

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

BOUND_HATCH = "//"
FAULTY_HATCH = "xx"
FAULTY_COLOUR = "#b0b0b0"
FAULTY_ALPHA = 0.45


def mark(res: Results, server: str, cell: str, throughput: bool) -> str:
    """ "faulty", "bound" or "": how a bar of ``server`` in ``cell`` is drawn. Generator
    saturation matters only where the height is a rate or a latency (``throughput``)."""
    if res.faults(server, cell):
        return "faulty"
    if throughput and res.generator_bound(server, cell):
        return "bound"
    return ""


def _style(bars: Any, marks: list[str], ids: list[str]) -> None:
    for bar, how, gid in zip(bars, marks, ids, strict=True):
        bar.set_gid(gid)  # "server|group": lets a reader (and the tests) find a bar
        if how == "bound":
            bar.set_hatch(BOUND_HATCH)
            bar.set_edgecolor("black")
        elif how == "faulty":
            bar.set_facecolor(FAULTY_COLOUR)
            bar.set_hatch(FAULTY_HATCH)
            bar.set_edgecolor("black")
            bar.set_alpha(FAULTY_ALPHA)


def _legend(ax: Axes, series: list[tuple[str, Any]], used: set[str], **kwargs: Any) -> None:
    """One plain swatch per series (a marked first bar must not restyle its series), then
    one per mark in use."""
    from matplotlib.patches import Patch

    handles: list[Any] = [Patch(facecolor=colour) for _, colour in series]
    labels = [label for label, _ in series]
    if "bound" in used:
        handles.append(Patch(facecolor="white", edgecolor="black", hatch=BOUND_HATCH))
        labels.append("† generator-bound: the generator's limit")
    if "faulty" in used:
        handles.append(
            Patch(
                facecolor=FAULTY_COLOUR, edgecolor="black", hatch=FAULTY_HATCH, alpha=FAULTY_ALPHA
            )
        )
        labels.append("✗ faulty: errors or killed, see Notes")
    ax.legend(handles, labels, **kwargs)


def figures(data: dict[str, Any]) -> dict[str, Figure]:
    """Every chart of a run by file name stem, drawn but not written."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    res = Results(data)
    drawn: dict[str, Figure] = {}
    # A cell nothing ran in (every server "not run") would be an empty group.
    cells = [
        c["name"]
        for c in res.cells
        if any(res.median(s, c["name"], query.rate) is not None for s in res.servers)
    ]
    width = 0.8 / max(1, len(res.servers))

    def grouped(
        name: str,
        groups: list[str],
        cell_of: Callable[[str], str],
        metric: Callable[[str, str], float | None],
        throughput: bool,
        ylabel: str,
        title: str,
    ) -> None:
        fig, ax = plt.subplots(figsize=(max(7, 1.3 * len(groups) + 3), 4.5))
        used: set[str] = set()
        series = []
        for i, server in enumerate(res.servers):
            values = [metric(server, g) or 0.0 for g in groups]
            bars = ax.bar([x + i * width for x in range(len(groups))], values, width, label=server)
            series.append((server, bars.patches[0].get_facecolor()))
            marks = [mark(res, server, cell_of(g), throughput) for g in groups]
            used.update(marks)
            _style(bars, marks, [f"{server}|{g}" for g in groups])
        ax.set_xticks([x + width * (len(res.servers) - 1) / 2 for x in range(len(groups))], groups)
        ax.set_yscale("log")
        ax.set_ylabel(ylabel)
        ax.set_title(title)
        _legend(ax, series, used, fontsize="small", ncol=2)
        ax.grid(axis="y", alpha=0.3)
        fig.tight_layout()
        drawn[name] = fig

    if not cells:  # only the workers cell ran: it has a table, no charts
        return drawn
    grouped("throughput", cells, str, lambda s, c: res.median(s, c, query.rate), True,
            "messages/s (connections/s for churn)",
            "Throughput per backend and workload (median)")  # fmt: skip
    first = cells[0]
    grouped(
        "latency",
        ["p50", "p90", "p99", "p99.9", "max"],
        lambda _: first,
        lambda s, p: res.median(s, first, query.latency(p)),
        True,
        "µs",
        f"Latency percentiles, {res.cells[0]['label']} (median over rounds)",
    )
    grouped("cpu", cells, str, lambda s, c: res.median(s, c, query.cpu), False,
            "server CPU µs per message",
            "Server CPU time per echoed message (lower is better)")  # fmt: skip
    if has_iomodel(res):
        drawn["iomodel"] = _iomodel(res, plt)
    return drawn


def _iomodel(res: Results, plt: Any) -> Figure:
    assert res.few is not None and res.many is not None
    panels: list[tuple[str, Metric, float, bool, bool]] = [
        ("throughput, req/s", query.rate, 1.0, False, True),
        ("p99 latency, µs (log)", query.p99, 1.0, True, True),
        ("server CPU µs per request", query.cpu, 1.0, False, False),
        ("RSS per connection, KiB (log)", query.rss_per_conn, 1 / 1024, True, False),
    ]
    fig: Figure
    fig, axes = plt.subplots(2, 2, figsize=(12, 7.5))
    xs = range(len(res.servers))
    used: set[str] = set()
    series: list[tuple[str, Any]] = []
    for ax, (title, metric, scale, log, throughput) in zip(axes.flat, panels, strict=True):
        for offset, cell in ((-0.2, res.few), (0.2, res.many)):
            values = []
            for server in res.servers:
                v = res.median(server, cell["name"], metric)
                values.append(v * scale if v is not None and v > 0 else float("nan"))
            bars = ax.bar(
                [x + offset for x in xs],
                values,
                0.4,
                label=f"{query.count(cell['connections'])} conns",
            )
            if len(series) < 2:
                series.append(
                    (f"{query.count(cell['connections'])} conns", bars.patches[0].get_facecolor())
                )
            marks = [mark(res, s, cell["name"], throughput) for s in res.servers]
            used.update(marks)
            _style(bars, marks, [f"{s}|{cell['name']}" for s in res.servers])
        ax.set_xticks(list(xs), res.servers, rotation=30, fontsize="small")
        ax.set_title(title)
        if log:
            ax.set_yscale("log")
        ax.grid(axis="y", alpha=0.3)
    _legend(axes.flat[0], series, used, fontsize="small")
    fig.suptitle(f"Which IO model? {iomodel_caption(res)} (medians over rounds)")
    fig.tight_layout()
    return fig


def charts(data: dict[str, Any], directory: Path, prefix: str) -> list[Path]:
    """Write every chart as ``directory/prefix+NAME.png``."""
    drawn = figures(data)  # first: it selects the Agg backend before pyplot loads
    import matplotlib.pyplot as plt

    written = []
    for name, fig in drawn.items():
        path = directory / f"{prefix}{name}.png"
        fig.savefig(path, dpi=100 if name == "iomodel" else 110)
        plt.close(fig)
        written.append(path)
    return written
