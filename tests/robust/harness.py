"""What every robustness case stands on: a target server, the scale to run at, outcomes.

A *target* is an echod backend or the naive server kept next to this file; both are
started the same way and announce ``listening on HOST:PORT``, so one case drives either.
Figures come from /proc (CPU time, RSS, descriptors), never from wall-clock speed.
"""

from __future__ import annotations

import contextlib
import os
import resource
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from tests.support import LISTENING, ROOT, SYSTEMD_VARS, Echod, recv_exactly

NAIVE = "naive"
FAULT = "fault:"
MiB = 1 << 20


@dataclass(frozen=True)
class Scale:
    """How hard a run pushes: the full counts of the issue, or a short form for pytest."""

    name: str
    concurrent: int = 10_000
    idle: int = 5_000
    hog_bytes: int = 1 << 30
    nofile: int = 256
    resets: int = 1_000
    cycles: int = 50_000
    slow_readers: int = 20
    schedules: int = 200
    patience: float = 5.0  # seconds a schedule's survivors have to be echoed and closed
    graceful: int = 1_000
    window: float = 3.0  # seconds over which CPU time is measured
    settle: float = 0.5  # seconds left for the server to take in a change before measuring
    samples: int = 50  # round trips behind a latency figure


FULL = Scale("full")
SHORT = Scale(
    "short",
    # Past FD_SETSIZE (1024) still, so select(2)'s ceiling shows at this scale too.
    concurrent=1_100,
    idle=1_100,
    hog_bytes=256 * MiB,
    resets=200,
    cycles=3_000,
    slow_readers=5,
    schedules=20,
    patience=2.0,
    graceful=100,
    window=1.0,
    # Past the slow-fresh-client fault's 0.25 s: its delayed registrations of the last
    # idle connections must not land in the idle-CPU window (2 ticks there failed CI).
    settle=0.35,
    samples=20,
)


class SuiteServer(Echod):
    """The naive or a faulty server, started and watched as :class:`tests.support.Echod`
    runs echod (its own ``__init__`` only because the command is not ``-m echod``)."""

    def __init__(self, argv: Sequence[str], wrapper: Sequence[str] = ()) -> None:
        inherited = {k: v for k, v in os.environ.items() if not k.startswith(SYSTEMD_VARS)}
        self.proc = subprocess.Popen(
            [*wrapper, sys.executable, *argv],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            env={**inherited, "PYTHONUNBUFFERED": "1"},
            cwd=ROOT,
        )
        self.pid = self.proc.pid
        self._lines: list[str] = []
        self._changed = threading.Condition()
        self._reader = threading.Thread(target=self._collect, daemon=True)
        self._reader.start()
        match = self.wait_for(LISTENING)
        self.host, self.port = match.group(1).strip("[]"), int(match.group(2))


Server = Echod  # what a case drives: echod itself, or a SuiteServer


def alive(server: Server) -> bool:
    return server.proc.poll() is None


def death(server: Server) -> str:
    """Why the server is gone: its exit status and the last line it logged."""
    lines = server.log.strip().splitlines()
    return f"server died (exit {server.proc.returncode}): {lines[-1] if lines else 'no log'}"


def children(server: Server) -> list[int]:
    """Direct children (the supervisor's workers), from /proc."""
    path = Path(f"/proc/{server.pid}/task/{server.pid}/children")
    try:
        return [int(pid) for pid in path.read_text().split()]
    except OSError:
        return []


def idle_cpu(server: Server, window: float) -> float:
    """Fraction of one CPU the server used over ``window`` seconds."""
    before = server.cpu_seconds()
    time.sleep(window)
    return (server.cpu_seconds() - before) / window


def end(server: Server) -> None:
    """SIGTERM (SIGKILL if it hangs), and the same for any worker left behind.

    Not ``Echod.stop``: a case has already judged the exit, and a faulty server may hang.
    """
    workers = children(server)
    if alive(server):
        server.proc.send_signal(signal.SIGTERM)
        try:
            server.proc.wait(15)
        except subprocess.TimeoutExpired:
            server.proc.kill()
            server.proc.wait()
    for pid in workers:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    server._reader.join(5)
    for stream in (server.proc.stdout, server.proc.stderr):
        if stream:
            stream.close()


