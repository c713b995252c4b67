"""The echo server on blocking sockets, one thread per connection.

Each connection's thread loops ``recv_into`` its own buffer, then ``sendall`` of exactly
what it read, so the session rules (:mod:`echod.session`) hold by construction rather
than through an :class:`~echod.session.EchoSession`:

* every byte goes back once and in order, because one thread does both halves;
* pending output is at most one read: a client that stops reading blocks its thread in
  ``sendall``, and a blocked thread reads nothing more. That is this model's flow
  control, stricter than the water marks (reading stops as soon as anything waits), and
  a connection holds one ``RECEIVE_SIZE`` buffer however much its client sends;
* on end of input everything read has already been sent, so half-close is just close.

The main thread never reads or writes a client socket (as gunicorn's arbiter never
does): it runs the serving core (:mod:`echod.backends.serving`) on echod's
:class:`~echod.loop.Reactor` over the listeners, signals and timers,
accepting connections, sending heartbeats (so a stuck main thread stops the watchdog)
and running the shared idle and drain sweeps. A connection's thread closes its own
socket, so a descriptor is never closed under a blocked call, then hands the release
to the main thread (``call_soon_threadsafe``): the set of connections and the
counters are the main thread's alone, and a freed descriptor wakes the accept loop at
once. Other threads are stopped only with ``shutdown(SHUT_RDWR)``, which wakes one
blocked in ``recv`` or ``sendall``.

The trade-offs, honestly:

* memory: a connection costs a thread (``STACK_SIZE`` of address space, of which a few
  pages are touched) plus its ``RECEIVE_SIZE`` buffer: 32 KiB resident per idle
  connection, measured over 1,000 of them on CPython 3.11, against 0.35 KiB on epoll;
* the GIL: ``recv`` and ``send`` release it, so threads overlap in the kernel, but the
  Python part of every message runs one thread at a time, and each hand-over of the GIL
  is a context switch. Many busy connections serve slower than on the reactor; a few
  connections see good latency, and the code is the simplest of the backends;
* the cap: unbounded threads run out of memory or of the pid limit long before anything
  tells the operator, so ``--max-connections 0`` here means ``DEFAULT_MAX_CONNECTIONS``
  (10,000 threads: 320 MiB resident, 2.5 GiB of stacks reserved). It is not taken from
  the open-file limit: running out of descriptors (or threads) is the serving core's
  shedding, and a low limit must not shrink the cap below what the descriptors allow.
"""

from __future__ import annotations

import _thread
import contextlib
import logging
import select
import socket
import ssl
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass

from echod.backends.on_reactor import ReactorServingCore
from echod.backends.serving import CannotStart
from echod.config import Config
from echod.lifecycle import Lifecycle
from echod.loop import Reactor, io_manager
from echod.tls import TlsEndpoint, failure_of, handshake_of

log = logging.getLogger("echod")

# The echo loop needs little C stack: it ran, logged an exception and printed an
# uncaught traceback on 32 KiB (CPython 3.11). 256 KiB leaves eight times that for
# C-level recursion, and 10,000 threads then reserve 2.5 GiB of address space instead
# of the 80 GiB that the usual 8 MiB default would.
STACK_SIZE = 256 * 1024
# Each thread owns its buffer, so its size is paid once per connection, idle or not:
# 16 KiB keeps 10,000 connections at 160 MiB of buffers where the reactor's 64 KiB would
# cost 640 MiB. A loopback read rarely exceeds it by much; a bulk client pays more
# recv/send pairs per megabyte.
RECEIVE_SIZE = 16 * 1024
DEFAULT_MAX_CONNECTIONS = 10_000


@dataclass(frozen=True)
class ThreadBackend:
    """Blocking sockets, one thread per connection."""

    name: str = "threads"

    def serve(
        self, listeners: Sequence[socket.socket], config: Config, lifecycle: Lifecycle
    ) -> None:
        server = ThreadServer(listeners, config, lifecycle)
        previous_stack = threading.stack_size(STACK_SIZE)
        try:
            server.serve(self.name)
        finally:
            threading.stack_size(previous_stack)


THREADS = ThreadBackend()


def connection_cap(max_connections: int) -> int:
    """Connections served at once: the configured cap, or this backend's default."""
    return max_connections or DEFAULT_MAX_CONNECTIONS


