"""Stopping, limits and housekeeping behave the same on every backend."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import threading
import time

import pytest

from tests.support import Echod, echod, fill_until_stalled, round_trip, wait_until


def test_sigterm_during_a_16_mib_transfer_loses_no_byte_and_exits_0(backend: str) -> None:
    server = Echod("--backend", backend, "--port", "0")
    payload = os.urandom(16 << 20)
    received = bytearray()
    with server, server.connect() as sock:

        def read() -> None:
            while data := sock.recv(1 << 20):
                received.extend(data)

        reader = threading.Thread(target=read)
        reader.start()
        half = len(payload) // 2
        sock.sendall(payload[:half])
        server.signal(signal.SIGTERM)
        server.wait_for("stopping")
        sock.sendall(payload[half:])  # still being served while it drains
        sock.shutdown(socket.SHUT_WR)
        reader.join(30)
        assert server.proc.wait(30) == 0
    assert bytes(received) == payload
    assert "Traceback" not in server.log


def test_sigterm_with_idle_clients_closes_them_and_exits_0(backend: str) -> None:
    server = Echod("--backend", backend, "--port", "0", "--graceful-timeout", "20")
    with server:
        idle = [server.connect() for _ in range(5)]
        for sock in idle:
            assert round_trip(sock, b"ping") == b"ping"
        server.signal(signal.SIGTERM)
        assert server.proc.wait(15) == 0  # quiet clients do not hold the stop for 20 s
        for sock in idle:
            assert sock.recv(1) == b""
            sock.close()
    assert "Traceback" not in server.log


def test_graceful_timeout_bounds_a_client_that_keeps_talking(backend: str) -> None:
    server = Echod("--backend", backend, "--port", "0", "--graceful-timeout", "1")
    stop = threading.Event()
    with server, server.connect() as chatty:

        def talk() -> None:
            try:
                while not stop.is_set():
                    chatty.sendall(b"x" * 100)
                    chatty.recv(100)
                    time.sleep(0.01)
            except OSError:
                pass

        talker = threading.Thread(target=talk)
        talker.start()
        time.sleep(0.3)
        server.signal(signal.SIGTERM)
        status = server.proc.wait(15)
        stop.set()
        talker.join()
        assert status == 0
    assert "graceful timeout" in server.log


def test_second_sigint_exits_at_once(backend: str) -> None:
    server = Echod("--backend", backend, "--port", "0", "--graceful-timeout", "60")
    with server, server.connect() as busy:
        talking = threading.Event()
        threading.Thread(target=_chatter, args=(busy, talking), daemon=True).start()
        assert talking.wait(10)
        server.signal(signal.SIGINT)
        server.wait_for("stopping")
        server.signal(signal.SIGINT)
        assert server.proc.wait(10) == 0
    # The exit was the forced one: the busy client was cut, not drained (the drain would
    # have waited up to the 60 s graceful timeout for it).
    assert "second interrupt: closing 1 connection(s) now" in server.log, server.log
    assert "graceful timeout" not in server.log


def test_sigusr1_counts_every_connection_and_byte_and_serving_goes_on(backend: str) -> None:
    with echod("--backend", backend, "--port", "0") as server:
        clients = [server.connect() for _ in range(200)]
        payloads = [os.urandom(2048) for _ in clients]
        for sock, payload in zip(clients, payloads, strict=True):
            assert round_trip(sock, payload) == payload
        assert "connections open=200 total=200 " in server.report()
        for sock in clients:
            sock.close()
        # Counters kept by 200 callbacks, threads or greenlets add up once all are gone.
        line = server.report_until("connections open=0 ")
        total = 200 * 2048
        assert f"connections open=0 total=200 dropped=0 bytes in={total} out={total} " in line
        with server.connect() as sock:
            assert round_trip(sock, b"again") == b"again"


def test_report_signals_during_the_stop_never_cost_the_exit_status(backend: str) -> None:
    """SIGUSR1/SIGUSR2 may come at any moment (a supervisor asks before each scrape),
    also after the loop has closed: their default action would kill the process before
    its final tally."""
    for _ in range(5):
        server = Echod("--backend", backend, "--port", "0")
        server.signal(signal.SIGTERM)
        while server.proc.poll() is None:
            for signum in (signal.SIGUSR1, signal.SIGUSR2):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(server.pid, signum)
            time.sleep(0.0005)
        assert server.stop() == 0, server.log
        assert "stopped:" in server.log


def test_sigterm_closes_the_listener_at_once(backend: str) -> None:
    with echod("--backend", backend, "--port", "0") as server, server.connect() as quiet:
        assert round_trip(quiet, b"before") == b"before"
        server.signal(signal.SIGTERM)
        server.wait_for(r"stopping: 1 connection\(s\) open")
        # Refused, not queued: the listener is closed (3 s is slack for a loaded machine).
        assert _refused_within(server.host, server.port, seconds=3.0)
        # Quiet with nothing pending: closed by the server's drain, not by the test.
        quiet.settimeout(5)
        assert quiet.recv(1) == b""
        assert server.proc.wait(10) == 0


def _refused_within(host: str, port: int, seconds: float) -> bool:
    """True once connecting is refused: the listener is closed, not merely paused."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            socket.create_connection((host, port), timeout=1).close()
        except ConnectionRefusedError:
            return True
        except ConnectionResetError:
            pass  # caught in the backlog as the listener closed: reset, as it should be
        time.sleep(0.02)
    return False


