"""Turning merged worker results into the figures, the table and the JSON file."""

from __future__ import annotations

import os
import platform
from typing import Any, NamedTuple

from hdrh.histogram import HdrHistogram

from loadtest import __version__
from loadtest.monitor import ServerFigures
from loadtest.params import Params
from loadtest.results import FORMAT, histogram_text
from loadtest.stats import LOST, MISMATCH, WorkerResult, merge, merge_errors, summarize

# Error kind: held connections not up at the end of the window.
UNCONNECTED = "unconnected"
# A worker above this share of one core is measuring itself, not the server.
SATURATED = 0.9

EXIT_CLEAN = 0
EXIT_ERRORS = 1
EXIT_BAD_INPUT = 2
EXIT_MISMATCH = 3
EXIT_LOST = 4


def environment() -> dict[str, Any]:
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:
        usable = os.cpu_count() or 1
    return {
        "cpu_count": os.cpu_count(),
        "cpus_usable": usable,
        "python": platform.python_version(),
        "implementation": platform.python_implementation(),
        "kernel": platform.release(),
        "system": platform.system(),
        "machine": platform.machine(),
        "generator_version": __version__,
    }


def exit_status(errors: dict[str, int]) -> int:
    if errors.get(MISMATCH):
        return EXIT_MISMATCH
    if errors.get(LOST):
        return EXIT_LOST
    return EXIT_ERRORS if any(errors.values()) else EXIT_CLEAN


