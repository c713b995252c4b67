"""The one harness every suite uses: run the real ``echod`` (or any echo server that
logs ``listening on HOST:PORT``) as a subprocess, talk to it over real sockets, and
require the real tools the tests drive."""

from __future__ import annotations

import contextlib
import importlib.util
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import NoReturn

import pytest

ROOT = Path(__file__).resolve().parent.parent
LISTENING = re.compile(r"listening on (?:proxy-v[12]:)?(?:tls:)?(\[[^\]]+\]|[^ :]+):(\d+)")
TIMEOUT = 20.0
SYSTEMD_VARS = ("NOTIFY_SOCKET", "LISTEN_", "WATCHDOG_", "JOURNAL_STREAM", "ECHOD_")


def listening_ports(log: str) -> list[int]:
    """The ports of the stream listeners a log announced, in its order."""
    return [int(match.group(2)) for match in LISTENING.finditer(log)]


class Echod:
    """``python -m echod ARGS`` in a subprocess, with its stderr collected as it runs.

    ``program`` replaces ``-m echod`` for another server run the same way (the robust
    suite's naive server); ``wrapper`` goes in front (``prlimit``, ``setpriv``).
    """

    def __init__(
        self,
        *args: str,
        env: dict[str, str] | None = None,
        wrapper: Sequence[str] = (),
        wait: bool = True,
        program: Sequence[str] = ("-m", "echod"),
        pass_fds: Sequence[int] = (),
    ) -> None:
        # A test's own server must not pick up a systemd environment the runner has.
        inherited = {k: v for k, v in os.environ.items() if not k.startswith(SYSTEMD_VARS)}
        full_env = {**inherited, "PYTHONUNBUFFERED": "1", **(env or {})}
        self.proc = subprocess.Popen(
            [*wrapper, sys.executable, *program, *args],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,  # never read: a full pipe would block the server
            stderr=subprocess.PIPE,
            env=full_env,
            cwd=ROOT,
            pass_fds=pass_fds,
        )
        self.pid = self.proc.pid
        self._lines: list[str] = []
        self._changed = threading.Condition()
        self._reader = threading.Thread(target=self._collect, daemon=True)
        self._reader.start()
        self.port = 0
        self.host = "127.0.0.1"
        if wait:
            match = self.wait_for(LISTENING)
            self.host, self.port = match.group(1).strip("[]"), int(match.group(2))

    def _collect(self) -> None:
        assert self.proc.stderr is not None
        for raw in self.proc.stderr:
            with self._changed:
                self._lines.append(raw.decode(errors="replace"))
                self._changed.notify_all()
        with self._changed:
            self._changed.notify_all()

    @property
    def log(self) -> str:
        with self._changed:
            return "".join(self._lines)

    def wait_for(self, pattern: re.Pattern[str] | str, timeout: float = TIMEOUT) -> re.Match[str]:
        """Block until the log matches ``pattern``; fail with the log if it never does."""
        regex = re.compile(pattern) if isinstance(pattern, str) else pattern
        deadline = time.monotonic() + timeout
        with self._changed:
            while True:
                match = regex.search("".join(self._lines))
                if match:
                    return match
                remaining = deadline - time.monotonic()
                if remaining <= 0 or (self.proc.poll() is not None and not self._reader.is_alive()):
                    raise AssertionError(f"echod never logged {regex.pattern!r}; log:\n{self.log}")
                self._changed.wait(min(remaining, 0.2))

    def connect(self, timeout: float = TIMEOUT) -> socket.socket:
        sock = socket.create_connection((self.host, self.port), timeout=timeout)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return sock

    def signal(self, signum: int) -> None:
        self.proc.send_signal(signum)

    def alive(self) -> bool:
        return self.proc.poll() is None

    def children(self) -> list[int]:
        """Direct children (a supervisor's workers), from /proc."""
        path = Path(f"/proc/{self.pid}/task/{self.pid}/children")
        try:
            return [int(pid) for pid in path.read_text().split()]
        except OSError:
            return []

    def report(self, timeout: float = 5.0) -> str:
        """SIGUSR1, then the stats line it makes echod log (the first after the signal)."""
        with self._changed:
            mark = len("".join(self._lines))
        self.signal(signal.SIGUSR1)
        deadline = time.monotonic() + timeout
        with self._changed:
            while True:
                for line in "".join(self._lines)[mark:].splitlines():
                    if "stats" in line and "connections open=" in line:
                        return line
                remaining = deadline - time.monotonic()
                if remaining <= 0 or not self.alive():
                    raise AssertionError(f"no stats line after SIGUSR1; log:\n{self.log}")
                self._changed.wait(min(remaining, 0.1))

    def report_until(self, text: str, timeout: float = TIMEOUT) -> str:
        """The first stats line containing ``text``, asking again until it does."""
        deadline = time.monotonic() + timeout
        while True:
            line = self.report()
            if text in line:
                return line
            if time.monotonic() > deadline:
                raise AssertionError(f"no stats line with {text!r}; last: {line}")
            time.sleep(0.1)

    def stop(self, timeout: float = TIMEOUT) -> int:
        """SIGTERM, then the exit status (SIGKILL and failure if it hangs)."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            status = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise AssertionError(
                f"echod did not stop within {timeout}s; log:\n{self.log}"
            ) from None
        self._reader.join(5)
        return status

    def open_fds(self) -> int:
        return len(os.listdir(f"/proc/{self.pid}/fd"))

    def settled_fds(self, quiet: float = 0.3) -> int:
        """The descriptor count once connections from earlier tests finished closing."""
        previous = self.open_fds()
        while True:
            time.sleep(quiet)
            current = self.open_fds()
            if current == previous:
                return current
            previous = current

    def rss(self) -> int:
        """Resident memory in bytes, from /proc."""
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
        raise AssertionError("no VmRSS line")

    def cpu_seconds(self) -> float:
        fields = Path(f"/proc/{self.pid}/stat").read_text().rsplit(")", 1)[1].split()
        ticks = os.sysconf("SC_CLK_TCK")
        return (int(fields[11]) + int(fields[12])) / ticks

    def __enter__(self) -> Echod:
        return self

    def __exit__(self, *exc: object) -> None:
        if self.proc.poll() is None:
            self.stop()
        if self.proc.stdout:
            self.proc.stdout.close()
        if self.proc.stderr:
            self.proc.stderr.close()


@contextlib.contextmanager
def echod(*args: str, **kwargs: object) -> Iterator[Echod]:
    """A running echod that must stop cleanly (exit 0, no traceback) when the block ends."""
    server = Echod(*args, **kwargs)  # type: ignore[arg-type]
    try:
        yield server
    finally:
        status = server.stop()
        assert status == 0, f"echod exited {status}; log:\n{server.log}"
        assert "Traceback" not in server.log, server.log


def exchange(sock: socket.socket, payload: bytes, chunk: int = 256 * 1024) -> bytes:
    """Send ``payload`` while reading, half-close, and return everything until EOF.

    The one send-and-read-back helper for a whole stream; an error on either side
    (a reset, a timeout) is raised here, in the test, not lost in a thread.
    """
    failure: list[BaseException] = []

    def write() -> None:
        try:
            view = memoryview(payload)
            for start in range(0, len(payload), chunk):
                sock.sendall(view[start : start + chunk])
            sock.shutdown(socket.SHUT_WR)
        except BaseException as exc:
            failure.append(exc)

    writer = threading.Thread(target=write, daemon=True)
    writer.start()
    received = bytearray()
    try:
        while data := sock.recv(max(chunk, 65536)):
            received.extend(data)
    finally:
        writer.join(TIMEOUT * 3)
    if failure:
        raise failure[0]
    assert not writer.is_alive(), "the server stopped reading and never closed"
    return bytes(received)


def round_trip(sock: socket.socket, message: bytes) -> bytes:
    """Send one message and read back exactly as many bytes (fewer only at EOF)."""
    sock.sendall(message)
    received = bytearray()
    while len(received) < len(message):
        data = sock.recv(len(message) - len(received))
        if not data:
            break
        received.extend(data)
    return bytes(received)


def recv_exactly(sock: socket.socket, size: int) -> bytes:
    data = bytearray()
    while len(data) < size:
        chunk = sock.recv(size - len(data))
        if not chunk:
            raise AssertionError(f"EOF after {len(data)} of {size} bytes")
        data.extend(chunk)
    return bytes(data)


def reset(sock: socket.socket) -> None:
    """Close with an RST instead of a FIN (SO_LINGER with a zero timeout)."""
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
    sock.close()


PORT_TAKEN = "Address already in use"


def free_port(kind: int = socket.SOCK_STREAM) -> int:
    """A port that was free a moment ago: only for a program that cannot be given port 0
    or a bound socket (systemd-socket-activate); see :func:`start_on_a_free_port`."""
    with socket.socket(socket.AF_INET, kind) as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def start_on_a_free_port(
    start: Callable[[int], Echod], listeners: int = 1, attempts: int = 5
) -> tuple[Echod, int]:
    """Start a wrapper that binds its port itself and says so (systemd-socket-activate's
    "Listening on ... as N."), on a port free a moment ago; when another program took
    the port in between, the wrapper fails at once with EADDRINUSE and the next free
    port is tried."""
    listening = rf"(?s)(?:Listening on [^\n]* as \d+\.\n.*?){{{listeners}}}|{PORT_TAKEN}"
    for _ in range(attempts):
        port = free_port()
        server = start(port)
        server.wait_for(listening)
        if PORT_TAKEN not in server.log:
            return server, port
        server.stop()
    raise AssertionError(f"{attempts} free ports were taken before they could be bound")


def wait_until(
    condition: Callable[[], object], timeout: float = TIMEOUT, interval: float = 0.05
) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(interval)
    return bool(condition())


def in_threads(target: Callable[..., object], args: Sequence[tuple[object, ...]]) -> None:
    """Run ``target(*a)`` for each ``a`` in its own thread; the first failure fails the test.

    A thread's exception would otherwise only be printed as a warning, and the test
    pass with a client that never got its bytes.
    """
    failures: list[BaseException] = []

    def run(call_args: tuple[object, ...]) -> None:
        try:
            target(*call_args)
        except BaseException as exc:
            failures.append(exc)

    threads = [threading.Thread(target=run, args=(a,), daemon=True) for a in args]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(TIMEOUT * 3)
    if failures:
        raise failures[0]
    assert not any(thread.is_alive() for thread in threads), "a client thread never finished"


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


# The Debian package .ci/run installs for each tool a test drives.
PACKAGES = {
    "nc": "netcat-openbsd",
    "socat": "socat",
    "prlimit": "util-linux",
    "taskset": "util-linux",
    "setpriv": "util-linux",
    "systemd-socket-activate": "systemd",
    "systemd-analyze": "systemd",
    "systemd-nspawn": "systemd-container",
    "nsenter": "util-linux",
    "strace": "strace",
    "gcc": "gcc",
    "man": "man-db",
    "openssl": "openssl",
    "haproxy": "haproxy",
}


def in_ci() -> bool:
    return os.environ.get("CI", "").lower() == "true"


def missing(reason: str) -> NoReturn:
    """Skip for ``reason`` on a developer's machine; fail under ``CI=true``, where
    .ci/run installed everything and a skip would hide a test that never ran."""
    if in_ci():
        pytest.fail(f"CI=true: {reason}", pytrace=False)
    pytest.skip(reason)


def require_root(reason: str) -> None:
    """Root-only cases (privileged binds, raw sockets, switching users): CI runs as root,
    so there a test that cannot run is a failure, not a skip."""
    if os.geteuid() != 0:
        missing(f"{reason}: needs root, running as uid {os.geteuid()}")


def ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as probe:
            probe.bind(("::1", 0))
    except OSError:
        return False
    return True


def require_ipv6() -> None:
    """CI has IPv6 loopback; elsewhere a machine without it skips the IPv6 cases."""
    if not ipv6_loopback():
        missing("no IPv6 loopback (::1) here")


def require_tool(name: str) -> str:
    """The path of a tool a test drives; skip (fail under CI) when it is not installed."""
    path = shutil.which(name)
    if path is None:
        package = PACKAGES.get(name, name)
        missing(f"{name} is not installed (apt-get install {package})")
    return path


def require_module(name: str) -> None:
    """An optional Python package a test needs (gevent, from the dev extra)."""
    if importlib.util.find_spec(name) is None:
        missing(f"python package {name} is not installed (pip install -e '.[dev]')")