class Connection:
    """One client socket and the thread echoing on it.

    The thread writes only ``received``, ``sent`` and (under the server's lock)
    ``open``; the main thread reads them for the counters and the sweeps, and keeps the
    idle count itself (see ``idle_ticks``).
    """

    __slots__ = ("_seen", "_ticks", "open", "received", "sent", "server", "sock", "tls")

    def __init__(
        self, sock: socket.socket, server: ThreadServer, tls: TlsEndpoint | None = None
    ) -> None:
        self.sock = sock
        self.server = server
        self.tls = tls
        self.received = 0
        self.sent = 0
        self.open = True
        self._seen = 0
        self._ticks = 0

    def run(self) -> None:
        """The connection's thread: echo until end of input, an error or a shutdown."""
        sock = self.sock
        buffer = bytearray(RECEIVE_SIZE)
        view = memoryview(buffer)
        recv_into = sock.recv_into
        sendall = sock.sendall
        try:
            if self.tls is not None and not self.handshake():
                return
            while True:
                received = recv_into(buffer)
                if not received:
                    # End of input: all of it was sent before this read. Over TLS it
                    # was the client's close_notify (TLS 1.2 or 1.3 alike, nothing is
                    # owed): answer with ours.
                    if self.tls is not None:
                        sock.unwrap()  # type: ignore[attr-defined]  # an SSLSocket
                    break
                self.received += received
                sendall(view[:received])
                self.sent += received
        except (OSError, ValueError):
            pass  # ECONNRESET, EPIPE, or shut down by the server: the echo is over
        finally:
            self.server.closed(self)

    def handshake(self) -> bool:
        """TLS: the handshake, bounded by the endpoint's timeout, counted either way."""
        sock: ssl.SSLSocket = self.sock  # type: ignore[assignment]
        tls = self.tls
        assert tls is not None
        try:
            sock.settimeout(tls.handshake_timeout or None)
            sock.do_handshake()
            sock.settimeout(None)
        except (OSError, ValueError) as exc:  # TimeoutError is an OSError
            reason = failure_of(exc)
            # Counted by the main thread, which alone touches the counters (the
            # heartbeat encodes them there).
            self.server.reactor.call_soon_threadsafe(lambda: tls.counters.failed(reason))
            return False
        outcome = handshake_of(sock)
        self.server.reactor.call_soon_threadsafe(lambda: tls.counters.handshake(*outcome))
        return True

    # As the sweeps in the main thread see it ------------------------------------------
    @property
    def idle_ticks(self) -> int:
        # Only the main thread touches the count. Were the connection's thread to reset
        # it on each read, the sweep's "+= 1" could overwrite that reset and close a
        # busy connection; instead a read shows up as a change of ``received``.
        received = self.received
        if received != self._seen:
            self._seen = received
            self._ticks = 0
        return self._ticks

    @idle_ticks.setter
    def idle_ticks(self, value: int) -> None:
        self._ticks = value

    def has_pending(self) -> bool:
        return self.received != self.sent

    def fileno(self) -> int:
        return self.sock.fileno()

    def close(self) -> None:
        """Wake the thread, wherever it blocks; it closes the socket itself."""
        with self.server.lock:
            if self.open:  # else its thread closed it, and the number may be reused
                with contextlib.suppress(OSError):  # ENOTCONN: the peer reset it already
                    # socket.socket's, also for an SSLSocket: its own shutdown() drops
                    # the SSL object under the thread still reading through it.
                    socket.socket.shutdown(self.sock, socket.SHUT_RDWR)


class ThreadServer(ReactorServingCore[Connection]):
    """The serving core on a reactor in the main thread, one echo thread per connection."""

    def __init__(
        self, listeners: Sequence[socket.socket], config: Config, lifecycle: Lifecycle
    ) -> None:
        super().__init__(
            Reactor(io_manager("DefaultSelector")),
            listeners,
            config,
            lifecycle,
            limit=connection_cap(config.max_connections),
        )
        # Orders a thread's close of its socket against the main thread's shutdown of it;
        # never held across blocking IO.
        self.lock = threading.Lock()
        # Bytes of connections already released; live ones count in their Connection.
        self.closed_received = 0
        self.closed_sent = 0

    # What the serving core asks of a backend --------------------------------------------
    def start(self, label: str) -> None:
        if not self.config.max_connections:
            log.info("threads backend: at most %d connections at once", self.limit)
        super().start(label)

    def begin(self, sock: socket.socket) -> Connection:
        sock.setblocking(True)
        conn = Connection(sock, self)
        try:
            # Not threading.Thread: its start() waits for the new thread to run, and its
            # end takes a module-wide lock, both hand-overs of the GIL. When thousands
            # of connections end at once (clients holding every descriptor leave), those
            # hand-overs are what keeps the main thread from accepting the next client.
            _thread.start_new_thread(conn.run, ())
        except RuntimeError as exc:  # "can't start new thread": out of memory or pids
            raise CannotStart(str(exc)) from exc
        return conn

    def begin_tls(self, sock: socket.socket, tls: TlsEndpoint) -> Connection:
        sock.setblocking(True)
        # Wrapping does no IO; the handshake is the connection's thread's first act.
        wrapped = tls.context.wrap_socket(sock, server_side=True, do_handshake_on_connect=False)
        conn = Connection(wrapped, self, tls)
        try:
            _thread.start_new_thread(conn.run, ())
        except RuntimeError as exc:
            raise CannotStart(str(exc)) from exc
        return conn

    def refresh_stats(self) -> None:
        """Bring ``stats`` up to date; the threads count only into their connection."""
        live = list(self.connections)
        self.stats.bytes_in = self.closed_received + sum(conn.received for conn in live)
        self.stats.bytes_out = self.closed_sent + sum(conn.sent for conn in live)

    def settle(self, timeout: float) -> None:
        """The loop has stopped: take the threads' last releases straight off the pair."""
        deadline = time.monotonic() + timeout
        reactor = self.reactor
        reactor.run_pending_calls()
        while self.connections:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            select.select([reactor.wakeup], [], [], remaining)
            reactor.wakeup.drain()
            reactor.run_pending_calls()

    # Closing ---------------------------------------------------------------------------
    def closed(self, conn: Connection) -> None:
        """Called by a connection's thread as its last act."""
        with self.lock:
            conn.open = False
            conn.sock.close()
        # Released in the main thread, which owns the set and the counters; the
        # wakeup makes it accept again at once if it had run out of descriptors.
        self.reactor.call_soon_threadsafe(lambda: self._release(conn))

    def _release(self, conn: Connection) -> None:
        self.closed_received += conn.received
        self.closed_sent += conn.sent
        self.release(conn)