def test_graceful_timeout_cuts_a_client_whose_echo_still_waits(backend: str) -> None:
    args = ("--backend", backend, "--port", "0", "--graceful-timeout", "2")
    with echod(*args) as server, server.connect() as hog:
        fill_until_stalled(hog, limit=64 << 20)
        began = time.monotonic()
        server.signal(signal.SIGTERM)
        # Its echo is pending, so the quiet sweep (1 s) must leave it to the timeout (2 s).
        server.wait_for(r"graceful timeout: closing 1 connection\(s\)", timeout=10)
        assert time.monotonic() - began >= 1.8
        assert server.proc.wait(10) == 0


def test_idle_timeout_closes_a_silent_client_but_not_a_talking_one(backend: str) -> None:
    # Margin, not a marker: a 1.5 s timeout against pings every 0.1 s leaves a busy
    # machine 1.4 s of stall (it had 0.4 s with 0.5 s), and talking for 2.5 s still
    # outlasts the timeout, so a timer that is never reset closes the talker.
    args = ("--backend", backend, "--port", "0", "--idle-timeout", "1.5")
    with echod(*args) as server, server.connect() as silent, server.connect() as talking:
        deadline = time.monotonic() + 2.5
        while time.monotonic() < deadline:
            assert round_trip(talking, b"ok") == b"ok"
            time.sleep(0.1)
        silent.settimeout(5)
        assert silent.recv(1) == b""  # closed by the server
        assert round_trip(talking, b"still") == b"still"


def test_max_connections_makes_new_clients_wait_in_the_backlog(backend: str) -> None:
    # Without fair share; with it (the default) a full echod accepts and decides:
    # tests/contract/test_fair_share.py.
    args = ("--max-connections", "2", "--fair-share", "off")
    with echod("--backend", backend, "--port", "0", *args) as server:
        first, second = server.connect(), server.connect()
        assert round_trip(first, b"1") == b"1"
        assert round_trip(second, b"2") == b"2"
        third = server.connect()  # the kernel completes the handshake; echod does not serve it
        third.sendall(b"3")
        third.settimeout(0.5)
        with pytest.raises(TimeoutError):
            third.recv(1)
        first.close()
        third.settimeout(5)
        assert third.recv(1) == b"3"
        second.close()
        third.close()


def _chatter(sock: socket.socket, talking: threading.Event | None = None) -> None:
    try:
        while True:
            sock.sendall(b"y" * 10)
            sock.recv(10)
            if talking is not None:
                talking.set()
    except OSError:
        pass


def test_descriptor_count_returns_to_baseline_after_churn(backend: str) -> None:
    with echod("--backend", backend, "--port", "0") as server:
        baseline = server.settled_fds()
        for _ in range(300):
            with server.connect() as sock:
                assert round_trip(sock, b"c") == b"c"
        assert wait_until(lambda: server.open_fds() == baseline)
