"""The generator against real sockets: a clean run, and each fault seen and reported."""

from __future__ import annotations

import re
import socket
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
from loadtest_servers import EchoServer, run_bench

SHORT = ("--duration", "1", "--warmup", "0.2", "--processes", "1")


@pytest.mark.parametrize(
    "workload",
    [
        ("--size", "64"),
        ("--size", "3000", "--pipeline", "4"),
        ("--workload", "stream", "--size", "20000", "--pipeline", "2"),
        ("--churn",),
        ("--rate", "500"),
    ],
    ids=["rr", "pipelined", "stream", "churn", "rate"],
)
def test_correct_server_gives_a_clean_run(
    toy_echo_server: EchoServer, tmp_path: Path, workload: tuple[str, ...], loop: str
) -> None:
    run = run_bench(
        tmp_path, "--port", str(toy_echo_server.port), "--connections", "8", *SHORT, *workload
    )
    assert run.status == 0, run.stderr
    figures = run.figures
    # Only closed-loop rr runs in C; every other workload stays on the Python loop.
    rr = "--workload" not in workload and "--churn" not in workload and "--rate" not in workload
    assert figures["loop"] == (loop if rr else "epoll")
    assert figures["errors"] == {}
    assert figures["messages"] > 0
    assert figures["bytes_echoed"] >= figures["messages"] * figures["parameters"]["size"]
    if "stream" not in workload:
        assert figures["latency_us"]["count"] == figures["messages"]
        assert (
            0
            < figures["latency_us"]["p50"]
            <= figures["latency_us"]["p99"]
            <= figures["latency_us"]["max"]
        )
    assert figures["connect_us"]["count"] > 0


@pytest.mark.usefixtures("loop")
def test_idle_connections_are_held_and_watched(toy_echo_server: EchoServer, tmp_path: Path) -> None:
    run = run_bench(
        tmp_path,
        "--port",
        str(toy_echo_server.port),
        "--connections",
        "30",
        "--active",
        "3",
        *SHORT,
    )
    assert run.status == 0, run.stderr
    assert run.figures["connections"] == {"requested": 30, "active": 3, "established": 30}
    assert run.figures["messages"] > 0


@pytest.mark.usefixtures("loop")
def test_two_processes_merge_their_histograms(toy_echo_server: EchoServer, tmp_path: Path) -> None:
    run = run_bench(
        tmp_path,
        "--port",
        str(toy_echo_server.port),
        "--connections",
        "6",
        "--duration",
        "1",
        "--warmup",
        "0",
        "--processes",
        "2",
    )
    assert run.status == 0, run.stderr
    assert [w["connections"] for w in run.figures["workers"]] == [3, 3]
    assert run.figures["latency_us"]["count"] == run.figures["messages"]


@pytest.mark.parametrize("faulty_server", ["corrupt"], indirect=True)
@pytest.mark.usefixtures("loop")
def test_corrupted_byte_is_a_mismatch_and_exit_3(faulty_server: EchoServer, tmp_path: Path) -> None:
    run = run_bench(
        tmp_path, "--port", str(faulty_server.port), "--connections", "4", "--size", "100", *SHORT
    )
    assert run.status == 3
    assert run.figures["errors"].get("mismatch", 0) >= 4
    assert "mismatch" in run.stdout


@pytest.mark.parametrize("faulty_server", ["drop"], indirect=True)
@pytest.mark.usefixtures("loop")
def test_dropped_connection_is_counted_and_exit_1(
    faulty_server: EchoServer, tmp_path: Path
) -> None:
    run = run_bench(
        tmp_path, "--port", str(faulty_server.port), "--connections", "4", "--size", "100", *SHORT
    )
    assert run.status == 1
    assert run.figures["errors"].get("closed", 0) >= 4
    assert "mismatch" not in run.figures["errors"]


