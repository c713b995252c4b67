"""What admission costs a churning connection, in interpreter instructions:
``python -m bench.admission_cost [SECONDS]``.

Per-connection costs of a few microseconds drown in a shared machine's noise, so they
are counted, not timed: echod (epoll) runs under valgrind's callgrind while echod-bench
churns (connect, echo 64 B, close), once for a short run and once for a long one, and
the difference in instructions over the difference in connections is what one more
connection costs, start-up and stop cancelled out. Three settings, the same churn:

* ``bare``: fair share off, no limit: the accept path alone;
* ``default``: fair share on (the default), which keeps every held connection's source;
* ``limits``: the default plus ``--max-connections-per-source`` and
  ``--connect-rate-per-source``, set high enough never to refuse.
"""

from __future__ import annotations

import re
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

from bench.syscalls import wait_port

SETTINGS = {
    "bare": ["--fair-share", "off"],
    "default": [],
    "limits": ["--max-connections-per-source", "100000", "--connect-rate-per-source",
               "1000000", "--connect-burst-per-source", "1"],
}  # fmt: skip
SHORT = 2.0
TOTAL = re.compile(r"stopped: connections open=\d+ total=(\d+)")


def run(settings: list[str], seconds: float) -> tuple[int, int]:
    """(instructions, connections served) of one echod under callgrind."""
    with tempfile.TemporaryDirectory() as scratch:
        out, log = Path(scratch) / "callgrind.out", Path(scratch) / "server.log"
        with log.open("wb") as sink:
            server = subprocess.Popen(
                ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}",
                 sys.executable, "-m", "echod", "--backend", "epoll", "--port", "0",
                 *settings],
                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=sink,
            )  # fmt: skip
        port = wait_port(log, server)
        subprocess.run(
            [sys.executable, "-m", "loadtest", "--port", str(port), "--workload", "churn",
             "--connections", "8", "--size", "64", "--duration", f"{seconds:g}",
             "--warmup", "0", "--no-progress"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=seconds + 120,
        )  # fmt: skip
        server.send_signal(signal.SIGTERM)  # valgrind runs python in this very process
        server.wait(300)
        served = TOTAL.search(log.read_text(errors="replace"))
        summary = re.search(r"^summary: (\d+)", out.read_text(), re.M)
        assert served and summary, log.read_text(errors="replace")[-2000:]
        return int(summary.group(1)), int(served.group(1))


def per_connection(settings: list[str], seconds: float) -> tuple[int, int]:
    """(instructions per connection, connections in the difference)."""
    short_ir, short_n = run(settings, SHORT)
    long_ir, long_n = run(settings, seconds)
    more = long_n - short_n
    assert more > 0, (short_n, long_n)
    return round((long_ir - short_ir) / more), more


def main(argv: list[str]) -> int:
    seconds = float(argv[0]) if argv else 8.0
    print("| settings | instructions per connection | over connections |")
    print("|---|---|---|")
    for name, settings in SETTINGS.items():
        cost, count = per_connection(settings, seconds)
        print(f"| {name} | {cost:,} | {count:,} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
