"""Faults on demand: what a deliberately misbehaving echo connection does, with no IO.

A client library is tested against peers that are slow, reset, stall or corrupt; these
rules say what echod does instead of a faithful echo when asked to (``--fault``,
``echod.running(faults=...)``). Like :mod:`echod.session`, they only take facts in
(bytes that arrived, the time) and hand decisions out (what to echo, when, and how
the connection ends); the serving core's :mod:`echod.backends.fault_driver` carries
them out on every backend that can (the reactor backends, asyncio and uvloop).

Specs (sizes take K/KiB, M/MiB, G/GiB, powers of 1024; times s, ms or us):

``delay:TIME``
    every read is echoed TIME after it arrived (order kept).
``bandwidth:SIZE/s``
    the echo leaves at no more than SIZE bytes per second, in pieces of 1/20 s.
``drop-byte:N``
    the byte at offset N of the stream (the first is 0) is never echoed.
``reset-after:N``
    once N bytes have arrived, N are echoed and the connection is reset (RST); echo
    the kernel still held is lost with it, as with any reset.
``close-after:N``
    once N bytes have arrived, N are echoed, then the server ends its output (FIN):
    the client reads the end of the stream. N counts bytes, since a stream has no
    messages. Later input is read and thrown away until the client closes, so that
    unread input cannot turn the close into a reset.
``stall-after:N``
    once N bytes have arrived, N are echoed and nothing more ever is: later input is
    read and thrown away, so the client sees a peer that is up and silent.

A server's faults apply to the first of every ``every`` connections (every=1: all of
them; every=2: the 1st, 3rd, 5th...), so a client's retry path can be tested.
"""

from __future__ import annotations

import enum
import re
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass

# Bandwidth-limited echo leaves in pieces this many times a second, so the client sees
# a steady stream instead of one burst per read.
PIECES_PER_SECOND = 20

_SIZE = re.compile(r"^\s*(\d+)\s*([kmg](?:i?b)?|b)?\s*$", re.IGNORECASE)
_TIME = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(s|ms|us)\s*$", re.IGNORECASE)
_SCALE = {"": 1, "b": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30}
_SECONDS = {"s": 1.0, "ms": 1e-3, "us": 1e-6}


class FaultError(ValueError):
    """A fault spec that cannot be used; its message is one line (config: ConfigError)."""


class End(enum.Enum):
    """How a faulty connection ends once its byte count is reached."""

    RESET = "reset-after"
    CLOSE = "close-after"
    STALL = "stall-after"


KINDS = ("delay", "bandwidth", "drop-byte", *(end.value for end in End))
_USAGE = (
    "faults are delay:TIME, bandwidth:SIZE/s, drop-byte:N, reset-after:N, "
    "close-after:N or stall-after:N (e.g. delay:50ms, reset-after:1MiB)"
)


@dataclass(frozen=True)
class Fault:
    """One parsed spec: its kind and amount (seconds, bytes, or bytes per second)."""

    kind: str
    amount: float

    def __str__(self) -> str:
        if self.kind == "delay":
            return f"delay:{self.amount * 1e3:g}ms"
        if self.kind == "bandwidth":
            return f"bandwidth:{self.amount:g}/s"
        return f"{self.kind}:{int(self.amount)}"


def size(text: str) -> int:
    match = _SIZE.match(text)
    if match is None:
        raise ValueError(f"{text!r} is not a size (such as 1000, 4KiB, 1M)")
    return int(match.group(1)) * _SCALE[(match.group(2) or "")[:1].lower()]


def duration(text: str) -> float:
    match = _TIME.match(text)
    if match is None:
        raise ValueError(f"{text!r} is not a time (such as 50ms, 1s, 200us)")
    return float(match.group(1)) * _SECONDS[match.group(2).lower()]


def parse_fault(text: str | Fault) -> Fault:
    """``kind:amount`` as the module docstring lists them; FaultError says what is wrong."""
    if isinstance(text, Fault):
        return text
    kind, colon, amount = text.strip().partition(":")
    kind = kind.lower()
    if not colon or kind not in KINDS:
        raise FaultError(f"fault {text!r}: {_USAGE}")
    try:
        if kind == "delay":
            return Fault(kind, duration(amount))
        if kind == "bandwidth":
            rate, slash, unit = amount.rpartition("/")
            if not slash or unit.strip().lower() != "s" or size(rate) < 1:
                raise ValueError(f"{amount!r} is not a rate of at least 1 byte per second (SIZE/s)")
            return Fault(kind, size(rate))
        return Fault(kind, size(amount))
    except ValueError as exc:
        raise FaultError(f"fault {text!r}: {exc}") from None


