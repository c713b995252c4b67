"""A stdlib client for the sd_notify(3) protocol.

The protocol is one datagram of newline-separated ``KEY=VALUE`` lines sent to
the AF_UNIX socket named by ``$NOTIFY_SOCKET`` (a path, or ``@name`` for the
abstract namespace). systemd reads the sender's credentials from the socket,
so *who* sends matters: with ``NotifyAccess=main`` only the unit's main PID is
heard. In echod that is the supervisor, the process systemd started; forked
workers inherit a `Notifier` but their sends are dropped here, so only the
supervisor reports readiness and pings the watchdog (on its workers' behalf).
"""

from __future__ import annotations

import array
import logging
import os
import socket
import time
from collections.abc import Mapping

log = logging.getLogger(__name__)

# A datagram to a full receive queue blocks; systemd drains its queue quickly,
# so wait a little rather than lose READY=1, but never stall the event loop
# for long on a wedged manager.
SEND_TIMEOUT = 1.0


class Notifier:
    """Sends state changes to the service manager; a no-op without one.

    Failures are logged once and otherwise ignored: a daemon must not die
    because the manager's socket went away (systemd restarting, a container
    without it). Only the process that built the notifier sends, so a copy
    inherited across fork() is silent.
    """

    __slots__ = ("_address", "_owner_pid", "_sock", "_warned")

    def __init__(self, address: str | None) -> None:
        self._address = _socket_address(address) if address else None
        self._owner_pid = os.getpid()
        self._sock: socket.socket | None = None
        self._warned = False

    @classmethod
    def from_env(cls, environ: Mapping[str, str] = os.environ) -> Notifier:
        return cls(environ.get("NOTIFY_SOCKET") or None)

    @property
    def enabled(self) -> bool:
        """True when a service manager is listening and this process may speak."""
        return self._address is not None and os.getpid() == self._owner_pid

    def send_raw(self, state: str) -> bool:
        """Send `state` as one datagram; True if the manager got it."""
        if not self.enabled:
            return False
        assert self._address is not None
        try:
            self._socket().sendto(state.encode(), self._address)
        except OSError as exc:
            if not self._warned:
                self._warned = True
                log.warning("cannot notify the service manager at %r: %s", self._address, exc)
            return False
        return True

    def _socket(self) -> socket.socket:
        if self._sock is None:
            self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
            self._sock.settimeout(SEND_TIMEOUT)
        return self._sock

    def send(self, **fields: str | int) -> bool:
        """Send ``KEY=value`` lines, e.g. ``send(READY=1, STATUS="serving")``.

        A newline inside a value would start a new assignment, so it becomes
        a space.
        """
        return self.send_raw(
            "\n".join(f"{key}={str(value).replace(chr(10), ' ')}" for key, value in fields.items())
        )

    def ready(self, status: str | None = None) -> bool:
        """Startup is finished: listeners are open and workers serve.

        For ``Type=notify`` systemd holds units ordered after us until this.
        """
        if status is None:
            return self.send(READY=1)
        return self.send(READY=1, STATUS=status)

    def status(self, text: str) -> bool:
        """Free-form text shown by ``systemctl status``."""
        return self.send(STATUS=text)

    def watchdog(self) -> bool:
        """Keep-alive ping; send every `watchdog_interval()` seconds."""
        return self.send(WATCHDOG=1)

    def stopping(self) -> bool:
        """Graceful shutdown has begun."""
        return self.send(STOPPING=1)

    def reloading(self, status: str) -> bool:
        """A reload has begun; follow with `ready()` once it is done.

        ``MONOTONIC_USEC`` is what ``Type=notify-reload`` (systemd 253+) uses
        to match the reply to the request; older managers ignore it.
        """
        return self.send(
            RELOADING=1,
            MONOTONIC_USEC=time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000,
            STATUS=status,
        )

    def mainpid(self, pid: int) -> bool:
        """Tell the manager the main process is now `pid`.

        Needed only when the process systemd started hands over to another
        (it daemonises or re-executes): with ``NotifyAccess=main`` systemd then
        listens to `pid` alone, so that process must do all later sends.
        """
        return self.send(MAINPID=pid)

    def store_fd(self, fd: int, name: str) -> bool:
        """Keep a copy of ``fd`` in the manager's file descriptor store under ``name``
        (``FDSTORE=1``, sd_pid_notify_with_fds(3)); it comes back in ``LISTEN_FDS`` on
        the next start. Needs ``FileDescriptorStoreMax=`` in the unit, else the manager
        drops it."""
        if not self.enabled:
            return False
        assert self._address is not None
        state = f"FDSTORE=1\nFDNAME={name}".encode()
        try:
            rights = (socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", [fd]).tobytes())
            self._socket().sendmsg([state], [rights], 0, self._address)
        except OSError as exc:
            log.warning("cannot store fd %d (%s) with the service manager: %s", fd, name, exc)
            return False
        return True

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None


def watchdog_interval(environ: Mapping[str, str] = os.environ) -> float | None:
    """Seconds between watchdog pings, or None when no watchdog is armed.

    Half of ``WATCHDOG_USEC``, as sd_watchdog_enabled(3) advises, so one late
    ping is not fatal. ``WATCHDOG_PID``, when set, names the one process the
    watchdog is for; a child that inherited the environment must not ping.
    """
    pid = environ.get("WATCHDOG_PID")
    if pid is not None and pid != str(os.getpid()):
        return None
    try:
        usec = int(environ.get("WATCHDOG_USEC", ""))
    except ValueError:
        return None
    if usec <= 0:
        return None
    return usec / 2_000_000


def _socket_address(name: str) -> str:
    # unix(7): an address whose first byte is NUL is in the abstract namespace.
    if name.startswith("@"):
        return "\0" + name[1:]
    return name
