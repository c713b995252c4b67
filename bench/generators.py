"""The generators a cell is driven by: echod-bench, and the minimal C client the
cells marked ``c_client`` measure it against. Each yields the same figures dict.

The C client prints five counts, not echod-bench's full figures; it is normalised
here to the keys the report reads (``requests_per_s``, ``errors``, ``workers``) so
one query model serves both.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from bench.matrix import Cell, Timing
from bench.query import C_CLIENT, ECHOD_BENCH
from bench.servers import CLIENT_BINARY

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
    """The C client in the cell's shape: its connections and message size, closed loop."""
    return [
        str(CLIENT_BINARY), "127.0.0.1", str(port), str(cell.connections),
        option(cell, "--size", "64"), str(timing.duration), str(timing.warmup),
    ]  # fmt: skip


def c_client_figures(stdout: str, cpu_s: float, wall_s: float) -> dict[str, Any]:
    """The C client's JSON line as figures; ``cpu_s`` is its user+system time over the
    ``wall_s`` it ran (warmup and drain included, so the share is a fair one)."""
    counts = json.loads(stdout.strip().splitlines()[-1])
    seconds = float(counts["seconds"])
    errors = {
        kind: int(counts[key])
        for kind, key in (("mismatch", "mismatches"), ("transport", "errors"), ("lost", "lost"))
        if counts.get(key)
    }
    pct = 100.0 * cpu_s / wall_s if wall_s > 0 else 0.0
    return {
        "generator": {"name": C_CLIENT},
        "window_s": seconds,
        "messages": int(counts["requests"]),
        "requests_per_s": float(counts["requests_per_s"]),
        "latency_us": {},
        "errors": errors,
        "warnings": [],
        "workers": [{"index": 0, "cpu_pct": round(pct, 1), "saturated": pct > SATURATED_PCT}],
        "server": None,
    }


GENERATORS = (ECHOD_BENCH, C_CLIENT)
