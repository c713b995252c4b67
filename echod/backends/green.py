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

The life of the listeners and of every connection is the serving core's
(:mod:`echod.backends.serving`): here one greenlet per listener waits for it to be
readable and hands it to the core's accept loop.
"""

from __future__ import annotations

import contextlib
import socket
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import gevent
import gevent.event
import gevent.socket
import gevent.ssl

from echod.backends.base import RECEIVE_SIZE, Cancellable
from echod.backends.serving import ServingCore
from echod.config import Config
from echod.lifecycle import HANDLED_SIGNALS, Lifecycle
from echod.tls import TlsEndpoint

# Plaintext of one TLS record: a read never returns more.
TLS_RECORD = 16 * 1024


@dataclass(frozen=True)
class GeventBackend:
    """Greenlets on gevent's hub, one per connection."""

    name: str = "gevent"

    def serve(
        self, listeners: Sequence[socket.socket], config: Config, lifecycle: Lifecycle
    ) -> None:
        try:
            GreenServer(listeners, config, lifecycle).serve(self.name)
        finally:
            if threading.current_thread() is not threading.main_thread():
                # Embedded in a thread (echod.running): that thread's hub and its loop's
                # descriptors would outlive it.
                gevent.get_hub().destroy(destroy_loop=True)


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
                    stats.flow_paused += 1  # no reading until the client takes the tail
                    self.pending = len(tail)
                    sendall(tail)
                    self.pending = 0
                    stats.bytes_out += len(tail)
        except OSError:
            pass  # ECONNRESET, EPIPE, or shut down by the server: the echo is over
        finally:
            server.closed(self)

    def run_tls(self, tls: TlsEndpoint) -> None:
        """The greenlet of a TLS connection: handshake, then the blocking loop.

        Its own buffer of one TLS record's plaintext: ``SSL_write`` is all or nothing
        and must be retried with the same bytes, so the shared buffer's zero-timeout
        first ``send`` does not carry over; ``sendall`` parks the greenlet as before.
        """
        sock = self.sock
        stats = self.server.stats
        buffer = bytearray(TLS_RECORD)
        view = memoryview(buffer)
        try:
            try:
                sock.settimeout(tls.handshake_timeout or None)
                sock.do_handshake()
                sock.settimeout(None)
            except (OSError, ValueError) as exc:  # TimeoutError is an OSError
                tls.failed(exc)
                return
            tls.completed(sock)
            while True:
                received = sock.recv_into(buffer)
                if not received:
                    # The client's close_notify: everything read was sent, so answer
                    # with ours whatever the version.
                    sock.unwrap()
                    break
                self.idle_ticks = 0
                stats.bytes_in += received
                self.pending = received
                sock.sendall(view[:received])
                self.pending = 0
                stats.bytes_out += received
        except (OSError, ValueError):
            pass  # ECONNRESET, EPIPE, or shut down by the server: the echo is over
        finally:
            self.server.closed(self)

    def has_pending(self) -> bool:
        return self.pending > 0

    def fileno(self) -> int:
        return int(self.sock.fileno())

    def close(self) -> None:
        """Wake the greenlet, wherever it waits; it closes the socket itself."""
        with contextlib.suppress(OSError):  # ENOTCONN: the peer reset it already
            # gevent.socket's, also for a TLS socket: its SSLSocket.shutdown() would
            # drop the SSL object under the greenlet still reading through it.
            gevent.socket.socket.shutdown(self.sock, socket.SHUT_RDWR)


