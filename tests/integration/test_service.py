"""The real echod under a stand-in service manager, on every backend.

A datagram socket bound in tmp_path plays systemd's notify socket; the real
``systemd-socket-activate`` plays the socket unit. With ``--workers 2`` the supervisor
must do all the talking while the workers serve the inherited sockets.
"""

from __future__ import annotations

import itertools
import signal
import socket
import statistics
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from echod import backends
from tests.support import (
    LISTENING,
    Echod,
    exchange,
    require_ipv6,
    require_tool,
    start_on_a_free_port,
    wait_until,
)

BACKENDS = backends.available()
WATCHDOG_USEC = 400_000


class NotifySocket:
    """A stand-in for systemd's notify socket: every datagram, with when it came."""

    def __init__(self, path: Path) -> None:
        self.path = str(path)
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(self.path)
        self.sock.settimeout(0.1)
        self.messages: list[tuple[float, dict[str, str]]] = []
        self._changed = threading.Condition()
        self._closed = False
        self._reader = threading.Thread(target=self._collect, daemon=True)
        self._reader.start()

    def _collect(self) -> None:
        while not self._closed:
            try:
                data = self.sock.recv(4096)
            except TimeoutError:
                continue
            except OSError:
                return
            fields = dict(line.split("=", 1) for line in data.decode().splitlines())
            with self._changed:
                self.messages.append((time.monotonic(), fields))
                self._changed.notify_all()

    def wait_for(self, key: str, value: str | None = None, timeout: float = 20.0) -> dict[str, str]:
        deadline = time.monotonic() + timeout
        with self._changed:
            while True:
                for _, fields in self.messages:
                    if key in fields and (value is None or fields[key] == value):
                        return fields
                remaining = deadline - time.monotonic()
                assert remaining > 0, f"no {key}={value} among {self.messages}"
                self._changed.wait(remaining)

    def after(self, message: dict[str, str]) -> dict[str, str]:
        """Every field sent after ``message``, later values winning."""
        with self._changed:
            fields = [m for _, m in self.messages]
        merged: dict[str, str] = {}
        for later in fields[fields.index(message) + 1 :]:
            merged.update(later)
        return merged

    def times(self, key: str) -> list[float]:
        with self._changed:
            return [when for when, fields in self.messages if key in fields]

    def close(self) -> None:
        self._closed = True
        self._reader.join(2)
        self.sock.close()


@pytest.fixture
def notify(tmp_path: Path) -> Iterator[NotifySocket]:
    listener = NotifySocket(tmp_path / "notify")
    yield listener
    listener.close()


def managed(notify: NotifySocket, backend: str, workers: str, **env: str) -> tuple[Echod, int]:
    """echod as a unit with Type=notify starts it: it talks to ``notify``. Port 0, read
    back from the log: a port chosen here and bound later could be taken in between."""
    server = Echod(
        "--backend",
        backend,
        "--port",
        "0",
        "--workers",
        workers,
        env={"NOTIFY_SOCKET": notify.path, **env},
        wait=False,
    )
    return server, int(server.wait_for(LISTENING).group(2))


def socket_activate() -> str:
    return require_tool("systemd-socket-activate")


def echo_once(host: str, port: int, message: bytes) -> bytes:
    with socket.create_connection((host, port), timeout=10) as sock:
        return exchange(sock, message)


def first_echo(host: str, port: int, message: bytes) -> bytes:
    """Echo through a socket the activation tool may not have bound yet."""
    deadline = time.monotonic() + 10
    while True:
        try:
            sock = socket.create_connection((host, port), timeout=10)
        except ConnectionRefusedError:
            assert time.monotonic() < deadline, "systemd-socket-activate never listened"
            time.sleep(0.05)
            continue
        with sock:
            return exchange(sock, message)


