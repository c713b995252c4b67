"""A socket pair that wakes a loop blocked in the kernel: from a signal or another thread.

As trio's ``_wakeup_socketpair.py``: the loop watches the read end; a signal (through
``signal.set_wakeup_fd``) or another thread (through :meth:`WakeupSocketpair.wakeup`)
writes one byte to the other end, so the wait returns without any timeout polling.
Both ends are non-blocking: a full pair already holds a pending wakeup, so a write
that would block can be dropped, and a handler or a thread never blocks on it.
"""

from __future__ import annotations

import contextlib
import signal
import socket


class WakeupSocketpair:
    """The self-pipe of one loop; ``fileno()`` is the end to watch for reading."""

    def __init__(self) -> None:
        self.wakeup_sock, self.write_sock = socket.socketpair()
        self.wakeup_sock.setblocking(False)
        self.write_sock.setblocking(False)
        # The kernel buffer only needs to hold one byte to do its job; a small one keeps
        # a flood of signals from costing memory.
        with contextlib.suppress(OSError):
            self.write_sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 1)
        self._old_wakeup_fd: int | None = None

    def fileno(self) -> int:
        return self.wakeup_sock.fileno()

    def wakeup(self) -> None:
        """Make the loop's wait return; safe from any thread and from signal handlers."""
        with contextlib.suppress(BlockingIOError, OSError):  # full: a wakeup is pending
            self.write_sock.send(b"\0")

    def drain(self) -> bytes:
        """Consume every pending wakeup, so the read end stops being ready.

        Returns what was written: for signals, one byte per signal number, which a loop
        that queues signals (the supervisor) dispatches on.
        """
        received = bytearray()
        with contextlib.suppress(BlockingIOError, InterruptedError):
            while chunk := self.wakeup_sock.recv(4096):
                received += chunk
        return bytes(received)

    def wakeup_on_signals(self) -> None:
        """Have the interpreter write here whenever a signal arrives (main thread only).

        The previous wakeup descriptor is kept and restored by :meth:`close`, so a loop
        run inside another (a test, an embedding program) leaves it as it found it.
        """
        self._old_wakeup_fd = signal.set_wakeup_fd(
            self.write_sock.fileno(), warn_on_full_buffer=False
        )

    def close(self) -> None:
        if self._old_wakeup_fd is not None:
            with contextlib.suppress(ValueError):  # not the main thread any more
                signal.set_wakeup_fd(self._old_wakeup_fd)
            self._old_wakeup_fd = None
        self.wakeup_sock.close()
        self.write_sock.close()