@dataclass(frozen=True)
class Verdict:
    """What to do with one read: echo ``pieces`` (at monotonic times, in order), then
    end the connection as ``end`` says (None: go on)."""

    pieces: Sequence[tuple[float, bytes]]
    end: End | None = None


class ConnectionFaults:
    """The faults of one connection: fed every read, says what to echo and when."""

    __slots__ = ("delay", "drop", "end", "ended", "last", "limit", "rate", "received")

    def __init__(self, faults: Sequence[Fault]) -> None:
        self.delay = 0.0
        self.rate = 0.0
        self.drop: int | None = None
        self.limit: int | None = None  # bytes after which ``end`` strikes
        self.end: End | None = None
        for fault in faults:
            if fault.kind == "delay":
                self.delay = max(self.delay, fault.amount)
            elif fault.kind == "bandwidth":
                self.rate = fault.amount if not self.rate else min(self.rate, fault.amount)
            elif fault.kind == "drop-byte":
                self.drop = (
                    int(fault.amount) if self.drop is None else min(self.drop, int(fault.amount))
                )
            elif self.limit is None or fault.amount < self.limit:
                self.limit, self.end = int(fault.amount), End(fault.kind)
        self.received = 0  # stream offset of the next byte to arrive
        self.ended = False  # the end has struck (a stall reads on and echoes nothing)
        self.last = 0.0  # when the last piece was due: later pieces are not earlier

    def received_data(self, data: bytes, now: float) -> Verdict:
        """``data`` arrived at ``now``: what to echo of it, when, and whether to end."""
        if self.ended:
            self.received += len(data)
            return Verdict(())  # stalled: read and thrown away
        start = self.received
        self.received += len(data)
        end = None
        if self.limit is not None and self.received >= self.limit:
            data = data[: max(self.limit - start, 0)]
            end = self.end
            self.ended = True
        if self.drop is not None and start <= self.drop < start + len(data):
            at = self.drop - start
            data = data[:at] + data[at + 1 :]
        return Verdict(self._schedule(data, now), end)

    def _schedule(self, data: bytes, now: float) -> list[tuple[float, bytes]]:
        if not data:
            return []
        due = max(now + self.delay, self.last)
        if not self.rate:
            self.last = due
            return [(due, data)]
        piece = max(int(self.rate / PIECES_PER_SECOND), 1)
        pieces = []
        for offset in range(0, len(data), piece):
            chunk = data[offset : offset + piece]
            pieces.append((due, chunk))
            due += len(chunk) / self.rate
        self.last = due  # the next piece waits for this one's share of the second
        return pieces


class FaultPlan:
    """A server's faults and which connections they strike."""

    __slots__ = ("connections", "every", "faults")

    def __init__(self, faults: Sequence[Fault], every: int = 1) -> None:
        if every < 1:
            raise FaultError(f"fault every must be at least 1, not {every}")
        self.faults = tuple(faults)
        self.every = every
        self.connections = 0

    def __bool__(self) -> bool:
        return bool(self.faults)

    def next_connection(self) -> ConnectionFaults | None:
        """The faults of the connection just accepted, or None for a faithful echo."""
        self.connections += 1
        if not self.faults or (self.connections - 1) % self.every:
            return None
        return ConnectionFaults(self.faults)

    def describe(self) -> str:
        share = (
            "every connection"
            if self.every == 1
            else f"the first of every {self.every} connections"
        )
        return f"{', '.join(map(str, self.faults))} on {share}"


class Pieces:
    """Echo waiting for its time, in order (a FIFO: two pieces due at once keep theirs)."""

    __slots__ = ("held", "queue")

    def __init__(self) -> None:
        self.queue: deque[tuple[float, bytes]] = deque()
        self.held = 0

    def add(self, pieces: Sequence[tuple[float, bytes]]) -> None:
        for at, data in pieces:
            self.queue.append((at, data))
            self.held += len(data)

    def due(self, now: float) -> list[bytes]:
        ready = []
        while self.queue and self.queue[0][0] <= now:
            data = self.queue.popleft()[1]
            self.held -= len(data)
            ready.append(data)
        return ready

    def next_due(self) -> float | None:
        return self.queue[0][0] if self.queue else None
