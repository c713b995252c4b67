"""A plain TCP connection on echod's reactor, apart from the server that makes it.

The server (:class:`~echod.backends.selector_backends.ReactorServer`) and the TLS
connection (:mod:`echod.backends.reactor_tls`) both build on this class; what it needs
of its server is :class:`ConnectionServer`, so neither module imports the other's.
"""

from __future__ import annotations

import socket
from typing import Protocol

from echod.lifecycle import Stats
from echod.loop import Call, Handler, Reactor
from echod.session import DONE, WANT_READ, WANT_WRITE, EchoSession, WaterMarks


class ConnectionServer(Protocol):
    """What a reactor connection uses of its server: the shared receive buffer, the
    counters, the reactor to change its registration on, and the hand-back at close."""

    marks: WaterMarks
    buffer: bytearray
    view: memoryview
    stats: Stats
    reactor: Reactor

    def forget(self, conn: Connection) -> None: ...


class Connection(EchoSession):
    """An accepted socket driven by the reactor through the rules of its session.

    While it only reads, which is how an idle connection waits, the reactor holds the
    connection itself as its handler and calls ``on_event``, which is ``on_readable``
    (in every subclass too): nothing is allocated per connection for the loop. Only
    while output is backed up does it register a :class:`~echod.loop.Call`.
    """

    # No ``fd``: a descriptor above 256 is an int object of its own (32 B per connection).
    __slots__ = ("events", "idle_ticks", "server", "sock")

    def __init__(self, sock: socket.socket, server: ConnectionServer) -> None:
        super().__init__(server.marks)
        self.sock = sock
        self.server = server
        self.events = WANT_READ  # registered with the selector; 0 once closed
        self.idle_ticks = 0

    def __init_subclass__(cls) -> None:
        # A subclass's own read path is what the reactor must call (TLS, faults).
        super().__init_subclass__()
        cls.on_event = cls.on_readable

    @property
    def fd(self) -> int:
        return self.sock.fileno()

    def has_pending(self) -> bool:
        return bool(self.pending)

    def fileno(self) -> int:
        return self.sock.fileno()  # -1 once closed

    def on_readable(self, mask: int) -> None:
        server = self.server
        try:
            received = self.sock.recv_into(server.buffer)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            self.close()  # ECONNRESET and kin: the peer is gone, and so is its echo
            return
        if not received:
            self.eof()
            self.sync()
            return
        self.idle_ticks = 0
        stats = server.stats
        stats.bytes_in += received
        view = server.view
        if self.pending:  # earlier output still waits: keep the order
            self.queue(view[:received])
            self.sync()
            return
        try:
            sent = self.sock.send(view[:received])
        except (BlockingIOError, InterruptedError):
            sent = 0
        except OSError:
            self.close()  # EPIPE, ECONNRESET
            return
        stats.bytes_out += sent
        if sent < received:
            self.queue(view[sent:received])
            self.sync()

    on_event = on_readable  # the reactor's call while registered as itself

    def on_writable(self, mask: int) -> None:
        try:
            sent = self.sock.send(self.pending)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            self.close()
            return
        self.server.stats.bytes_out += sent
        self.sent(sent)
        self.sync()

    def on_ready(self, mask: int) -> None:
        """Both directions registered: drain output first, then take more input.

        The mask is not consulted (the reactor may pass raw kernel bits); a direction that
        is not ready costs one EAGAIN, and only while output is backed up.
        """
        self.on_writable(mask)
        if self.events & WANT_READ:
            self.on_readable(mask)

    def sync(self) -> None:
        """Bring the selector registration in line with what the session wants."""
        wants = self.wants
        if wants == self.events:
            return
        if self.reading_paused and self.events & WANT_READ:  # just hit the high-water mark
            self.server.stats.flow_paused += 1
        if wants == DONE:
            self.close()
            return
        self.server.reactor.change_handler(self.fd, wants, self.handler_for(wants))
        self.events = wants

    def handler_for(self, wants: int) -> Handler:
        """The handler for what the session wants: reading (itself), writing, or both."""
        if wants == WANT_READ:
            return self
        return Call(self.on_writable if wants == WANT_WRITE else self.on_ready)

    def close(self) -> None:
        if not self.events:
            return
        self.events = 0
        self.server.forget(self)