class GreenServer(ServingCore[Connection]):
    """The serving core on gevent's hub: a greenlet per listener and per connection."""

    def __init__(
        self, listeners: Sequence[socket.socket], config: Config, lifecycle: Lifecycle
    ) -> None:
        super().__init__(listeners, config, lifecycle)
        self.buffer = bytearray(RECEIVE_SIZE)
        self.view = memoryview(self.buffer)
        self.all_closed = gevent.event.Event()
        self.finished = gevent.event.Event()
        self.failure: BaseException | None = None
        self.acceptors: list[Any] = []
        self.readers: dict[int, Any] = {}  # by fd: greenlets watching for readability
        self.timers: list[Any] = []
        self.signal_handlers: list[Any] = []

    # What the serving core asks of a backend --------------------------------------------
    def handle_signals(self) -> None:
        self.signal_handlers = [
            gevent.signal_handler(signum, self.on_signal, signum) for signum in HANDLED_SIGNALS
        ]

    def wait(self) -> None:
        self.finished.wait()
        if self.failure is not None:
            raise self.failure

    def finish(self) -> None:
        self.finished.set()

    def begin(self, sock: socket.socket) -> Connection:
        # Naming family, type and proto spares the three getsockopt calls of detection.
        green = gevent.socket.socket(sock.family, sock.type, sock.proto, sock.detach())
        conn = Connection(green, self)
        self.all_closed.clear()
        gevent.spawn(conn.run)
        return conn

    def begin_tls(self, sock: socket.socket, tls: TlsEndpoint) -> Connection:
        green = gevent.ssl.SSLSocket(
            sock, server_side=True, do_handshake_on_connect=False, _context=tls.context
        )
        conn = Connection(green, self)
        self.all_closed.clear()
        gevent.spawn(conn.run_tls, tls)
        return conn

    def watch_listeners(self) -> None:
        for listener in self.listeners:
            acceptor = gevent.spawn(self._accept_while_watched, listener)
            acceptor.link_exception(self._fail)
            self.acceptors.append(acceptor)

    def unwatch_listeners(self) -> None:
        current = gevent.getcurrent()
        # Killed and waited for before a listener may be closed under their watchers;
        # the current one ends by itself once its batch returns.
        others = [acceptor for acceptor in self.acceptors if acceptor is not current]
        self.acceptors = []
        gevent.killall(others)

    def _accept_while_watched(self, listener: socket.socket) -> None:
        """Wait for clients on one (non-blocking, stdlib) listener; the core accepts.

        The core checks the cap and calls accept() without switching in between, so
        several listeners never take more than the cap between them.
        """
        fileno = listener.fileno()
        me = gevent.getcurrent()
        while me in self.acceptors:
            gevent.socket.wait_read(fileno)
            self.accept_from(listener)

    def watch_readable(self, sock: socket.socket, callback: Callable[[int], None]) -> None:
        """A greenlet per watched socket (the supervisor's channel): the callback may
        switch, which a watcher's callback on the hub may not."""
        fileno = sock.fileno()

        def watch() -> None:
            me = gevent.getcurrent()
            while self.readers.get(fileno) is me:
                gevent.socket.wait_read(fileno)
                callback(0)

        reader = gevent.spawn(watch)
        reader.link_exception(self._fail)
        self.readers[fileno] = reader

    def unwatch_readable(self, sock: socket.socket) -> None:
        reader = self.readers.pop(sock.fileno(), None)
        if reader is not None and reader is not gevent.getcurrent():
            reader.kill(block=False)

    def _fail(self, greenlet: Any) -> None:
        """An acceptor died of an unexpected error: let serve() raise it."""
        self.failure = greenlet.exception
        self.finished.set()

    def call_later(self, delay: float, callback: Callable[[], object]) -> Cancellable:
        # Live timers only: a one-shot that ran or was killed is dead and leaves the list
        # (out of descriptors, the core sets one a back-off second).
        self.timers = [t for t in self.timers if not t.dead]
        timer = Greenlet(gevent.spawn_later(delay, callback))
        self.timers.append(timer.greenlet)
        return timer

    def call_every(self, interval: float, callback: Callable[[], object]) -> Cancellable:
        def repeat() -> None:
            while True:
                gevent.sleep(interval)
                callback()

        timer = gevent.spawn(repeat)
        self.timers.append(timer)
        return Greenlet(timer)

    def settle(self, timeout: float) -> None:
        self.all_closed.wait(timeout)

    def close_loop(self) -> None:
        for handler in self.signal_handlers:
            handler.cancel()
        readers, self.readers = list(self.readers.values()), {}
        gevent.killall([*self.timers, *readers])

    # Closing ---------------------------------------------------------------------------
    def closed(self, conn: Connection) -> None:
        """Called by a connection's greenlet as its last act."""
        conn.sock.close()
        self.release(conn)
        if not self.connections:
            self.all_closed.set()


@dataclass(frozen=True)
class Greenlet:
    """A timer greenlet seen as something to cancel, as the serving core expects."""

    greenlet: Any

    def cancel(self) -> None:
        self.greenlet.kill(block=False)
