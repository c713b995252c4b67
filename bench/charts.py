"""The report's charts, with every bar that is not a server's own figure marked.

A bar for a generator-bound row (†) is hatched: its height is what the generator
could send. A bar for a faulty row (✗: errors, a failed round, a server killed
after SIGTERM) is greyed and cross-hatched: it measures only what the server did
not refuse. Each chart with such a bar says so in its legend. Where a row has no
figure the gap is labelled: "not run" (∅, a cell beyond the server here) or
"failed" (✗, no round gave figures). A cell nothing ran in draws no group.
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


def _label_gaps(ax: Axes, xs: list[float], gaps: list[str]) -> None:
    """Say why a bar is missing, at the foot of its slot, so a gap never reads as zero."""
    from matplotlib.transforms import blended_transform_factory

    foot = blended_transform_factory(ax.transData, ax.transAxes)
    for x, gap in zip(xs, gaps, strict=True):
        if gap:
            ax.text(x, 0.02, gap, transform=foot, rotation=90, ha="center", va="bottom",
                    fontsize="x-small", color="#555555")  # fmt: skip


def _gap(res: Results, server: str, cell: str, value: float | None) -> str:
    if value is not None:
        return ""
    if res.not_run(server, cell):
        return "not run"
    return "failed" if res.faults(server, cell) else ""


def _legend(
    ax: Axes | Figure, series: list[tuple[str, Any]], used: set[str], **kwargs: Any
) -> None:
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
    cells = [c["name"] for c in res.cells if res.ran(c["name"])]
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
            found = [metric(server, g) for g in groups]
            xs = [x + i * width for x in range(len(groups))]
            values = [v if v else float("nan") for v in found]
            bars = ax.bar(xs, values, width, label=server)
            series.append((server, bars.patches[0].get_facecolor()))
            marks = [mark(res, server, cell_of(g), throughput) for g in groups]
            used.update(marks)
            _style(bars, marks, [f"{server}|{g}" for g in groups])
            _label_gaps(
                ax,
                xs,
                [
                    _gap(res, server, cell_of(g), v or None)
                    for g, v in zip(groups, found, strict=True)
                ],
            )
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
    # The RSS panel is symmetric-log: linear below 1 KiB, so an event-loop server's
    # 0.0 KiB per connection is drawn (and labelled) beside a thread's 30 KiB.
    panels: list[tuple[str, Metric, float, str, bool]] = [
        ("throughput, req/s", query.rate, 1.0, "linear", True),
        ("p99 latency, µs (log)", query.p99, 1.0, "log", True),
        ("server CPU µs per request", query.cpu, 1.0, "linear", False),
        (
            "RSS per connection, KiB (log above 1 KiB)",
            query.rss_per_conn,
            1 / 1024,
            "symlog",
            False,
        ),
    ]
    fig: Figure
    fig, axes = plt.subplots(2, 2, figsize=(12, 7.5))
    xs = range(len(res.servers))
    used: set[str] = set()
    series: list[tuple[str, Any]] = []
    for ax, (title, metric, scale, yscale, throughput) in zip(axes.flat, panels, strict=True):
        for offset, cell in ((-0.2, res.few), (0.2, res.many)):
            found = [res.median(server, cell["name"], metric) for server in res.servers]
            drawable = [v is not None and (v > 0 or yscale == "symlog") for v in found]
            values = [
                v * scale if v is not None and ok else float("nan")
                for v, ok in zip(found, drawable, strict=True)
            ]
            bars = ax.bar(
                [x + offset for x in xs],
                values,
                0.4,
                label=f"{query.count(cell['connections'])} conns",
            )
            if yscale == "symlog":
                ax.bar_label(bars, fmt="%.1f", fontsize="xx-small")
            _label_gaps(
                ax,
                [x + offset for x in xs],
                [_gap(res, s, cell["name"], v) for s, v in zip(res.servers, found, strict=True)],
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
        if yscale == "symlog":
            ax.set_yscale("symlog", linthresh=1.0)
        elif yscale == "log":
            ax.set_yscale("log")
        ax.grid(axis="y", alpha=0.3)
    # Below the panels: inside one, it covered the bars of the servers on its right.
    _legend(
        fig, series, used, fontsize="small", loc="lower center", ncol=len(series) + len(used - {""})
    )
    fig.suptitle(f"Which IO model? {iomodel_caption(res)} (medians over rounds)")
    fig.tight_layout(rect=(0, 0.05, 1, 1))
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
