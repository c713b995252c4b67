"""The interface every backend serves behind, and the housekeeping rules they share."""

from __future__ import annotations

import abc
import errno
import fcntl
import logging
import os
import socket
import struct
import termios
from collections.abc import Callable, Iterable, Sequence
from typing import Protocol

from echod.config import Config
from echod.lifecycle import Command, Lifecycle

log = logging.getLogger("echod")

# One read is at most this much; it also bounds what a paused connection may hold past
# its high-water mark. 64 KiB matches the default socket buffer on Linux loopback.
RECEIVE_SIZE = 64 * 1024
# Accepts per readiness event, so a connection storm cannot starve established clients.
ACCEPT_BATCH = 64
# Errors from accept() that mean "out of descriptors or memory", not "bad peer".
EXHAUSTED = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})
# Errors from accept() that mean the client left before we got to it, or a firewall said no.
PEER_GONE = frozenset({errno.ECONNABORTED, errno.EPROTO, errno.EPERM})
# Seconds to stop accepting when even shedding clients is impossible.
ACCEPT_BACKOFF = 1.0
# While draining after SIGTERM, a connection quiet this long with nothing left to echo
# has had everything it sent before the signal echoed back, so it may be closed.
DRAIN_QUIET = 1.0
# Sweeps per idle timeout: a connection is closed between 1 and 1.25 timeouts silent.
IDLE_SWEEPS = 4


class SpareDescriptor:
    """One descriptor held back, to refuse clients when the process runs out of them.

    Out of descriptors, a level-triggered listener stays readable while clients wait, so
    a loop that only retries accept() spins. As libuv and Twisted do: give the spare
    back, accept and close what waits, and take the spare again.
    """

    def __init__(self) -> None:
        self.fd: int | None = self._open()

    @staticmethod
    def _open() -> int | None:
        try:
            return os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC)
        except OSError:
            return None

    def shed(self, listeners: Iterable[socket.socket]) -> int:
        """Refuse every client waiting on ``listeners``; returns how many were refused.

        Afterwards ``fd`` is None if the spare could not be taken back: the caller must
        then stop accepting for a while instead.
        """
        if self.fd is None:
            return 0
        os.close(self.fd)
        self.fd = None
        refused = 0
        for listener in listeners:
            while True:
                try:
                    sock, _ = listener.accept()
                except OSError:
                    break
                sock.close()
                refused += 1
        self.fd = self._open()
        return refused

    def close(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None


class Backend(Protocol):
    """One IO model. ``serve`` runs until SIGTERM/SIGINT have been handled, then returns.

    It is handed listening sockets it did not make (bound by the CLI, inherited from
    systemd, or one SO_REUSEPORT socket per worker) and reports to ``lifecycle``.
    """

    name: str

    def serve(
        self, listeners: Sequence[socket.socket], config: Config, lifecycle: Lifecycle
    ) -> None: ...


class Sweepable(Protocol):
    """A connection as the idle sweep sees it."""

    idle_ticks: int

    def has_pending(self) -> bool: ...
    def fileno(self) -> int: ...
    def close(self) -> None: ...


def sweep(connections: Iterable[Sweepable], ticks: int, only_drained: bool) -> None:
    """Close connections silent for ``ticks`` sweeps; a read resets a connection's count.

    Counting sweeps instead of stamping each read with the clock keeps the hot path to
    one store; the price is a close up to one sweep interval late.
    """
    for conn in list(connections):
        conn.idle_ticks += 1
        if conn.idle_ticks >= ticks and not (only_drained and _owes_echo(conn)):
            conn.close()


def _owes_echo(conn: Sweepable) -> bool:
    """Output still queued, or input the kernel holds that the server has not read yet.

    The second matters: a connection can look quiet while its bytes wait unread (a thread
    waiting for the GIL, a loop busy with others), and closing a socket with unread
    input makes the kernel send RST, so the client would lose its echo.
    """
    if conn.has_pending():
        return True
    try:
        return unread_bytes(conn.fileno()) > 0
    except OSError:
        return False  # already closed or reset: nothing more can be echoed


def unread_bytes(fd: int) -> int:
    """Bytes waiting in a socket's receive queue (FIONREAD, a.k.a. SIOCINQ)."""
    return struct.unpack("i", fcntl.ioctl(fd, termios.FIONREAD, b"\0\0\0\0"))[0]  # type: ignore[no-any-return]


class Cancellable(Protocol):
    def cancel(self) -> None: ...


class ServingPolicy(abc.ABC):
    """What signals, draining and idle sweeps mean, written once for every backend.

    Each backend supplies the primitives of its IO model (how to wait, how to stop
    accepting, how to end the loop); the rules that operators rely on — SIGTERM drains,
    a second SIGINT exits at once, quiet connections close while draining, the graceful
    timeout ends the rest — live here.
    """

    config: Config
    lifecycle: Lifecycle
    _sweeper: Cancellable | None = None

    @abc.abstractmethod
    def live_connections(self) -> Sequence[Sweepable]:
        """A snapshot of the open connections (safe to iterate while they close)."""

    @abc.abstractmethod
    def close_listeners(self) -> None: ...

    @abc.abstractmethod
    def finish(self) -> None:
        """End the serving loop now; ``serve`` then closes what is left and returns."""

    @abc.abstractmethod
    def call_later(self, delay: float, callback: Callable[[], object]) -> Cancellable: ...

    @abc.abstractmethod
    def call_every(self, interval: float, callback: Callable[[], object]) -> Cancellable: ...

    def refresh_stats(self) -> None:  # noqa: B027  # optional hook
        """Bring ``lifecycle.stats`` up to date before it is reported (if kept elsewhere)."""

    def on_draining(self) -> None:  # noqa: B027  # optional hook
        """Called once listeners are closed at the start of a drain."""

    def on_signal(self, signum: int) -> None:
        command = self.lifecycle.command(signum)
        if command is Command.REPORT:
            self.refresh_stats()
            self.lifecycle.report()
        elif command is Command.EXIT_NOW:
            log.warning(
                "second interrupt: closing %d connection(s) now", len(self.live_connections())
            )
            self.finish()
        elif not self.lifecycle.draining:
            self.drain()

    def drain(self) -> None:
        graceful = self.config.graceful_timeout
        self.refresh_stats()
        self.lifecycle.start_draining(graceful)
        self.close_listeners()
        self.on_draining()
        if not self.live_connections():
            self.finish()
            return
        self.call_later(graceful, self._graceful_timeout)
        self.sweep_every(DRAIN_QUIET / 2, ticks=2, only_drained=True)

    def _graceful_timeout(self) -> None:
        log.warning("graceful timeout: closing %d connection(s)", len(self.live_connections()))
        self.finish()

    def start_idle_sweeps(self) -> None:
        if self.config.idle_timeout > 0:
            self.sweep_every(self.config.idle_timeout / IDLE_SWEEPS, IDLE_SWEEPS, False)

    def sweep_every(self, interval: float, ticks: int, only_drained: bool) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()
        for conn in self.live_connections():
            conn.idle_ticks = 0
        self._sweeper = self.call_every(
            max(interval, 0.01), lambda: sweep(self.live_connections(), ticks, only_drained)
        )