@dataclass(frozen=True)
class Target:
    """An echod backend, the naive server, or the fault server with one fault.

    Names: a backend (``epoll``), ``naive``, or ``fault:NAME`` (``fault:none`` is the
    fault server with no fault).
    """

    name: str

    @property
    def naive(self) -> bool:
        return self.name == NAIVE

    @property
    def fault(self) -> str | None:
        return self.name.removeprefix(FAULT) if self.name.startswith(FAULT) else None

    @contextlib.contextmanager
    def start(self, *args: str, wrapper: Sequence[str] = ()) -> Iterator[Server]:
        server: Server
        if self.naive:
            server = SuiteServer(["-m", "tests.robust.naive_server", "--port", "0", *args], wrapper)
        elif self.fault is not None:
            argv = ["-m", "tests.robust.fault_server", "--port", "0", "--fault", self.fault]
            server = SuiteServer([*argv, *args], wrapper)
        else:
            server = Echod("--backend", self.name, "--port", "0", *args, wrapper=wrapper)
        try:
            yield server
        finally:
            end(server)


@dataclass
class Outcome:
    """What a case measured, and every bound it broke (none: it passed)."""

    figures: list[str] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)
    broken: list[str] = field(default_factory=list)  # the names of the checks that failed
    skipped: str = ""

    def figure(self, text: str) -> None:
        self.figures.append(text)

    def require(self, check: str, condition: object, failure: str) -> bool:
        """``check`` names the bound, so a test can tell which one a fault broke."""
        if not condition:
            self.failures.append(failure)
            self.broken.append(check)
        return bool(condition)

    @property
    def passed(self) -> bool:
        return not self.failures and not self.skipped


class Abort(Exception):
    """The case cannot go on (the server died, a client could not connect)."""


def raise_nofile() -> None:
    """Soft open-file limit up to the hard one: the client side holds 10,000 sockets too."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def connect_many(server: Server, count: int, rcvbuf: int = 0) -> list[socket.socket]:
    """``count`` connected sockets; the kernel completes each handshake before accept."""
    socks: list[socket.socket] = []
    try:
        for _ in range(count):
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            if rcvbuf:
                # Before connect, so the window is small from the handshake on; a set
                # SO_RCVBUF also turns off loopback's autotuning to tens of MiB.
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
            sock.settimeout(10)
            socks.append(sock)
            sock.connect((server.host, server.port))
    except OSError as exc:
        close_all(socks)
        if not alive(server):
            raise Abort(death(server)) from exc
        raise Abort(f"connect {len(socks)} of {count} failed: {exc}") from exc
    return socks


def close_all(socks: Sequence[socket.socket]) -> None:
    for sock in socks:
        with contextlib.suppress(OSError):
            sock.close()


def round_trip(sock: socket.socket, message: bytes) -> bool:
    sock.sendall(message)
    return recv_exactly(sock, len(message)) == message


def fresh_echo_latency(server: Server, samples: int) -> list[float]:
    """Seconds from connect to echo for ``samples`` new clients, one after another."""
    latencies = []
    for i in range(samples):
        message = f"fresh client {i:06d}".encode()
        start = time.perf_counter()
        with socket.create_connection((server.host, server.port), timeout=10) as sock:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if not round_trip(sock, message):
                raise Abort("a fresh client got a different echo")
        latencies.append(time.perf_counter() - start)
    return latencies


def echo_latency(sock: socket.socket, duration: float, minimum: int) -> list[float]:
    """Round trips of 64 bytes on one connection for ``duration`` s (at least ``minimum``)."""
    latencies: list[float] = []
    deadline = time.monotonic() + duration
    while len(latencies) < minimum or time.monotonic() < deadline:
        message = os.urandom(64)
        start = time.perf_counter()
        if not round_trip(sock, message):
            raise Abort("a well-behaved client got a different echo")
        latencies.append(time.perf_counter() - start)
    return latencies


def percentile(latencies: Sequence[float], fraction: float) -> float:
    ordered = sorted(latencies)
    return ordered[min(len(ordered) - 1, int(len(ordered) * fraction))]


def describe_latency(latencies: Sequence[float]) -> str:
    p50, p90, p99 = (percentile(latencies, q) * 1e3 for q in (0.5, 0.9, 0.99))
    return f"p50 {p50:.2f} ms, p90 {p90:.2f} ms, p99 {p99:.2f} ms"


def mib(size: float) -> str:
    return f"{size / MiB:.1f} MiB"
