"""The generators a cell is driven by: echod-bench, and the minimal C client the
cells marked ``c_client`` measure it against. Each yields the same figures dict.

The C client is ``echo-client`` in the request/response cells and ``echo-hs-client``
in the TLS handshake cells. Each prints a few counts, not echod-bench's full figures;
they are normalised here to the keys the report reads (``requests_per_s``, ``errors``,
``workers``, ``server``) so one query model serves both generators.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from bench.matrix import Cell, Timing
from bench.query import C_CLIENT, ECHOD_BENCH
from bench.servers import CLIENT_BINARY, HS_CLIENT_BINARY
from loadtest.monitor import TreeSampler

# echod-bench's own bar for a saturated worker (loadtest/report.py).
SATURATED_PCT = 90.0


def echod_bench_argv(
    port: int, cell: Cell, timing: Timing, server_pid: int, out: Path
) -> list[str]:
    return [
        sys.executable, "-m", "loadtest", "--port", str(port), *cell.args,
        "--duration", str(timing.duration), "--warmup", str(max(timing.warmup, cell.min_warmup)),
        "--server-pid", str(server_pid), "--json", str(out), "--no-progress",
    ]  # fmt: skip


def option(cell: Cell, flag: str, default: str) -> str:
    args = list(cell.args)
    return args[args.index(flag) + 1] if flag in args else default


def c_client_argv(port: int, cell: Cell, timing: Timing) -> list[str]:
    """The C client in the cell's shape: its connections and message size, closed loop;
    in a handshake cell, a handshake per message, resumed as echod-bench's are."""
    if cell.handshakes:
        resume = ["-r"] if "--tls-resume" in cell.args else []
        return [
            str(HS_CLIENT_BINARY), *resume, "-s", option(cell, "--size", "64"), "127.0.0.1",
            str(port), str(cell.connections), str(timing.duration), str(timing.warmup),
        ]  # fmt: skip
    return [
        str(CLIENT_BINARY), "127.0.0.1", str(port), str(cell.connections),
        option(cell, "--size", "64"), str(timing.duration), str(timing.warmup),
    ]  # fmt: skip


# The C clients' counts and the error kinds they become: echo-client's, then
# echo-hs-client's (whose "not_resumed" is a resumed cell's handshake that was full).
ERROR_KINDS = (
    ("mismatch", "mismatches"), ("transport", "errors"), ("lost", "lost"),
    ("closed", "closed"), ("timeout", "timeouts"), ("tls", "tls"), ("connect", "connect"),
    ("not_resumed", "not_resumed"),
)  # fmt: skip


def c_client_counts(stdout: str) -> dict[str, Any]:
    """The C client's last line: one JSON object."""
    counts: dict[str, Any] = json.loads(stdout.strip().splitlines()[-1])
    return counts


def c_client_figures(
    counts: dict[str, Any], cpu_s: float, wall_s: float, server: dict[str, Any] | None = None
) -> dict[str, Any]:
    """The C client's counts as figures; ``cpu_s`` is its user+system time over the
    ``wall_s`` it ran (warmup and drain included, so the share is a fair one). A
    handshake is a message: its rate is handshakes/s, as echod-bench's churn is."""
    shaking = "handshakes" in counts
    errors = {kind: int(counts[key]) for kind, key in ERROR_KINDS if counts.get(key)}
    pct = 100.0 * cpu_s / wall_s if wall_s > 0 else 0.0
    figures = {
        "generator": {"name": C_CLIENT},
        "window_s": float(counts["seconds"]),
        "messages": int(counts["handshakes" if shaking else "requests"]),
        "requests_per_s": float(counts["handshakes_per_s" if shaking else "requests_per_s"]),
        "latency_us": dict(counts.get("latency_us") or {}),
        "errors": errors,
        "warnings": [],
        "workers": [{"index": 0, "cpu_pct": round(pct, 1), "saturated": pct > SATURATED_PCT}],
        "server": server,
    }
    if shaking:
        figures["handshakes"] = {"resumed": int(counts["resumed"]), "mode": counts["mode"]}
    return figures


def server_figures(
    sampler: TreeSampler, counts: dict[str, Any], connections: int
) -> dict[str, Any] | None:
    """The server's CPU and memory over the C client's own window (``window``: its
    CLOCK_MONOTONIC seconds, the clock of ``time.monotonic``), in echod-bench's keys;
    None for a client that does not say its window (echo-client)."""
    window = counts.get("window")
    found = sampler.figures(float(window[0]), float(window[1])) if window else None
    if found is None:
        return None
    messages = int(counts.get("handshakes", counts.get("requests", 0)))
    return {
        "pid": found.pid,
        "processes": found.processes,
        "cpu_s": round(found.cpu_s, 4),
        "cpu_mean_pct": round(found.cpu_mean_pct, 1),
        "cpu_peak_pct": round(found.cpu_peak_pct, 1),
        "rss_start_bytes": found.rss_start,
        "rss_peak_bytes": found.rss_peak,
        "cpu_us_per_msg": round(1e6 * found.cpu_s / messages, 3) if messages else None,
        "rss_per_connection_bytes": round((found.rss_peak - found.rss_start) / connections, 1),
    }


GENERATORS = (ECHOD_BENCH, C_CLIENT)