def build(
    params: Params,
    processes: int,
    results: list[WorkerResult],
    server: ServerFigures | None,
    intervals: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """Every figure of the run, as the JSON file holds it (format in loadtest/README.md)."""
    window = max((r.window_s for r in results), default=0.0)
    messages = sum(r.messages for r in results)
    echoed = sum(r.echoed for r in results)
    errors = merge_errors(results)
    if params.workload != "churn":
        # A held connection that never came up (or was down when the window closed)
        # carried none of the load asked for, even when nothing failed outright:
        # connects still queued behind a slow server or an exhausted port range.
        down = params.connections - sum(r.established for r in results)
        if down > 0:
            errors = dict(sorted({**errors, UNCONNECTED: down}.items()))
    warnings: list[str] = []
    workers = []
    for r in sorted(results, key=lambda r: r.index):
        saturated = r.cpu_share >= SATURATED
        workers.append(
            {
                "index": r.index,
                "connections": r.connections,
                "established": r.established,
                "cpu_pct": round(100 * r.cpu_share, 1),
                "saturated": saturated,
            }
        )
        if saturated:
            warnings.append(
                f"worker {r.index} used {100 * r.cpu_share:.0f}% of a CPU: the figures measure "
                "the generator as much as the server (add --processes or CPUs)"
            )
    if params.rate and window and messages < 0.95 * params.rate * window:
        warnings.append(
            f"echoed {messages / window:,.0f} msg/s, short of the target {params.rate:,.0f}: "
            "latencies include the wait behind the schedule (raise --pipeline or --connections "
            "if the server is not the limit)"
        )
    unsent = sum(r.unsent for r in results)
    if unsent:
        warnings.append(
            f"{unsent} scheduled messages fell due and were never sent (their connection "
            "was down or stalled until the end)"
        )
    server_figures: dict[str, Any] | None = None
    if server is not None:
        server_figures = {
            "pid": server.pid,
            "processes": server.processes,
            "cpu_s": round(server.cpu_s, 4),
            "cpu_mean_pct": round(server.cpu_mean_pct, 1),
            "cpu_peak_pct": round(server.cpu_peak_pct, 1),
            "rss_start_bytes": server.rss_start,
            "rss_peak_bytes": server.rss_peak,
            "cpu_us_per_msg": round(1e6 * server.cpu_s / messages, 3) if messages else None,
            "rss_per_connection_bytes": round(
                (server.rss_peak - server.rss_start) / params.connections, 1
            ),
        }
    return document(
        generator={"name": "echod-bench", "version": __version__},
        parameters={**params.as_dict(), "processes": processes},
        environment=environment(),
        window_s=round(window, 4),
        # Wall clock, Unix seconds: the earliest start and latest end over the workers.
        window={
            "start": min((r.window_start_wall for r in results), default=0.0),
            "end": max((r.window_end_wall for r in results), default=0.0),
        },
        connections={
            "requested": params.connections,
            "active": params.active_connections,
            "established": sum(r.established for r in results),
        },
        messages=messages,
        requests_per_s=round(messages / window, 1) if window else 0.0,
        bytes_echoed=echoed,
        mb_per_s=round(echoed / window / 1e6, 3) if window else 0.0,
        histograms=Histograms(
            merge([r.latency for r in results]),
            merge([r.latency_uncorrected for r in results]),
            merge([r.drain_latency for r in results]),
            merge([r.connect for r in results]),
        ),
        drained=sum(r.drained for r in results),
        loop=results[0].loop if results else None,
        errors=errors,
        unsent=unsent,
        server=server_figures,
        workers=workers,
        warnings=warnings,
        intervals=intervals or [],
    )


class Histograms(NamedTuple):
    """The four histograms a result carries, each encoded so that results add exactly."""

    latency: HdrHistogram
    uncorrected: HdrHistogram
    drain: HdrHistogram
    connect: HdrHistogram


def document(
    *,
    generator: dict[str, Any],
    parameters: dict[str, Any],
    environment: dict[str, Any] | None,
    window_s: float,
    window: dict[str, float],
    connections: dict[str, int],
    messages: int,
    requests_per_s: float,
    bytes_echoed: int,
    mb_per_s: float,
    histograms: Histograms,
    drained: int,
    loop: str | None,
    errors: dict[str, int],
    unsent: int,
    server: dict[str, Any] | None,
    workers: list[dict[str, Any]],
    warnings: list[str],
    intervals: list[dict[str, Any]],
    merged: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """The result document --json writes, for one run (:func:`build`) and for several
    merged (``loadtest.merge``): its fields are laid out here alone."""
    found = {
        "format": FORMAT,
        "generator": generator,
        "parameters": parameters,
        "environment": environment,
        "window_s": window_s,
        "window": window,
        "connections": connections,
        "messages": messages,
        "requests_per_s": requests_per_s,
        "bytes_echoed": bytes_echoed,
        "mb_per_s": mb_per_s,
        "latency_us": summarize(histograms.latency),
        "latency_uncorrected_us": summarize(histograms.uncorrected),
        "drain": {"messages": drained, "latency_us": summarize(histograms.drain)},
        "loop": loop,
        "connect_us": summarize(histograms.connect),
        "errors": errors,
        "errors_total": sum(errors.values()),
        "unsent": unsent,
        "server": server,
        "workers": workers,
        "warnings": warnings,
        "exit_status": exit_status(errors),
        "histograms": {
            "latency": histogram_text(histograms.latency.encode()),
            "latency_uncorrected": histogram_text(histograms.uncorrected.encode()),
            "drain_latency": histogram_text(histograms.drain.encode()),
            "connect": histogram_text(histograms.connect.encode()),
        },
        "intervals": intervals,
    }
    if merged is not None:
        found["merged"] = merged
    return found


def _count(value: float) -> str:
    return f"{value:,.0f}"


def process_count(n: int) -> str:
    return f"{n} process{'es' if n != 1 else ''}"


def percentiles(summary: dict[str, Any]) -> str:
    if not summary.get("count"):
        return "-"
    return "  ".join(f"{k} {summary[k]:,}" for k in ("p50", "p90", "p99", "p99.9", "max"))


def _mib(value: int) -> str:
    return f"{value / 1048576:.1f} MiB"


def table(figures: dict[str, Any]) -> str:
    """The human-readable report: one figure a line, errors and warnings last."""
    p = figures["parameters"]
    conns = figures["connections"]
    rate_name = "connections/s" if p["workload"] == "churn" else "requests/s"
    if p["workload"] == "churn" and p.get("tls"):
        rate_name = "handshakes/s"  # one TLS handshake per connection
    shape = f"size {p['size']} B, pipeline {p['pipeline']}"
    if p["workload"] == "rate":
        shape += f", target {p['rate']:,.0f} msg/s"
    merged = figures.get("merged")
    against = f"{len(merged)} runs merged" if merged else f"against {p['host']}:{p['port']}"
    lines = [
        f"echod-bench {figures['generator']['version']}: {p['workload']} {against}, "
        f"{conns['requested']} connections ({conns['active']} active, {conns['established']} up at the end), "
        f"{shape}, {process_count(p['processes'])}",
        f"  window         {figures['window_s']:.2f} s after {p['warmup']:g} s warmup",
        f"  {rate_name:<15}{_count(figures['requests_per_s'])}",
        f"  MB/s echoed    {figures['mb_per_s']:,.2f} (each way)",
        f"  latency µs     {percentiles(figures['latency_us'])}",
        *(
            [
                f"  uncorrected µs {percentiles(figures.get('latency_uncorrected_us', {}))} (from the send)"
            ]
            if p["workload"] == "rate"
            else []
        ),
        f"  connect µs     {percentiles(figures['connect_us'])}",
    ]
    drain = figures.get("drain") or {"messages": 0}
    if drain["messages"]:
        worst = drain["latency_us"].get("max")
        lines.append(
            f"  drain          {drain['messages']:,} echoes owed at the end came back "
            "(not in the figures above"
            + (f"; latency max {worst:,} µs)" if worst is not None else ")")
        )
    errors = figures["errors"]
    lines.append(
        "  errors         "
        + (", ".join(f"{k} {v:,}" for k, v in errors.items()) if errors else "none")
    )
    server = figures["server"]
    if server:
        per_msg = server["cpu_us_per_msg"]
        lines.append(
            f"  server         pid {server['pid']} ({server['processes']} process{'es' if server['processes'] != 1 else ''}): CPU mean {server['cpu_mean_pct']:.0f}%, "
            f"peak {server['cpu_peak_pct']:.0f}%; RSS peak {_mib(server['rss_peak_bytes'])}"
        )
        lines.append(
            "  server CPU/msg "
            + (f"{per_msg:.2f} µs" if per_msg is not None else "- (nothing echoed)")
        )
    cpu = ", ".join(f"{w['cpu_pct']:.0f}%" for w in figures["workers"])
    lines.append(f"  generator CPU  {cpu} (per worker)")
    lines.extend(f"WARNING: {w}" for w in figures["warnings"])
    return "\n".join(lines)
