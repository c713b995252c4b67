"""The metrics example of docs/metrics.md: ``python docs/examples/metrics.py`` prints it.

Starts ``echod --port 0 --workers 2 --metrics 127.0.0.1:0``, has 50 clients echo 40,000
bytes each, scrapes (as Prometheus would), kills worker 1 with SIGKILL, opens 5 idle connections once it is replaced,
scrapes and prints the samples (comments dropped, the process series cut to one line).
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor


def wait_for(log: list[str], stderr: object, pattern: str) -> re.Match[str]:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        for line in log:
            if match := re.search(pattern, line):
                return match
        line = stderr.readline()  # type: ignore[attr-defined]
        if not line:
            break
        log.append(line)
    sys.exit(f"echod never logged {pattern!r}:\n{''.join(log)}")


def echo(port: int) -> None:
    payload = os.urandom(40_000)
    with socket.create_connection(("127.0.0.1", port)) as sock:
        sock.sendall(payload)
        got = bytearray()
        while len(got) < len(payload):
            got += sock.recv(65536)
        assert got == payload


def scrape(url: str) -> str:
    with urllib.request.urlopen(url, timeout=10) as response:
        return str(response.read().decode())


def main() -> None:
    argv = [sys.executable, "-m", "echod", "--port", "0", "--workers", "2"]
    proc = subprocess.Popen([*argv, "--metrics", "127.0.0.1:0"], stderr=subprocess.PIPE, text=True)
    log: list[str] = []
    try:
        url = wait_for(log, proc.stderr, r"metrics on (http://\S+)").group(1)
        port = int(wait_for(log, proc.stderr, r"listening on 127\.0\.0\.1:(\d+)").group(1))
        wait_for(log, proc.stderr, r"ready: 2 workers serving")
        with ThreadPoolExecutor(50) as pool:
            list(pool.map(echo, [port] * 50))
        scrape(url)  # as Prometheus would have: what worker 1 counted is collected
        first = int(wait_for(log, proc.stderr, r"worker 1 started \(pid (\d+)\)").group(1))
        os.kill(first, signal.SIGKILL)
        log.clear()
        wait_for(log, proc.stderr, r"worker 1 started")
        wait_for(log, proc.stderr, r"worker 1: listening on")
        idle = [socket.create_connection(("127.0.0.1", port)) for _ in range(5)]
        time.sleep(0.5)  # the kernel hands them to the workers' accept queues
        text = scrape(url)
        for sock in idle:
            sock.close()
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(30)
    lines = [line for line in text.splitlines() if line and not line.startswith("#")]
    echod = [line for line in lines if line.startswith("echod_") and "udp" not in line]
    left_out = ("accept_", "flow_", "idle_", "worker_cpu", "worker_resident", "worker_open")
    shown = [line for line in echod if not line.startswith(tuple(f"echod_{n}" for n in left_out))]
    cpu = next(line for line in lines if line.startswith("process_cpu_seconds_total"))
    print("\n".join([*shown, "...", re.sub(r"(\d+\.\d)\d*", r"\1", cpu)]))


if __name__ == "__main__":
    main()
