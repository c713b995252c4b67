"""The echo server on gevent: one greenlet per connection, without monkey-patching.

Connections are ``gevent.socket`` sockets, so a greenlet's ``recv_into`` and
``sendall`` read like the threads backend's blocking loop while gevent's hub (libev or
libuv) switches greenlets wherever one would block. Nothing in the standard library is
patched: echod's other modules, and anything embedding echod, keep their real sockets.

The session rules (:mod:`echod.session`) hold the way they do for threads:

* every byte goes back once and in order, because one greenlet does both halves;
* pending output is at most one read: what ``send`` does not take at once is copied and
  handed to ``sendall``, which parks the greenlet until the client reads it, and a
  parked greenlet reads nothing more. That is the flow control (stricter than the water
  marks), and a connection holds at most one read's worth however much its client sends;
* on end of input everything read has already been sent, so half-close is just close.

Unlike threads, one receive buffer is shared by every connection (as on the reactor):
the first ``send`` is made with a zero timeout, so a greenlet never switches while the
buffer holds its bytes, and only an unsent tail is copied.

The trade-offs, honestly: everything runs in one thread, so echod on gevent uses one
core, as the reactor and asyncio do; a connection costs its greenlet's saved stack
slice, the socket and its two watchers: 9 KiB resident per idle connection, measured
over 1,000 of them on CPython 3.11, against 32 KiB for threads and 0.35 KiB on epoll; each switch is cheap but not free, and greenlet code that never blocks
(a bug, or a huge computation) stalls every connection and the heartbeat with it, which
the watchdog then notices. ``--max-connections 0`` means no cap, as on the reactor.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import gevent
import gevent.event
import gevent.socket

from echod.backends.base import (
    ACCEPT_BACKOFF,
    ACCEPT_BATCH,
    EXHAUSTED,
    PEER_GONE,
    RECEIVE_SIZE,
    Cancellable,
    ServingPolicy,
)
from echod.config import Config
from echod.lifecycle import HANDLED_SIGNALS, Lifecycle
from echod.logs import RateLimitedLog
from echod.net.listeners import describe

log = logging.getLogger("echod")

# How long the end of serve() waits for shut-down greenlets to report their last bytes.
JOIN_TIMEOUT = 1.0


@dataclass(frozen=True)
class GeventBackend:
    """Greenlets on gevent's hub, one per connection."""

    name: str = "gevent"

    def serve(
        self, listeners: Sequence[socket.socket], config: Config, lifecycle: Lifecycle
    ) -> None:
        GreenServer(listeners, config, lifecycle).run(self.name)


GEVENT = GeventBackend()


class Connection:
    """One client socket and the greenlet echoing on it."""

    __slots__ = ("idle_ticks", "pending", "server", "sock")

    def __init__(self, sock: Any, server: GreenServer) -> None:
        self.sock = sock  # a gevent.socket.socket
        self.server = server
        self.idle_ticks = 0
        self.pending = 0  # bytes of an unsent tail being handed to sendall

    def run(self) -> None:
        """The connection's greenlet: echo until end of input, an error or a shutdown."""
        server = self.server
        stats = server.stats
        buffer = server.buffer
        view = server.view
        sock = self.sock
        recv_into = sock.recv_into
        send = sock.send
        sendall = sock.sendall
        try:
            while True:
                received = recv_into(buffer)
                if not received:
                    break  # end of input: all of it was sent before this read
                self.idle_ticks = 0
                stats.bytes_in += received
                try:
                    # A zero timeout never parks the greenlet, so no other connection
                    # can refill the shared buffer while this send reads from it.
                    sent = send(view[:received], 0, 0.0)
                except BlockingIOError:
                    sent = 0
                stats.bytes_out += sent
                if sent < received:
                    tail = view[sent:received].tobytes()
                    self.pending = len(tail)
                    sendall(tail)
                    self.pending = 0
                    stats.bytes_out += len(tail)
        except OSError:
            pass  # ECONNRESET, EPIPE, or shut down by the server: the echo is over
        finally:
            server.closed(self)

    def has_pending(self) -> bool:
        return self.pending > 0

    def fileno(self) -> int:
        return int(self.sock.fileno())

    def close(self) -> None:
        """Wake the greenlet, wherever it waits; it closes the socket itself."""
        with contextlib.suppress(OSError):  # ENOTCONN: the peer reset it already
            self.sock.shutdown(socket.SHUT_RDWR)


