"""``echod-bench merge A.json B.json ...``: several runs (several hosts) as one result.

Histograms are added, counts summed and rates summed, so the merged result is
what one generator as large as all of them would have measured; percentiles come
from the added histograms, never from averaging percentiles.  Runs must have
measured overlapping windows (use a common --start-at), or the sum of their
rates describes no moment the server lived through.  The merged result is itself
a result, so merges can be merged again.
"""

from __future__ import annotations

import sys
from datetime import datetime, timezone
from typing import Any

from loadtest.params import Parser
from loadtest.report import EXIT_BAD_INPUT, Histograms, document, table
from loadtest.results import (
    ResultError,
    decode_histogram,
    interval_record,
    load,
    unwritable,
    write,
)
from loadtest.stats import new_histogram

# Runs overlapping less than this share of the shortest window are merged with a
# warning: their sum of rates holds for the overlap only.
OVERLAP_WARNING = 0.9


def _when(unix: float) -> str:
    return datetime.fromtimestamp(unix, timezone.utc).isoformat(timespec="milliseconds")


def _sum_counts(dicts: list[dict[str, int]]) -> dict[str, int]:
    total: dict[str, int] = {}
    for counts in dicts:
        for kind, count in counts.items():
            total[kind] = total.get(kind, 0) + count
    return dict(sorted(total.items()))


def check_overlap(runs: list[tuple[str, dict[str, Any]]]) -> list[str]:
    """Raise ResultError unless every window overlaps the others; warnings otherwise."""
    latest = max(runs, key=lambda run: run[1]["window"]["start"])
    earliest = min(runs, key=lambda run: run[1]["window"]["end"])
    start, end = latest[1]["window"]["start"], earliest[1]["window"]["end"]
    if start >= end:
        raise ResultError(
            f"windows do not overlap: {earliest[0]} ended at {_when(end)}, "
            f"{latest[0]} started at {_when(start)} (give the runs a common --start-at)"
        )
    shortest = min(run[1]["window"]["end"] - run[1]["window"]["start"] for run in runs)
    if shortest > 0 and end - start < OVERLAP_WARNING * shortest:
        return [
            f"the runs overlap for {end - start:.2f} s of the shortest window's "
            f"{shortest:.2f} s: the summed rates hold for that overlap only"
        ]
    return []


def _server(runs: list[tuple[str, dict[str, Any]]], messages: int, connections: int) -> Any:
    """One run's server sample holds for all (it saw every generator's load); several cannot be added."""
    sampled = [figures["server"] for _, figures in runs if figures.get("server")]
    if len(sampled) != 1:
        return None
    server = dict(sampled[0])
    server["cpu_us_per_msg"] = round(1e6 * server["cpu_s"] / messages, 3) if messages else None
    server["rss_per_connection_bytes"] = round(
        (server["rss_peak_bytes"] - server["rss_start_bytes"]) / connections, 1
    )
    return server


