"""The serving core's side of faults on demand: :mod:`echod.faults` decisions carried out.

:class:`~echod.faults.ConnectionFaults` says what to echo, when, and how a connection
ends; this driver holds the echo until it is due (one timer at a time, on the
backend's loop, through the core's ``call_later``), keeps what it holds under the
high-water mark by pausing the connection's reading, and ends it as told. A backend
supplies only the primitives of a :class:`Carrier`; the reactor backends and the
asyncio family do (``FaultyConnection``, ``FaultyEchoProtocol``). Faulty connections
are their own classes, chosen at accept, so a faithful connection's path has no test
for faults in it.
"""

from __future__ import annotations

import contextlib
import socket
import struct
import time
from collections.abc import Callable
from typing import Protocol

from echod.backends.base import Cancellable
from echod.faults import ConnectionFaults, End, Pieces
from echod.session import WaterMarks

# SO_LINGER on, zero seconds: close() sends RST (as the core's refusals do).
RESET = struct.pack("ii", 1, 0)


class Carrier(Protocol):
    """What a backend's faulty connection does when the driver says so."""

    def write(self, data: bytes) -> None:
        """Send ``data`` after everything written before it (queue what waits)."""

    def pause_reading(self) -> None: ...
    def resume_reading(self) -> None: ...
    def end_input(self) -> None:
        """The peer's end of input, held back until the echo before it was written."""

    def finish(self) -> None:
        """close-after: send what is written, then end the output (FIN); what the peer
        sends later is read and thrown away (the driver echoes nothing more), so that no
        unread input turns the close into a reset."""

    def reset(self) -> None:
        """reset-after: close at once with RST."""


Later = Callable[[float, Callable[[], object]], Cancellable]


def reset_socket(sock: socket.socket) -> None:
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, RESET)


class FaultDriver:
    """One faulty connection's held echo, its timer and its end."""

    __slots__ = ("carrier", "end", "eof", "faults", "later", "marks", "paused", "pieces", "timer")

    def __init__(
        self, carrier: Carrier, faults: ConnectionFaults, later: Later, marks: WaterMarks
    ) -> None:
        self.carrier = carrier
        self.faults = faults
        self.later = later
        self.marks = marks
        self.pieces = Pieces()
        self.timer: Cancellable | None = None
        self.paused = False
        self.eof = False  # the peer's end of input came, behind held echo
        self.end: End | None = None  # the fault's end, behind held echo

    def received(self, data: bytes) -> None:
        verdict = self.faults.received_data(data, time.monotonic())
        self.pieces.add(verdict.pieces)
        if verdict.end is not None:
            self.end = verdict.end
            if verdict.end is End.RESET:
                self.carrier.pause_reading()  # nothing more will be read
        self._run()
        if not self.paused and self.pieces.held >= self.marks.high and self.end is None:
            self.paused = True
            self.carrier.pause_reading()

    def end_of_input(self) -> None:
        self.eof = True
        self._run()

    def cancel(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None

    def _fire(self) -> None:
        self.timer = None
        self._run()

    def _run(self) -> None:
        """Write what is due; then end, or wait for the next piece's time."""
        if self.timer is not None:
            return  # the timer set for the head will write it, in order
        now = time.monotonic()
        for data in self.pieces.due(now):
            self.carrier.write(data)
        if self.paused and self.pieces.held <= self.marks.low:
            self.paused = False
            self.carrier.resume_reading()
        following = self.pieces.next_due()
        if following is not None:
            self.timer = self.later(max(following - now, 0.0), self._fire)
            return
        end, self.end = self.end, None
        if end is End.RESET:
            self.carrier.reset()
        elif end is End.CLOSE:
            self.carrier.finish()
        elif self.eof:
            self.eof = False
            self.carrier.end_input()
