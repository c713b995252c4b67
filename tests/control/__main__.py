"""``make reload``: reloads and upgrades under load on each backend and listen mode.

Writes the table into docs/control.md between its markers and prints it; exits 1 if
any run saw an error.
"""

from __future__ import annotations

import os
import statistics
import sys
import time

from tests.control import under_load
from tests.support import ROOT

BACKENDS = ("epoll", "uvloop", "threads", "uring")
MODES = ("reuseport", "shared")
DOC = ROOT / "docs" / "control.md"
START, END = "<!-- reload-table -->", "<!-- /reload-table -->"


def row(outcome: under_load.Outcome) -> str:
    errors = outcome.errors()
    shown = ", ".join(f"{kind} {n}" for kind, n in sorted(errors.items())) or "none"
    ready = sorted(outcome.ready_s)
    steady, during = outcome.p99_us(during=False), outcome.p99_us(during=True)
    served = outcome.rr.get("bytes_echoed", 0) + outcome.churn.get("bytes_echoed", 0)
    return (
        f"| {outcome.backend} | {outcome.mode} | {outcome.reloads} + {outcome.upgrades} "
        f"| {outcome.rr.get('messages', 0):,} | {outcome.churn.get('messages', 0):,} "
        f"| {served / 1e6:.1f} MB | {shown} "
        f"| {statistics.median(ready) * 1e3:.0f} / {ready[-1] * 1e3:.0f} ms "
        f"| {steady or 0:,} / {during or 0:,} µs |"
    )


def main() -> int:
    rows, failed = [], False
    for backend in BACKENDS:
        for mode in MODES:
            outcome = under_load.run(backend, mode)
            failed |= bool(outcome.errors()) or bool(outcome.first_pids & outcome.last_pids)
            rows.append(row(outcome))
            print(rows[-1], flush=True)
    table = "\n".join(
        [
            f"Run of {time.strftime('%Y-%m-%d %H:%M', time.gmtime())} UTC on "
            f"{os.cpu_count()} CPUs (reloads + upgrades; rr messages over 20 "
            "persistent connections; churn connections; bytes echoed; errors of every kind "
            "echod-bench counts — refused, reset, closed, mismatch, lost; signal to every "
            "new worker ready, median / max; the persistent connections' worst per-second "
            "p99 outside / during the signals):",
            "",
            "| backend | mode | signals | rr messages | churn conns | bytes | errors "
            "| ready (median / max) | p99 steady / during |",
            "|---|---|---|---|---|---|---|---|---|",
            *rows,
        ]
    )
    text = DOC.read_text()
    head, rest = text.split(START, 1)
    DOC.write_text(f"{head}{START}\n{table}\n{END}{rest.split(END, 1)[1]}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
