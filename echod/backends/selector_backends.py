"""The echo server on echod's own reactor, one backend per stdlib selector.

``select``, ``poll``, ``epoll``, ``kqueue`` and ``devpoll`` differ only by the selector
class named in their :class:`SelectorBackend` row (and select's descriptor ceiling);
the server code below is shared. Per-message work is the product, so the hot path is
kept flat: one shared receive buffer filled with ``recv_into``, an immediate ``send``
of what was read, and a copy of only the unsent tail. A connection's registration with
the selector changes only when what it wants changes (output backs up or drains), never
per message.
"""

from __future__ import annotations

import contextlib
import logging
import os
import selectors
import socket
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from echod.backends.base import (
    ACCEPT_BACKOFF,
    ACCEPT_BATCH,
    EXHAUSTED,
    PEER_GONE,
    RECEIVE_SIZE,
    ServingPolicy,
    SpareDescriptor,
)
from echod.backends.reactor import Listening, Reactor, Timer
from echod.config import Config
from echod.lifecycle import HANDLED_SIGNALS, Lifecycle
from echod.logs import RateLimitedLog
from echod.net.listeners import describe
from echod.session import DONE, WANT_READ, WANT_WRITE, EchoSession
from echod.udp.serving import DatagramService

log = logging.getLogger("echod")

assert (selectors.EVENT_READ, selectors.EVENT_WRITE) == (WANT_READ, WANT_WRITE)


@dataclass(frozen=True)
class SelectorBackend:
    """A reactor backend: which ``selectors`` class it runs on, and nothing else."""

    name: str
    selector: str  # attribute of the selectors module
    # select(2) cannot watch descriptors at or above FD_SETSIZE: such connections are
    # refused, or the whole loop would die on the next select() call.
    fd_limit: int | None = None

    def available(self) -> bool:
        return hasattr(selectors, self.selector)

    def serve(
        self, listeners: Sequence[socket.socket], config: Config, lifecycle: Lifecycle
    ) -> None:
        selector: selectors.BaseSelector = getattr(selectors, self.selector)()
        server = ReactorServer(Reactor(selector), listeners, config, lifecycle, self.fd_limit)
        label = self.name
        if self.name == "selectors":
            label = f"selectors ({type(selector).__name__})"
        server.run(label)


SELECT = SelectorBackend("select", "SelectSelector", fd_limit=1024)
POLL = SelectorBackend("poll", "PollSelector")
EPOLL = SelectorBackend("epoll", "EpollSelector")
KQUEUE = SelectorBackend("kqueue", "KqueueSelector")
DEVPOLL = SelectorBackend("devpoll", "DevpollSelector")
DEFAULT = SelectorBackend("selectors", "DefaultSelector")


class Connection(EchoSession):
    """An accepted socket driven by the reactor through the rules of its session."""

    __slots__ = ("events", "idle_ticks", "server", "sock")

    def __init__(self, sock: socket.socket, server: ReactorServer) -> None:
        super().__init__(server.marks)
        self.sock = sock
        self.server = server
        self.events = WANT_READ  # registered with the selector; 0 once closed
        self.idle_ticks = 0

    def has_pending(self) -> bool:
        return bool(self.pending)

    def fileno(self) -> int:
        return self.sock.fileno()

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
        if wants == DONE:
            self.close()
            return
        callback: Callable[[int], None]
        if wants == WANT_READ:
            callback = self.on_readable
        elif wants == WANT_WRITE:
            callback = self.on_writable
        else:
            callback = self.on_ready
        self.server.reactor.change(self.sock, wants, callback)
        self.events = wants

    def close(self) -> None:
        if not self.events:
            return
        self.events = 0
        self.server.forget(self)