@pytest.mark.parametrize("faulty_server", ["stall"], indirect=True)
@pytest.mark.usefixtures("loop")
def test_stalled_server_shows_timeouts_and_the_run_ends_on_time(
    faulty_server: EchoServer, tmp_path: Path
) -> None:
    began = time.monotonic()
    run = run_bench(
        tmp_path, "--port", str(faulty_server.port), "--connections", "4", "--size", "100",
        "--timeout", "0.3", "--duration", "1.5", "--warmup", "0", "--processes", "1",
    )  # fmt: skip
    # Window plus at most --timeout of drain; the wide margin is for a loaded machine.
    assert time.monotonic() - began < 1.5 + 0.3 + 15
    assert 1.4 <= run.figures["window_s"] < 2.0
    # Stalls in the window are timeouts (and reconnect); the ones still stalled when
    # the window ends are lost once the drain has waited --timeout for them.
    assert run.status == 4, run.stdout
    assert run.figures["errors"].get("timeout", 0) >= 4
    assert run.figures["errors"].get("lost", 0) >= 1
    assert set(run.figures["errors"]) == {"timeout", "lost"}


def test_refused_address_is_one_line_and_exit_2(tmp_path: Path) -> None:
    began = time.monotonic()
    # Bound and never listening, and held for the run: connecting is refused, and no
    # other program can take the port meanwhile.
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
        run = run_bench(tmp_path, "--port", str(port), "--connect-timeout", "2", *SHORT)
    assert time.monotonic() - began < 10
    assert run.status == 2
    assert run.stderr.count("\n") == 1 and "refused" in run.stderr.lower()
    assert "Traceback" not in run.stderr
    assert run.figures == {}


def test_connections_beyond_the_hard_limit_are_refused_plainly(
    toy_echo_server: EchoServer, tmp_path: Path
) -> None:
    import resource

    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    if hard == resource.RLIM_INFINITY or hard > 1_000_000:
        pytest.skip("no finite hard limit on open files here")
    run = run_bench(
        tmp_path, "--port", str(toy_echo_server.port), "--connections", str(hard + 10), *SHORT
    )
    assert run.status == 2
    assert "hard limit" in run.stderr and "Traceback" not in run.stderr


def test_server_pid_gives_cpu_per_message(tmp_path: Path) -> None:
    """Samples a real echod subprocess: its pid, its CPU, its memory, nobody else's."""
    server = subprocess.Popen(
        [sys.executable, "-m", "echod", "--port", "0", "--backend", "epoll"],
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert server.stderr is not None
        port = None
        deadline = time.monotonic() + 20
        while port is None and time.monotonic() < deadline:
            line = server.stderr.readline()
            match = re.search(r"listening on 127\.0\.0\.1:(\d+)", line)
            if match:
                port = match.group(1)
        assert port is not None, "echod did not say where it listens"
        watched = psutil.Process(server.pid)
        before = sum(watched.cpu_times()[:2])
        run = run_bench(
            tmp_path, "--port", port, "--connections", "4", "--server-pid", str(server.pid), *SHORT
        )
        spent = sum(watched.cpu_times()[:2]) - before
    finally:
        server.terminate()
        server.wait(timeout=30)
    assert run.status == 0, run.stderr
    figures = run.figures
    sampled = figures["server"]
    assert sampled["pid"] == server.pid and sampled["processes"] == 1
    # The 1 s window is most of the 1.2 s echod spent serving the run (the drain
    # and the sampling period make up the rest): the sampled CPU is echod's.
    assert 0.5 * spent <= sampled["cpu_s"] <= spent + 0.05, (sampled, spent)
    assert 0.5 < sampled["cpu_us_per_msg"] < 1000
    assert sampled["rss_peak_bytes"] > 5_000_000


def test_console_script_writes_the_json(toy_echo_server: EchoServer, tmp_path: Path) -> None:
    script = Path(sys.executable).with_name("echod-bench")
    if not script.exists():
        pytest.skip("echod-bench console script is not installed in this environment")
    out = tmp_path / "smoke.json"
    proc = subprocess.run(
        [str(script), "--port", str(toy_echo_server.port), "--connections", "2", "--duration", "1",
         "--warmup", "0", "--processes", "1", "--json", str(out)],
        capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert "requests/s" in proc.stdout
    import json

    figures = json.loads(out.read_text())
    for key in (
        "generator",
        "parameters",
        "environment",
        "requests_per_s",
        "mb_per_s",
        "latency_us",
        "errors",
        "workers",
    ):
        assert key in figures
    assert figures["environment"]["python"] and figures["environment"]["kernel"]
    assert set(figures["latency_us"]) >= {"p50", "p90", "p99", "p99.9", "max"}
    assert 0.9 <= figures["window_s"] <= 1.5
