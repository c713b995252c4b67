"""What one echo connection is, with no IO in it: the reactor's rules about bytes.

Like h11's connection object, an :class:`EchoSession` only takes facts in (bytes that
could not be sent yet, bytes the socket took, end of input) and says what the
connection wants next; its tests drive it with byte strings alone. It serves the
reactor backends (:mod:`echod.backends.selector_backends`), the only ones that keep
their own output buffer. The other backends cannot use it without giving up what makes
them what they are: asyncio's transports own their buffer (the protocol maps the water
marks onto ``set_write_buffer_limits``), and threads and greenlets block in ``sendall``,
which holds at most one read. For every backend the shared definition of these rules is
the contract suite, ``tests/contract``, run against each of them:

* every byte received is sent back once, in order (RFC 862);
* output that the peer does not take waits in ``pending``; past ``high_water`` the
  connection stops reading until ``pending`` drains to ``low_water`` or below, so a
  client that sends without reading costs at most ``high_water`` plus one read;
* on end of input the connection still sends everything pending, then closes.

The life of a connection around these rules (admitting, counting, releasing, draining)
is the serving core's: :mod:`echod.backends.serving`.
"""

from __future__ import annotations

from dataclasses import dataclass

# Wants, as a bit mask equal to selectors.EVENT_READ / EVENT_WRITE so the reactor can
# hand it to the selector unchanged. Zero means the session is finished.
WANT_READ = 1
WANT_WRITE = 2
DONE = 0

_NOTHING = b""


@dataclass(frozen=True, slots=True)
class WaterMarks:
    """Flow-control thresholds shared by every connection of a server."""

    high: int = 64 * 1024
    low: int = 16 * 1024

    def __post_init__(self) -> None:
        if self.high < 1:
            raise ValueError("high water mark must be at least 1 byte")
        if not 0 <= self.low <= self.high:
            raise ValueError("low water mark must be between 0 and the high water mark")


class EchoSession:
    """Pending output, flow control and half-close of one echo connection."""

    __slots__ = ("eof_received", "marks", "pending", "reading_paused", "wants")

    def __init__(self, marks: WaterMarks) -> None:
        self.marks = marks
        # An idle connection holds no buffer of its own: ``pending`` is the shared empty
        # bytes until output backs up, and returns to it once drained.
        self.pending: bytes | bytearray = _NOTHING
        self.reading_paused = False
        self.eof_received = False
        self.wants = WANT_READ

    def queue(self, data: bytes | bytearray | memoryview) -> int:
        """Keep output the socket did not take; returns the new wants."""
        if self.pending:
            self.pending += data  # bytearray once non-empty
        else:
            self.pending = bytearray(data)
        if not self.reading_paused and len(self.pending) >= self.marks.high:
            self.reading_paused = True
        return self._update()

    def sent(self, count: int) -> int:
        """Drop ``count`` bytes the socket took from the front of pending output."""
        pending = self.pending
        if count >= len(pending):
            self.pending = _NOTHING
        else:
            del pending[:count]  # type: ignore[union-attr]  # bytearray while non-empty
        if self.reading_paused and len(self.pending) <= self.marks.low:
            self.reading_paused = False
        return self._update()

    def eof(self) -> int:
        """The peer finished sending: flush what is pending, then finish."""
        self.eof_received = True
        return self._update()

    @property
    def pending_size(self) -> int:
        return len(self.pending)

    def _update(self) -> int:
        wants = WANT_WRITE if self.pending else DONE
        if not (self.eof_received or self.reading_paused):
            wants |= WANT_READ
        self.wants = wants
        return wants