class ReactorServer(ServingPolicy):
    """Accepts on the listeners and serves echo connections until told to stop."""

    def __init__(
        self,
        reactor: Reactor,
        listeners: Sequence[socket.socket],
        config: Config,
        lifecycle: Lifecycle,
        fd_limit: int | None,
    ) -> None:
        self.reactor = reactor
        self.listeners, self.udp = DatagramService.take(listeners, config, lifecycle.stats)
        self.config = config
        self.lifecycle = lifecycle
        self.stats = lifecycle.stats
        self.marks = config.marks
        self.fd_limit = fd_limit
        self.buffer = bytearray(RECEIVE_SIZE)
        self.view = memoryview(self.buffer)
        self.connections: set[Connection] = set()
        self.listening = Listening(reactor, self.listeners, self._accept)
        self._spare = SpareDescriptor()
        self._warn = RateLimitedLog(log, interval=10.0)

    # Running ---------------------------------------------------------------------------
    def run(self, label: str) -> None:
        reactor = self.reactor
        reactor.handle_signals(HANDLED_SIGNALS, self.on_signal)
        self._start_accepting()
        reactor.call_every(self.lifecycle.heartbeat_interval, self.lifecycle.heartbeat)
        self.start_idle_sweeps()
        self.udp.start(
            lambda sock, callback: reactor.add(sock, WANT_READ, callback), reactor.remove
        )
        self.lifecycle.ready(
            [describe(sock) for sock in self.listeners] + self.udp.addresses, label
        )
        try:
            reactor.run()
        finally:
            self.close_listeners()
            for conn in list(self.connections):
                conn.close()
            self._spare.close()
            reactor.close()
            self.lifecycle.stopped()

    # Primitives of the serving policy --------------------------------------------------
    def live_connections(self) -> list[Connection]:
        return list(self.connections)

    def finish(self) -> None:
        self.reactor.stop()

    def call_later(self, delay: float, callback: Callable[[], object]) -> Timer:
        return self.reactor.call_later(delay, callback)

    def call_every(self, interval: float, callback: Callable[[], object]) -> Timer:
        return self.reactor.call_every(interval, callback)

    # Accepting -------------------------------------------------------------------------
    def _start_accepting(self) -> None:
        if not self.lifecycle.draining:
            self.listening.start()

    def _stop_accepting(self) -> None:
        self.listening.stop()

    def close_listeners(self) -> None:
        self.listening.close()
        self.udp.close()

    def _accept(self, listener: socket.socket) -> None:
        limit = self.config.max_connections
        tcp = listener.family != socket.AF_UNIX
        for _ in range(ACCEPT_BATCH):
            if limit and self.stats.connections_open >= limit:
                # Past the cap new clients wait in the kernel's backlog, as HAProxy's
                # maxconn does, instead of being accepted only to be dropped.
                self._stop_accepting()
                return
            try:
                sock, _ = listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                if exc.errno in EXHAUSTED:
                    self._shed(listener, exc)
                    return
                if exc.errno in PEER_GONE:
                    continue  # the client left before we got to it, or a firewall said no
                raise
            if self.fd_limit is not None and sock.fileno() >= self.fd_limit:
                self._warn.warning(
                    "fd-limit",
                    "select backend cannot watch descriptor %d (FD_SETSIZE %d): connection refused; "
                    "use the poll or epoll backend for more connections",
                    sock.fileno(),
                    self.fd_limit,
                )
                sock.close()
                self.stats.connections_dropped += 1
                continue
            sock.setblocking(False)
            if tcp:
                # A peer that reset before we got here makes this fail on some systems
                # (macOS: EINVAL); the first read will notice and close it.
                with contextlib.suppress(OSError):
                    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            conn = Connection(sock, self)
            self.reactor.add(sock, WANT_READ, conn.on_readable)
            self.connections.add(conn)
            self.stats.opened()

    def _shed(self, listener: socket.socket, exc: OSError) -> None:
        """Out of descriptors: refuse the waiting clients instead of spinning on them.

        If even the spare cannot be taken back, stop accepting for a moment.
        """
        self._warn.warning(
            "exhausted",
            "accept failed (%s): refusing new connections until descriptors free up; "
            "%d connection(s) open",
            os.strerror(exc.errno or 0),
            self.stats.connections_open,
        )
        self.stats.connections_dropped += self._spare.shed([listener])
        if self._spare.fd is None:
            self._stop_accepting()
            self.reactor.call_later(ACCEPT_BACKOFF, self._start_accepting)

    # Closing ---------------------------------------------------------------------------
    def forget(self, conn: Connection) -> None:
        self.reactor.remove(conn.sock)
        conn.sock.close()
        self.connections.discard(conn)
        self.stats.connections_open -= 1
        if self.lifecycle.draining:
            if not self.connections:
                self.reactor.stop()
        elif not self.listening.active and self._spare.fd is not None:
            self._start_accepting()
