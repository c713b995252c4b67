"""The interface every backend serves behind, its constants, and the idle sweep."""

from __future__ import annotations

import errno
import fcntl
import logging
import socket
import struct
import termios
from collections.abc import Iterable, Sequence
from typing import Protocol

from echod.config import Config
from echod.lifecycle import Lifecycle

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


def sweep(connections: Iterable[Sweepable], ticks: int, only_drained: bool) -> int:
    """Close connections silent for ``ticks`` sweeps; a read resets a connection's count.

    Counting sweeps instead of stamping each read with the clock keeps the hot path to
    one store; the price is a close up to one sweep interval late. Returns how many it
    closed.
    """
    closed = 0
    for conn in list(connections):
        conn.idle_ticks += 1
        if conn.idle_ticks >= ticks and not (only_drained and owes_echo(conn)):
            conn.close()
            closed += 1
    return closed


def owes_echo(conn: Sweepable) -> bool:
    """Output still queued, or input the kernel holds that the server has not read yet.

    The second matters: a connection can look quiet while its bytes wait unread (a thread
    waiting for the GIL, a loop busy with others), and closing a socket with unread
    input makes the kernel send RST, so the client would lose its echo.
    """
    if conn.has_pending():
        return True
    fd = conn.fileno()
    if fd < 0:
        return False  # closed already (a threads connection, its release on the way)
    try:
        return unread_bytes(fd) > 0
    except OSError:
        return False  # already closed or reset: nothing more can be echoed


def unread_bytes(fd: int) -> int:
    """Bytes waiting in a socket's receive queue (FIONREAD, a.k.a. SIOCINQ)."""
    return struct.unpack("i", fcntl.ioctl(fd, termios.FIONREAD, b"\0\0\0\0"))[0]  # type: ignore[no-any-return]


class Cancellable(Protocol):
    def cancel(self) -> None: ...
