"""echod-bench as a user meets it: the live line, --json checked before the run,
a server that refuses every connection, --version."""

from __future__ import annotations

import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from loadtest import __version__
from loadtest.cli import Progress


def bench(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "loadtest", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def test_the_progress_rate_is_measured_between_ticks_not_between_shows() -> None:
    progress = Progress(True, 2)
    progress.show(-0.03)  # drawn before the start, on a quiet queue
    assert progress.line(-0.03).split()[0] == "0.0"
    progress.update(0, 0, 0, at=100.0)
    progress.update(1, 0, 0, at=100.2)
    progress.update(0, 5_000, 0, at=100.5)  # 10,000 msg/s
    progress.show(0.5)
    progress.update(1, 1_500, 2, at=100.7)  # 3,000 msg/s
    # However often the line is drawn in between (queue time-outs, worker 0's ticks),
    # it shows the sum of each worker's rate over its own ticks.
    for elapsed in (0.71, 0.72, 1.5):
        assert progress.line(elapsed).split()[2] == "13,000", progress.line(elapsed)
    assert progress.line(1.5).endswith("errors 2")


def test_an_unwritable_json_path_fails_before_the_run(tmp_path: Path) -> None:
    started = time.monotonic()
    result = bench(
        "--no-progress",
        "--port",
        "9",
        "--duration",
        "30",
        "--json",
        str(tmp_path / "no" / "x.json"),
    )
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        f"echod-bench: error: --json {tmp_path}/no/x.json: no such directory {tmp_path}/no"
    ]
    assert time.monotonic() - started < 20  # not the 30 s run, nor a connect attempt
    result = bench("merge", "a.json", "--json", str(tmp_path))
    assert result.returncode == 2
    assert result.stderr.strip() == f"echod-bench merge: error: --json {tmp_path}: is a directory"


@contextmanager
def closing_server() -> Iterator[int]:
    """Accepts every connection and closes it at once."""
    listener = socket.create_server(("127.0.0.1", 0), backlog=512)
    done = threading.Event()

    def serve() -> None:
        while not done.is_set():
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            conn.close()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield listener.getsockname()[1]
    finally:
        done.set()
        listener.close()
        thread.join(5)


@pytest.mark.parametrize("workload", [("--size", "64"), ("--churn",)])
def test_a_server_closing_every_connection_ends_the_run_early(workload: tuple[str, ...]) -> None:
    with closing_server() as port:
        started = time.monotonic()
        result = bench(
            "--no-progress", "--port", str(port), "--connections", "10", "--processes", "1",
            "--duration", "30", *workload,
        )  # fmt: skip
        took = time.monotonic() - started
    assert result.returncode == 1, result.stderr
    line = result.stderr.strip()
    assert line.startswith(
        "echod-bench: the server closed every connection before echoing a byte"
    ), line
    assert "closed" in line.split("(", 1)[1]
    assert took < 20  # ended early, not after the 30 s window


def test_version() -> None:
    result = bench("--version")
    assert result.returncode == 0
    assert result.stdout.strip() == f"echod-bench {__version__}"