class GreenServer(ServingPolicy):
    """Accepts in one greenlet per listener and spawns one greenlet per connection."""

    def __init__(
        self, listeners: Sequence[socket.socket], config: Config, lifecycle: Lifecycle
    ) -> None:
        self.listeners = list(listeners)
        self.config = config
        self.lifecycle = lifecycle
        self.stats = lifecycle.stats
        self.limit = config.max_connections
        self.buffer = bytearray(RECEIVE_SIZE)
        self.view = memoryview(self.buffer)
        self.connections: set[Connection] = set()
        self.room = gevent.event.Event()  # set while below the cap
        self.room.set()
        self.all_closed = gevent.event.Event()
        self.finished = gevent.event.Event()
        self.failure: BaseException | None = None
        self.acceptors: list[Any] = []
        self.timers: list[Any] = []
        self._warn = RateLimitedLog(log, interval=10.0)

    # Running ---------------------------------------------------------------------------
    def run(self, label: str) -> None:
        handlers = [
            gevent.signal_handler(signum, self.on_signal, signum) for signum in HANDLED_SIGNALS
        ]
        try:
            for listener in self.listeners:
                acceptor = gevent.spawn(self._accept_forever, listener)
                acceptor.link_exception(self._fail)
                self.acceptors.append(acceptor)
            self._every(self.lifecycle.heartbeat_interval, self.lifecycle.heartbeat)
            self.start_idle_sweeps()
            self.lifecycle.ready([describe(sock) for sock in self.listeners], label)
            self.finished.wait()
            if self.failure is not None:
                raise self.failure
        finally:
            for handler in handlers:
                handler.cancel()
            gevent.killall(self.timers)
            self.close_listeners()
            for conn in list(self.connections):
                conn.close()
            if self.connections:
                self.all_closed.wait(JOIN_TIMEOUT)
            self.lifecycle.stopped()

    def _fail(self, greenlet: Any) -> None:
        """An acceptor died of an unexpected error: let serve() raise it."""
        self.failure = greenlet.exception
        self.finished.set()

    # Primitives of the serving policy --------------------------------------------------
    def live_connections(self) -> list[Connection]:
        return list(self.connections)

    def finish(self) -> None:
        self.finished.set()

    def call_later(self, delay: float, callback: Callable[[], object]) -> Cancellable:
        timer = Greenlet(gevent.spawn_later(delay, callback))
        self.timers.append(timer.greenlet)
        return timer

    def call_every(self, interval: float, callback: Callable[[], object]) -> Cancellable:
        return Greenlet(self._every(interval, callback))

    def _every(self, interval: float, callback: Callable[[], object]) -> Any:
        """A greenlet calling ``callback`` every ``interval`` seconds until killed."""

        def repeat() -> None:
            while True:
                gevent.sleep(interval)
                callback()

        timer = gevent.spawn(repeat)
        self.timers.append(timer)
        return timer

    # Accepting -------------------------------------------------------------------------
    def _accept_forever(self, listener: socket.socket) -> None:
        """Accept on one (non-blocking, stdlib) listener until killed.

        The cap is checked, then accept() is called without switching in between, so
        several listeners never take more than the cap between them; past it, clients
        wait in the kernel's backlog as on the reactor.
        """
        tcp = listener.family != socket.AF_UNIX
        fileno = listener.fileno()
        limit = self.limit
        accepted = 0
        while True:
            if limit and len(self.connections) >= limit:
                self.room.clear()
                self.room.wait()
                continue
            if accepted >= ACCEPT_BATCH:
                accepted = 0
                gevent.sleep(0)  # a connection storm must not starve established clients
                continue
            try:
                sock, _ = listener.accept()
            except (BlockingIOError, InterruptedError):
                accepted = 0
                gevent.socket.wait_read(fileno)
                continue
            except OSError as exc:
                if exc.errno in EXHAUSTED:
                    self._warn.warning(
                        "exhausted",
                        "accept failed (%s): not accepting for %gs; %d connection(s) open",
                        os.strerror(exc.errno or 0),
                        ACCEPT_BACKOFF,
                        self.stats.connections_open,
                    )
                    gevent.sleep(ACCEPT_BACKOFF)  # clients wait in the backlog meanwhile
                    continue
                if exc.errno in PEER_GONE:
                    continue
                raise
            accepted += 1
            if tcp:
                # Echo replies are small and immediate: Nagle would hold each for an ACK.
                with contextlib.suppress(OSError):  # EINVAL on macOS after a reset
                    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            # Naming family, type and proto spares the three getsockopt calls of detection.
            green = gevent.socket.socket(sock.family, sock.type, sock.proto, sock.detach())
            conn = Connection(green, self)
            self.connections.add(conn)
            self.stats.opened()
            self.all_closed.clear()
            gevent.spawn(conn.run)

    def close_listeners(self) -> None:
        gevent.killall(self.acceptors)
        self.acceptors = []
        for listener in self.listeners:
            listener.close()

    # Closing ---------------------------------------------------------------------------
    def closed(self, conn: Connection) -> None:
        """Called by a connection's greenlet as its last act."""
        self.connections.discard(conn)
        self.stats.connections_open -= 1
        conn.sock.close()
        if not self.connections:
            self.all_closed.set()
            if self.lifecycle.draining:
                self.finished.set()
        if self.limit and len(self.connections) < self.limit:
            self.room.set()


@dataclass(frozen=True)
class Greenlet:
    """A timer greenlet seen as something to cancel, as the serving policy expects."""

    greenlet: Any

    def cancel(self) -> None:
        self.greenlet.kill(block=False)
