"""Each fault, seen by a plain socket client; echod-bench names it; the command line.

Run on the backends that carry faults (the reactor's, asyncio and uvloop). Times are
only lower bounds where the fault promises one (a 200 ms delay is not under 150 ms);
nothing here asserts a speed.
"""

from __future__ import annotations

import contextlib
import json
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

import echod
from echod import backends, cli
from echod.faults import parse_fault

CARRIERS = [name for name in backends.available() if backends.carries_faults(name)]
PATTERN = bytes(range(256)) * 64  # 16 KiB: a dropped or moved byte shows where
WAIT = 10.0


def read_until_end(sock: socket.socket, want: int, timeout: float = WAIT) -> tuple[bytes, str]:
    """What arrives until ``want`` bytes, the end of input, a reset or silence."""
    sock.settimeout(timeout)
    received = bytearray()
    while len(received) < want:
        try:
            chunk = sock.recv(65536)
        except ConnectionResetError:
            return bytes(received), "reset"
        except TimeoutError:
            return bytes(received), "silent"
        if not chunk:
            return bytes(received), "end"
        received += chunk
    return bytes(received), "complete"


@pytest.fixture(params=CARRIERS)
def backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def send_until_reset(sock: socket.socket, data: bytes) -> None:
    """sendall, where a reset that comes first is left for the reads to find."""
    with contextlib.suppress(ConnectionResetError, BrokenPipeError):
        sock.sendall(data)


def test_a_reset_is_seen(backend: str) -> None:
    with echod.running(backend=backend, faults=["reset-after:1000"]) as server:
        with socket.create_connection(server.address) as client:
            send_until_reset(client, PATTERN)
            received, how = read_until_end(client, len(PATTERN))
        assert how == "reset"
        assert PATTERN.startswith(received) and len(received) <= 1000


def test_a_stall_is_seen_and_the_server_still_closes_it(backend: str) -> None:
    with echod.running(backend=backend, faults=["stall-after:4KiB"]) as server:
        client = socket.create_connection(server.address)
        client.sendall(PATTERN)
        assert read_until_end(client, 4096) == (PATTERN[:4096], "complete")
        assert read_until_end(client, 1, timeout=0.5) == (b"", "silent")
        client.sendall(b"more is read and thrown away")
    # The server's close: a stalled connection owes nothing, so the drain ends it.
    with client:
        assert read_until_end(client, 1) == (b"", "end")


def test_a_dropped_byte_is_a_mismatch(backend: str) -> None:
    with echod.running(backend=backend, faults=["drop-byte:1000"]) as server:
        with socket.create_connection(server.address) as client:
            client.sendall(PATTERN)
            client.shutdown(socket.SHUT_WR)
            received, how = read_until_end(client, len(PATTERN))
        assert how == "end"
        assert received == PATTERN[:1000] + PATTERN[1001:]


def test_close_after_ends_the_stream_after_that_many_bytes(backend: str) -> None:
    with (
        echod.running(backend=backend, faults=["close-after:3"]) as server,
        socket.create_connection(server.address) as client,
    ):
        client.sendall(b"abc")
        assert read_until_end(client, 10) == (b"abc", "end")


def test_delay_holds_every_echo(backend: str) -> None:
    with (
        echod.running(backend=backend, faults=["delay:200ms"]) as server,
        socket.create_connection(server.address) as client,
    ):
        for message in (b"first", b"second"):
            sent = time.monotonic()
            client.sendall(message)
            assert read_until_end(client, len(message)) == (message, "complete")
            assert time.monotonic() - sent >= 0.15


def test_bandwidth_spreads_the_echo_but_loses_nothing(backend: str) -> None:
    with (
        echod.running(backend=backend, faults=["bandwidth:64KiB/s"]) as server,
        socket.create_connection(server.address) as client,
    ):
        sent = time.monotonic()
        client.sendall(PATTERN * 2)  # 32 KiB: half a second at 64 KiB/s
        assert read_until_end(client, len(PATTERN) * 2) == (PATTERN * 2, "complete")
        assert time.monotonic() - sent >= 0.3


def test_every_strikes_only_its_share_of_connections(backend: str) -> None:
    with echod.running(backend=backend, faults=["reset-after:10"], every=2) as server:
        outcomes = []
        for _ in range(4):
            with socket.create_connection(server.address) as client:
                send_until_reset(client, b"x" * 100)
                outcomes.append(read_until_end(client, 100)[1])
    assert outcomes == ["reset", "complete", "reset", "complete"]


@pytest.mark.parametrize(
    ("fault", "kind"),
    [
        ("reset-after:20000", "reset"),
        ("drop-byte:5000", "mismatch"),
        ("close-after:20000", "closed"),
        ("stall-after:20000", "timeout"),
    ],
)
def test_echod_bench_names_the_fault(tmp_path: Path, fault: str, kind: str) -> None:
    """One connection, a short run: the generator reports the matching error kind."""
    with echod.running(backend="epoll", faults=[fault]) as server:
        out = tmp_path / "figures.json"
        run = subprocess.run(
            [sys.executable, "-m", "loadtest", "--json", str(out), "--port", str(server.port),
             "--connections", "1", "--size", "100", "--duration", "1", "--warmup", "0.2",
             "--processes", "1", "--timeout", "0.5"],
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip
    figures = json.loads(out.read_text())
    assert kind in figures["errors"], (figures["errors"], run.stdout, run.stderr)
    assert run.returncode != 0, run.stdout


def test_the_command_line_warns_loudly_and_refuses_bad_specs() -> None:
    bad = subprocess.run(
        [sys.executable, "-m", "echod", "--fault", "reset-after:lots", "--port", "0"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert bad.returncode == 2
    assert bad.stderr.count("\n") == 1 and "not a size" in bad.stderr
    refused = subprocess.run(
        [sys.executable, "-m", "echod", "--fault", "delay:1s", "--backend", "threads", "--port", "0"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert refused.returncode == 2
    assert "cannot inject faults" in refused.stderr and refused.stderr.count("\n") == 1
    proc = subprocess.Popen(
        [sys.executable, "-m", "echod", "--fault", "delay:10ms", "--fault", "drop-byte:3",
         "--fault-every", "2", "--listen", "127.0.0.1:0"],
        stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert proc.stderr is not None
        lines = []
        for line in proc.stderr:
            lines.append(line)
            if "listening on" in line:
                break
        warning = next(line for line in lines if "FAULTS ON" in line)
        assert "delay:10ms, drop-byte:3 on the first of every 2 connections" in warning
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def test_a_reload_onto_a_backend_that_cannot_carry_faults_is_refused() -> None:
    """SIGHUP re-reads the settings through cli.reread: the supervisor refuses what it
    raises, and serves on (tests/control covers that path)."""
    with pytest.raises(backends.BackendUnavailable, match="cannot inject faults"):
        cli.reread(["--fault", "delay:1s", "--backend", "gevent"])
    assert cli.reread(["--fault", "delay:1s", "--backend", "poll"]).fault == (
        parse_fault("delay:1s"),
    )


def test_a_close_waits_for_echo_held_by_a_delay(backend: str) -> None:
    """Held echo is owed echo: the drain lets it go out before closing."""
    with echod.running(backend=backend, faults=["delay:300ms"]) as server:
        client = socket.create_connection(server.address)
        client.sendall(b"owed")
        assert wait_until(lambda: server.stats().bytes_in == 4)
    with client:
        assert read_until_end(client, 5) == (b"owed", "end")


def wait_until(condition: Callable[[], bool]) -> bool:
    deadline = time.monotonic() + WAIT
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.01)
    return False