@pytest.mark.timing  # the 0.4 s WATCHDOG_USEC is what catches pings at the wrong interval
@pytest.mark.parametrize("workers", ["1", "2"])
@pytest.mark.parametrize("backend", BACKENDS)
def test_ready_status_watchdog_and_stopping(
    notify: NotifySocket, backend: str, workers: str
) -> None:
    server, port = managed(notify, backend, workers, WATCHDOG_USEC=str(WATCHDOG_USEC))
    with server:
        ready = notify.wait_for("READY", "1")
        # READY=1 means serving: the very next connection is echoed.
        assert echo_once("127.0.0.1", port, b"ready?") == b"ready?"
        assert "connections open=" in ready["STATUS"]
        if workers == "2":
            assert ready["MAINPID"] == str(server.pid)  # the supervisor, not a worker
            for worker in (1, 2):  # both serve (the log may trail the datagram a little)
                server.wait_for(f"worker {worker}: listening on 127.0.0.1:{port}")
            assert "per worker open/total: 1=" in notify.wait_for("STATUS", None)["STATUS"]
        assert wait_until(lambda: len(notify.times("WATCHDOG")) >= 6, timeout=10)
        pings = notify.times("WATCHDOG")
        gaps = [b - a for a, b in itertools.pairwise(pings)]
        assert len(gaps) >= 4, pings
        # Half of WATCHDOG_USEC, as sd_watchdog_enabled(3) advises.
        assert 0.1 <= statistics.median(gaps) <= 0.3, gaps
        assert max(gaps) < WATCHDOG_USEC / 1e6, gaps
        server.signal(signal.SIGTERM)
        notify.wait_for("STOPPING", "1")
        assert server.proc.wait(20) == 0, server.log
    assert "Traceback" not in server.log


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_reload_tells_systemd_reloading_then_ready_as_sd_notify_says(
    notify: NotifySocket, backend: str
) -> None:
    server, port = managed(notify, backend, "2")
    with server:
        notify.wait_for("READY", "1")
        server.signal(signal.SIGHUP)
        server.wait_for("reload done: generation 2")
        reloading = notify.wait_for("RELOADING", "1")
        # MONOTONIC_USEC: systemd 253's Type=notify-reload matches the answer by it.
        assert int(reloading["MONOTONIC_USEC"]) > 0
        assert wait_until(lambda: "READY" in notify.after(reloading)), notify.messages
        assert echo_once("127.0.0.1", port, b"after the reload") == b"after the reload"
        assert server.stop() == 0
    assert "Traceback" not in server.log


@pytest.mark.parametrize("backend", BACKENDS)
def test_reload_and_upgrade_without_a_supervisor_are_one_line_and_serving_goes_on(
    notify: NotifySocket, backend: str
) -> None:
    server, port = managed(notify, backend, "1")
    with server:
        notify.wait_for("READY", "1")
        for signum, what in ((signal.SIGHUP, "a reload"), (signal.SIGUSR2, "an upgrade")):
            server.signal(signum)
            server.wait_for(f"{what} \\(SIG\\w+\\) needs a supervisor")
            assert echo_once("127.0.0.1", port, b"still here") == b"still here"
        assert server.stop() == 0
    assert "Traceback" not in server.log


@pytest.mark.parametrize("workers", ["1", "2"])
@pytest.mark.parametrize("backend", BACKENDS)
def test_socket_activation_with_one_socket(backend: str, workers: str) -> None:
    tool = socket_activate()

    def start(port: int) -> Echod:
        wrapper = [tool, "-l", f"127.0.0.1:{port}", "-E", "PYTHONUNBUFFERED=1"]
        return Echod("--backend", backend, "--workers", workers, wrapper=wrapper, wait=False)

    server, port = start_on_a_free_port(start)
    with server:
        # The tool starts echod on the first connection; that connection must be served.
        assert first_echo("127.0.0.1", port, b"first") == b"first"
        server.wait_for(f"listening on 127.0.0.1:{port}")
        assert echo_once("127.0.0.1", port, b"second") == b"second"
        assert server.stop() == 0
    assert "Traceback" not in server.log


@pytest.mark.parametrize("workers", ["1", "2"])
@pytest.mark.parametrize("backend", BACKENDS)
def test_socket_activation_with_ipv4_and_ipv6_sockets(backend: str, workers: str) -> None:
    tool = socket_activate()
    require_ipv6()

    def start(port: int) -> Echod:
        wrapper = [tool, "-l", f"127.0.0.1:{port}", "-l", f"[::1]:{port}", "--fdname=a:b",
                   "-E", "PYTHONUNBUFFERED=1"]  # fmt: skip
        # --port would be ignored: the sockets come from the manager, not from the options.
        args = ("--backend", backend, "--workers", workers, "--port", "1")
        return Echod(*args, wrapper=wrapper, wait=False)

    server, port = start_on_a_free_port(start, listeners=2)
    with server:
        assert first_echo("127.0.0.1", port, b"v4") == b"v4"
        server.wait_for(f"listening on \\[::1\\]:{port}")
        assert echo_once("::1", port, b"v6") == b"v6"
        assert echo_once("127.0.0.1", port, b"v4 again") == b"v4 again"
        if workers == "2":
            server.wait_for("ready: 2 workers serving")
            for worker in (1, 2):
                server.wait_for(f"worker {worker}: listening on \\[::1\\]:{port}")
            assert "reuseport" not in server.log  # inherited sockets are always shared
        assert server.stop() == 0
    assert "Traceback" not in server.log