def merge_results(runs: list[tuple[str, dict[str, Any]]]) -> dict[str, Any]:
    """The merged result of ``(name, result)`` pairs; ResultError when they cannot be merged."""
    warnings = check_overlap(runs)
    results = [figures for _, figures in runs]
    shapes = {
        tuple(f["parameters"].get(key) for key in ("workload", "size", "pipeline")) for f in results
    }
    if len(shapes) > 1:
        warnings.append(
            "the runs differ in workload, size or pipeline: the merged latencies mix "
            "different requests"
        )
    latency, connect = new_histogram(), new_histogram()
    uncorrected, drain_latency = new_histogram(), new_histogram()
    for figures in results:
        latency.add(decode_histogram(figures["histograms"]["latency"]))
        connect.add(decode_histogram(figures["histograms"]["connect"]))
        # Beside the window's latency: from the actual send (open loop) and the drain.
        if "latency_uncorrected" in figures["histograms"]:
            uncorrected.add(decode_histogram(figures["histograms"]["latency_uncorrected"]))
            drain_latency.add(decode_histogram(figures["histograms"]["drain_latency"]))
    seconds: dict[int, list[dict[str, Any]]] = {}
    for figures in results:
        for interval in figures["intervals"]:
            seconds.setdefault(interval["second"], []).append(interval)
    intervals = []
    for second, parts in sorted(seconds.items()):
        histogram = new_histogram()
        for part in parts:
            histogram.add(decode_histogram(part["latency"]))
        intervals.append(
            interval_record(
                second,
                max(part["duration_s"] for part in parts),
                sum(part["messages"] for part in parts),
                sum(part["bytes"] for part in parts),
                _sum_counts([part["errors"] for part in parts]),
                histogram,
            )
        )
    inputs: list[dict[str, Any]] = []
    workers: list[dict[str, Any]] = []
    for name, figures in runs:
        inputs.extend(
            figures.get("merged")
            or [
                {
                    "file": name,
                    "host": figures["parameters"].get("host"),
                    "port": figures["parameters"].get("port"),
                    "window": figures["window"],
                    "messages": figures["messages"],
                    "requests_per_s": figures["requests_per_s"],
                    "errors": figures["errors"],
                    "environment": figures.get("environment"),
                }
            ]
        )
        workers.extend(figures["workers"])
        warnings.extend(f"{name}: {warning}" for warning in figures["warnings"])
    parameters = dict(results[0]["parameters"])
    for key in ("connections", "processes"):
        parameters[key] = sum(f["parameters"].get(key) or 0 for f in results)
    parameters["active"] = sum(f["connections"]["active"] for f in results)
    if all(f["parameters"].get("rate") for f in results):
        parameters["rate"] = sum(f["parameters"]["rate"] for f in results)
    errors = _sum_counts([f["errors"] for f in results])
    messages = sum(f["messages"] for f in results)
    connections = {
        key: sum(f["connections"][key] for f in results)
        for key in ("requested", "active", "established")
    }
    return document(
        generator=results[0].get("generator", {"name": "echod-bench"}),
        parameters=parameters,
        environment=results[0].get("environment"),
        window_s=max(f["window_s"] for f in results),
        window={
            "start": min(f["window"]["start"] for f in results),
            "end": max(f["window"]["end"] for f in results),
        },
        connections=connections,
        messages=messages,
        # Each run's rate over its own window, summed: the load all of them offered.
        requests_per_s=round(sum(f["requests_per_s"] for f in results), 1),
        bytes_echoed=sum(f["bytes_echoed"] for f in results),
        mb_per_s=round(sum(f["mb_per_s"] for f in results), 3),
        histograms=Histograms(latency, uncorrected, drain_latency, connect),
        drained=sum(f.get("drain", {}).get("messages", 0) for f in results),
        loop=results[0].get("loop"),
        errors=errors,
        unsent=sum(f["unsent"] for f in results),
        server=_server(runs, messages, connections["requested"]),
        workers=workers,
        warnings=warnings,
        intervals=intervals,
        merged=inputs,
    )


def build_parser() -> Parser:
    parser = Parser(
        prog="echod-bench merge",
        description="Add the --json results of several echod-bench runs: histograms added, "
        "counts and rates summed, windows checked to overlap.",
        epilog="Exit status: that of the merged run (0 clean, 1 transport errors, 3 mismatch), "
        "or 2 when a file is not a result or the windows do not overlap.",
    )
    parser.add_argument(
        "files", nargs="+", metavar="RESULT.json", help="--json or --json-stream output"
    )
    parser.add_argument(
        "--json", metavar="FILE", help="write the merged result to this file (- for stdout)"
    )
    return parser


def main(argv: list[str]) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    problem = unwritable(args.json) if args.json else None
    if problem:
        parser.error(problem)
    try:
        runs = [(path, load(path)) for path in args.files]
        merged = merge_results(runs)
    except ResultError as exc:
        print(f"echod-bench merge: error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    print(table(merged), file=sys.stderr if args.json == "-" else sys.stdout)
    if args.json:
        write(args.json, merged)
    return int(merged["exit_status"])
