"""A real ``python -m echod`` process per test, for the threads and gevent backends."""

from __future__ import annotations

import contextlib
import importlib.util
import os
import re
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

BACKENDS = ["threads", "gevent"]
START_TIMEOUT = 10.0


class Server:
    """A running echod; its stderr is collected line by line as it arrives."""

    def __init__(self, args: list[str], **popen: Any) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "echod", "--port", "0", *args],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
            **popen,
        )
        self.pid = self.proc.pid
        self.lines: list[str] = []
        self.stderr_closed = False
        self._changed = threading.Condition()
        self._reader = threading.Thread(target=self._read_stderr, daemon=True)
        self._reader.start()
        match = re.search(r"listening on 127\.0\.0\.1:(\d+)", self.wait_for("listening on"))
        assert match, self.log
        self.port = int(match.group(1))

    def _read_stderr(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            with self._changed:
                self.lines.append(line.rstrip("\n"))
                self._changed.notify_all()
        with self._changed:
            self.stderr_closed = True
            self._changed.notify_all()

    @property
    def log(self) -> str:
        with self._changed:
            return "\n".join(self.lines)

    def wait_for(self, text: str, timeout: float = START_TIMEOUT, after: int = 0) -> str:
        """The first stderr line from index ``after`` on that contains ``text``."""
        deadline = time.monotonic() + timeout
        with self._changed:
            while True:
                for line in self.lines[after:]:
                    if text in line:
                        return line
                remaining = deadline - time.monotonic()
                if remaining <= 0 or self.stderr_closed:
                    raise AssertionError(
                        f"no {text!r} in echod's stderr:\n" + "\n".join(self.lines)
                    )
                self._changed.wait(min(remaining, 0.1))

    def report(self) -> str:
        """Ask for the counters (SIGUSR1) and return the line echod logs."""
        mark = len(self.lines)
        os.kill(self.pid, signal.SIGUSR1)
        return self.wait_for("stats:", timeout=5.0, after=mark)

    def report_until(self, text: str, timeout: float = 5.0) -> str:
        deadline = time.monotonic() + timeout
        while True:
            line = self.report()
            if text in line or time.monotonic() > deadline:
                return line
            time.sleep(0.1)

    def connect(self, timeout: float = 10.0) -> socket.socket:
        sock = socket.create_connection(("127.0.0.1", self.port), timeout=timeout)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return sock

    def signal(self, signum: int) -> None:
        os.kill(self.pid, signum)

    def wait(self, timeout: float) -> int:
        return self.proc.wait(timeout)

    def rss(self) -> int:
        """Resident memory in bytes."""
        with open(f"/proc/{self.pid}/status") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
        raise AssertionError("no VmRSS")

    def cpu_seconds(self) -> float:
        with open(f"/proc/{self.pid}/stat") as stat:
            fields = stat.read().rpartition(")")[2].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(5)
        self._reader.join(5)
        if self.proc.stderr:
            self.proc.stderr.close()


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    name: str = request.param
    if name == "gevent" and importlib.util.find_spec("gevent") is None:
        pytest.skip("gevent is not installed (pip install 'echod[gevent]')")
    return name


@pytest.fixture
def start(backend: str) -> Iterator[Callable[..., Server]]:
    """Start echod on the backend under test with extra flags; killed after the test."""
    servers: list[Server] = []

    def starter(*args: str, **popen: Any) -> Server:
        server = Server(["--backend", backend, *args], **popen)
        servers.append(server)
        return server

    yield starter
    for server in servers:
        server.stop()


def echo(sock: socket.socket, data: bytes, chunk: int = 256 * 1024) -> bytes:
    """Send ``data`` then end input (half-close), reading all the while; return what came back."""
    failure: list[BaseException] = []

    def write() -> None:
        try:
            for start in range(0, len(data), chunk):
                sock.sendall(data[start : start + chunk])
            sock.shutdown(socket.SHUT_WR)
        except BaseException as exc:
            failure.append(exc)

    writer = threading.Thread(target=write)
    writer.start()
    received = bytearray()
    try:
        while True:
            block = sock.recv(1 << 20)
            if not block:
                break
            received += block
    finally:
        writer.join()
    if failure:
        raise failure[0]
    return bytes(received)


def round_trip(sock: socket.socket, data: bytes) -> bytes:
    """Send a small message and read exactly as many bytes back."""
    sock.sendall(data)
    received = bytearray()
    while len(received) < len(data):
        block = sock.recv(len(data) - len(received))
        if not block:
            break
        received += block
    return bytes(received)


def fill_until_stalled(sock: socket.socket, limit: int, quiet: float = 0.5) -> int:
    """Send without ever reading until the peer stops taking bytes; return how many went."""
    sock.setblocking(False)
    block = b"\xa5" * 65536
    sent = 0
    last_progress = time.monotonic()
    while sent < limit and time.monotonic() - last_progress < quiet:
        try:
            sent += sock.send(block)
            last_progress = time.monotonic()
        except BlockingIOError:
            time.sleep(0.01)
    sock.setblocking(True)
    return sent


def reset(sock: socket.socket) -> None:
    """Close with SO_LINGER 0, so the peer sees RST instead of FIN."""
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    with contextlib.suppress(OSError):
        sock.close()
