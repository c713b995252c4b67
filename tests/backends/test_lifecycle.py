"""Signals, the graceful stop and running out of descriptors, on a real echod process."""

from __future__ import annotations

import os
import resource
import signal
import socket
import threading
import time
from collections.abc import Callable

from tests.backends.conftest import Server, echo, fill_until_stalled, round_trip
from tests.support import wait_until

Start = Callable[..., Server]


def test_sigterm_stops_accepting_and_exits_zero_once_clients_are_quiet(start: Start) -> None:
    server = start()
    with server.connect() as quiet:
        assert round_trip(quiet, b"before") == b"before"
        server.signal(signal.SIGTERM)
        server.wait_for("stopping: 1 connection(s) open")
        assert _refused_within(server.port, seconds=1.0)
        # Quiet for DRAIN_QUIET with nothing pending: closed by the server, not the test.
        quiet.settimeout(5)
        assert quiet.recv(1) == b""
    assert server.wait(timeout=5) == 0
    server.wait_for("stopped: connections open=0 ")


def _refused_within(port: int, seconds: float) -> bool:
    """True once connecting is refused: the listener is closed, not merely paused."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
        except ConnectionRefusedError:
            return True
        except ConnectionResetError:
            pass  # caught in the backlog as the listener closed: reset, as it should be
        time.sleep(0.02)
    return False


def test_sigterm_lets_a_busy_client_finish_its_stream(start: Start) -> None:
    server = start()
    payload = os.urandom(4 << 20)
    with server.connect() as sock:
        result: list[bytes] = []
        # 64 KiB every 10 ms: about 0.7 s of traffic, never quiet long enough to be cut.
        streamer = threading.Thread(target=lambda: result.append(_slow_echo(sock, payload)))
        streamer.start()
        time.sleep(0.2)
        server.signal(signal.SIGTERM)
        streamer.join(timeout=20)
    assert result and result[0] == payload
    assert server.wait(timeout=5) == 0


def _slow_echo(sock: socket.socket, payload: bytes) -> bytes:
    def write() -> None:
        for start in range(0, len(payload), 65536):
            sock.sendall(payload[start : start + 65536])
            time.sleep(0.01)
        sock.shutdown(socket.SHUT_WR)

    writer = threading.Thread(target=write)
    writer.start()
    received = bytearray()
    while block := sock.recv(1 << 20):
        received += block
    writer.join()
    return bytes(received)


def test_graceful_timeout_cuts_a_client_whose_echo_still_waits(start: Start) -> None:
    server = start("--graceful-timeout", "2")
    with server.connect() as hog:
        fill_until_stalled(hog, limit=64 << 20)
        began = time.monotonic()
        server.signal(signal.SIGTERM)
        # Its echo is pending, so the quiet sweep (1 s) must leave it to the timeout (2 s).
        server.wait_for("graceful timeout: closing 1 connection(s)", timeout=6)
        assert time.monotonic() - began >= 1.8
        assert server.wait(timeout=5) == 0


def test_a_second_sigint_exits_at_once(start: Start) -> None:
    server = start("--graceful-timeout", "60")
    with server.connect() as hog:
        fill_until_stalled(hog, limit=64 << 20)
        server.signal(signal.SIGINT)
        server.wait_for("stopping: 1 connection(s) open")
        began = time.monotonic()
        server.signal(signal.SIGINT)
        assert server.wait(timeout=5) == 0
        assert time.monotonic() - began < 3
    assert "second interrupt" in server.log


def test_sigusr1_reports_the_counters_and_serving_goes_on(start: Start) -> None:
    server = start()
    with server.connect() as sock:
        assert echo(sock, b"x" * 1000) == b"x" * 1000
    line = server.report_until("connections open=0 ")
    assert "total=1 " in line and "bytes in=1000 out=1000 " in line
    with server.connect() as sock:
        assert round_trip(sock, b"again") == b"again"


def _open_file_limit(limit: int) -> Callable[[], None]:
    def limit_files() -> None:  # in the child: soft and hard, so echod cannot raise it
        resource.setrlimit(resource.RLIMIT_NOFILE, (limit, limit))

    return limit_files


def test_out_of_descriptors_clients_wait_without_a_busy_loop(start: Start) -> None:
    server = start("--max-connections", "500", preexec_fn=_open_file_limit(60))
    clients: list[socket.socket] = []
    try:
        # Far more clients than descriptors: the rest wait in the backlog.
        for _ in range(80):
            clients.append(server.connect())
        server.wait_for("Too many open files", timeout=5)
        cpu = server.cpu_seconds()
        time.sleep(1.5)
        assert server.cpu_seconds() - cpu < 0.5, "accept loop spins while out of descriptors"
        served = clients[0]
        assert round_trip(served, b"served") == b"served"
        for sock in clients[:30]:
            sock.close()
        # Clients that waited were shed with the spare descriptor (as on every backend);
        # once descriptors free up a new one is served.
        assert wait_until(lambda: _echoed_fresh(server), timeout=5)
    finally:
        for sock in clients:
            sock.close()


def _echoed_fresh(server: Server) -> bool:
    try:
        with server.connect() as sock:
            sock.settimeout(2)
            return round_trip(sock, b"w") == b"w"
    except OSError:
        return False


def test_threads_without_a_cap_say_which_cap_they_keep() -> None:
    server = Server(["--backend", "threads"])
    try:
        server.wait_for("threads backend: at most 10000 connections at once")
    finally:
        server.stop()
