"""The request channel between the supervisor and one worker: a ``SOCK_SEQPACKET`` pair.

Signals merge, need masks across fork and kill a process that has not installed its
handlers yet; a socket pair does none of that. Each message is one packet, so it
arrives whole or not at all, and the end of the pair tells either side the other is
gone. A message is words: ``KIND ID [BODY...]``. The supervisor's requests carry an
id above 0 and the answer repeats it; what a worker says unasked carries 0.

Supervisor → worker:
    ``COLLECT id`` (fresh counters, for a scrape), ``REPORT id`` (log them too, for
    SIGUSR1), ``DRAIN id`` (stop accepting; finish the open connections; exit).
Worker → supervisor:
    ``READY 0``, ``ALIVE 0`` (the heartbeat), ``STATS id COUNTERS``
    (:meth:`~echod.lifecycle.Stats.encode`; the heartbeat's have id 0, and drain
    progress is their open count) and ``STOPPING id`` (it has begun draining).

Both ends are non-blocking: a peer too slow to read costs a message, never a stalled
loop; the heartbeat repeats whatever was lost.
"""

from __future__ import annotations

import contextlib
import socket
from dataclasses import dataclass

# A message is a few hundred bytes; a packet larger than this is not ours.
MAX_MESSAGE = 4096

COLLECT = "COLLECT"
REPORT = "REPORT"
DRAIN = "DRAIN"
READY = "READY"
ALIVE = "ALIVE"
STATS = "STATS"
STOPPING = "STOPPING"


@dataclass(frozen=True)
class Message:
    kind: str
    id: int = 0
    body: str = ""

    def encode(self) -> bytes:
        return f"{self.kind} {self.id} {self.body}".rstrip().encode()

    @classmethod
    def decode(cls, packet: bytes) -> Message:
        """The message a packet holds; ValueError for anything else."""
        kind, _, rest = packet.decode("ascii").partition(" ")
        number, _, body = rest.partition(" ")
        if not kind.isalpha() or not number.isdigit():
            raise ValueError(f"not a channel message: {packet[:80]!r}")
        return cls(kind, int(number), body)


class Channel:
    """One end of a worker's channel."""

    __slots__ = ("sock",)

    def __init__(self, sock: socket.socket) -> None:
        sock.setblocking(False)
        self.sock = sock

    @classmethod
    def pair(cls) -> tuple[Channel, Channel]:
        """The supervisor's end and the worker's end."""
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        return cls(ours), cls(theirs)

    def fileno(self) -> int:
        return self.sock.fileno()

    def send(self, message: Message) -> bool:
        try:
            self.sock.send(message.encode())
        except OSError:  # EAGAIN (the peer is behind) or EPIPE (the peer is gone)
            return False
        return True

    def receive(self) -> list[Message] | None:
        """Every message waiting; None once the other end has closed."""
        messages: list[Message] = []
        while True:
            try:
                packet = self.sock.recv(MAX_MESSAGE)
            except (BlockingIOError, InterruptedError):
                return messages
            except OSError:  # ECONNRESET: gone
                return messages or None
            if not packet:
                return messages or None
            with contextlib.suppress(ValueError, UnicodeDecodeError):
                messages.append(Message.decode(packet))

    def close(self) -> None:
        self.sock.close()
