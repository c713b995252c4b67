"""Reloads and upgrades under load: the harness behind ``make reload`` and its test.

echod runs with ``--config`` and two workers; echod-bench holds persistent
request/response connections and, beside it, a churn of connect-echo-close, every byte
checked; the supervisor is sent SIGHUPs (each waited for until its "reload done" line)
and then SIGUSR2s (each waited for until the new echod serves), and the load ends by
itself. What it returns is what the note and ``docs/reload.md`` report.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.support import ROOT, Echod

RELOAD_DONE = re.compile(r"reload done: generation (\d+), \d+ workers ready in ([\d.]+)s")
UPGRADE_DONE = re.compile(r"upgrade done: the new echod \(pid (\d+)\) serves, ready in ([\d.]+)s")
STARTED = re.compile(r"worker (\d+) started \(pid (\d+)\) for generation (\d+)")
SIGNAL_TIMEOUT = 30.0


@dataclass
class Outcome:
    backend: str
    mode: str
    reloads: int = 0
    upgrades: int = 0
    ready_s: list[float] = field(default_factory=list)  # signal → every new worker ready
    rr: dict[str, Any] = field(default_factory=dict)  # echod-bench's JSON
    churn: dict[str, Any] = field(default_factory=dict)
    first_pids: set[int] = field(default_factory=set)
    last_pids: set[int] = field(default_factory=set)
    signal_window: tuple[float, float] = (0.0, 0.0)  # wall clock
    log: str = ""

    def errors(self) -> dict[str, int]:
        """Every error either load saw, by kind (refused, reset, closed, mismatch, lost...)."""
        total: dict[str, int] = {}
        for result in (self.rr, self.churn):
            for kind, count in result.get("errors", {}).items():
                total[kind] = total.get(kind, 0) + count
            unsent = result.get("unsent", 0)
            if unsent:
                total["unsent"] = total.get("unsent", 0) + unsent
        return total

    def p99_us(self, during: bool) -> int | None:
        """The persistent connections' worst per-second p99, during the signals or not."""
        start = self.rr.get("window", {}).get("start", 0.0)
        first, last = self.signal_window
        p99s = []
        for interval in self.rr.get("intervals", []):
            begin = start + interval["second"]
            inside = begin + interval["duration_s"] > first and begin < last
            if inside == during:
                p99s.append(interval["p99_us"])
        return max(p99s) if p99s else None


def bench(port: int, out: Path, *args: str) -> subprocess.Popen[bytes]:
    common = ["--processes", "1", "--no-progress", "--warmup", "0"]
    return subprocess.Popen(
        [sys.executable, "-m", "loadtest", "--port", str(port), "--json", str(out), *common, *args],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        cwd=ROOT,
    )


def run(
    backend: str,
    mode: str,
    *,
    reloads: int = 20,
    upgrades: int = 3,
    duration: float = 20.0,
    rr_connections: int = 20,
    churn_connections: int = 4,
) -> Outcome:
    """One run; the load lasts ``duration`` seconds, the signals start after one."""
    outcome = Outcome(backend, mode)
    with tempfile.TemporaryDirectory() as tmp:
        config = Path(tmp) / "echod.toml"
        # Long enough that no persistent client is cut: old workers drain until it ends.
        config.write_text(
            f'listen = ["127.0.0.1:0"]\nworkers = 2\nbackend = "{backend}"\n'
            f'listen_mode = "{mode}"\ngraceful_timeout = {duration + 30:g}\n'
        )
        server = Echod("--config", str(config))
        supervisor = server.pid
        try:
            server.wait_for("ready: 2 workers serving")
            rr_out, churn_out = Path(tmp) / "rr.json", Path(tmp) / "churn.json"
            loads = [
                bench(server.port, rr_out, "--connections", str(rr_connections),
                      "--duration", f"{duration:g}"),
                bench(server.port, churn_out, "--churn", "--connections",
                      str(churn_connections), "--duration", f"{duration:g}"),
            ]  # fmt: skip
            time.sleep(1.0)
            first = time.time()
            for number in range(reloads):
                mark = len(server.log)
                os.kill(supervisor, signal.SIGHUP)
                done = wait_after(server, RELOAD_DONE, mark)
                outcome.ready_s.append(float(done.group(2)))
                outcome.reloads += 1
                assert int(done.group(1)) >= number + 2
            for _ in range(upgrades):
                mark = len(server.log)
                os.kill(supervisor, signal.SIGUSR2)
                done = wait_after(server, UPGRADE_DONE, mark)
                supervisor = int(done.group(1))
                outcome.ready_s.append(float(done.group(2)))
                outcome.upgrades += 1
            outcome.signal_window = (first, time.time())
            for load in loads:
                _, stderr = load.communicate(timeout=duration + 60)
                assert load.returncode in (0, 1, 3, 4), stderr.decode(errors="replace")
            outcome.rr = json.loads(rr_out.read_text())
            outcome.churn = json.loads(churn_out.read_text())
        finally:
            stop_supervisor(supervisor)
            server.stop()
            outcome.log = server.log
    pids: dict[int, set[int]] = {}
    for match in STARTED.finditer(outcome.log):
        pids.setdefault(int(match.group(3)), set()).add(int(match.group(2)))
    outcome.first_pids = pids.get(1, set())
    outcome.last_pids = pids.get(max(pids), set()) if pids else set()
    return outcome


def wait_after(server: Echod, pattern: re.Pattern[str], mark: int) -> re.Match[str]:
    deadline = time.monotonic() + SIGNAL_TIMEOUT
    while time.monotonic() < deadline:
        match = pattern.search(server.log, mark)
        if match:
            return match
        time.sleep(0.01)
    raise AssertionError(f"no {pattern.pattern!r} after the signal; log:\n{server.log[mark:]}")


def stop_supervisor(pid: int) -> None:
    """SIGTERM to a supervisor that may not be our child (an upgrade's), then wait."""
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return
        try:
            with open(f"/proc/{pid}/stat") as stat:
                if stat.read().rsplit(")", 1)[1].split()[0] == "Z":
                    return  # exited; its parent reaps it
        except FileNotFoundError:
            return
        time.sleep(0.05)
    os.kill(pid, signal.SIGKILL)
    raise AssertionError(f"supervisor {pid} did not stop")
