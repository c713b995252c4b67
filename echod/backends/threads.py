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

The main thread never touches a client socket (as gunicorn's arbiter never does): it
runs echod's :class:`~echod.backends.reactor.Reactor` over the listeners, signals and
timers, accepting connections, sending heartbeats (so a stuck main thread stops the
watchdog) and running the shared idle and drain sweeps. Other threads are stopped only
with ``shutdown(SHUT_RDWR)``, which wakes one blocked in ``recv`` or ``sendall``; each
thread closes its own socket, so a descriptor is never closed under a blocked call.

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
  the open-file limit: running out of descriptors is handled apart (accepting backs
  off), and a low limit must not shrink the cap below what the descriptors allow.
"""

from __future__ import annotations

import contextlib
import logging
import os
import selectors
import socket
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from echod.backends.base import (
    ACCEPT_BACKOFF,
    ACCEPT_BATCH,
    EXHAUSTED,
    PEER_GONE,
    ServingPolicy,
)
from echod.backends.reactor import Listening, Reactor, Timer
from echod.config import Config
from echod.lifecycle import HANDLED_SIGNALS, Lifecycle
from echod.logs import RateLimitedLog
from echod.net.listeners import describe
from echod.session import WANT_READ

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
# How long the end of serve() waits for shut-down threads to report their last bytes.
JOIN_TIMEOUT = 1.0


@dataclass(frozen=True)
class ThreadBackend:
    """Blocking sockets, one thread per connection."""

    name: str = "threads"

    def serve(
        self, listeners: Sequence[socket.socket], config: Config, lifecycle: Lifecycle
    ) -> None:
        ThreadServer(listeners, config, lifecycle).run(self.name)


THREADS = ThreadBackend()


def connection_cap(max_connections: int) -> int:
    """Connections served at once: the configured cap, or this backend's default."""
    return max_connections or DEFAULT_MAX_CONNECTIONS


class Connection:
    """One client socket and the thread echoing on it.

    The thread writes only ``received`` and ``sent``; the main thread reads them for the
    counters and the sweeps, and keeps the idle count itself (see ``idle_ticks``).
    """

    __slots__ = ("_seen", "_ticks", "received", "sent", "server", "sock")

    def __init__(self, sock: socket.socket, server: ThreadServer) -> None:
        self.sock = sock
        self.server = server
        self.received = 0
        self.sent = 0
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
            while True:
                received = recv_into(buffer)
                if not received:
                    break  # end of input: all of it was sent before this read
                self.received += received
                sendall(view[:received])
                self.sent += received
        except OSError:
            pass  # ECONNRESET, EPIPE, or shut down by the server: the echo is over
        finally:
            self.server.closed(self)

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
        self.server.shut_down(self)


class ThreadServer(ServingPolicy):
    """Accepts in the main thread and starts one echo thread per connection."""

    def __init__(
        self, listeners: Sequence[socket.socket], config: Config, lifecycle: Lifecycle
    ) -> None:
        self.reactor = Reactor(selectors.DefaultSelector())
        self.listeners = list(listeners)
        self.config = config
        self.lifecycle = lifecycle
        self.stats = lifecycle.stats
        self.limit = connection_cap(config.max_connections)
        # Guards ``connections``, the connection counters in ``stats``, the bytes of
        # closed connections and the two flags below; never held across blocking IO.
        self.lock = threading.Lock()
        self.all_closed = threading.Condition(self.lock)
        self.connections: set[Connection] = set()
        self.closed_received = 0
        self.closed_sent = 0
        self.wake_on_close = False  # the main thread waits for room or for the last close
        self.finished = False  # the wakeup pair is closed: threads must not write to it
        self.listening = Listening(self.reactor, self.listeners, self._accept)
        self.backing_off = False
        # Threads wake the main thread's selector through this pair.
        self._wakeup_r, self._wakeup_w = socket.socketpair()
        self._wakeup_r.setblocking(False)
        self._wakeup_w.setblocking(False)
        self._warn = RateLimitedLog(log, interval=10.0)

    # Running ---------------------------------------------------------------------------
    def run(self, label: str) -> None:
        reactor = self.reactor
        previous_stack = threading.stack_size(STACK_SIZE)
        if not self.config.max_connections:
            log.info("threads backend: at most %d connections at once", self.limit)
        try:
            reactor.handle_signals(HANDLED_SIGNALS, self.on_signal)
            reactor.add(self._wakeup_r, WANT_READ, self._on_wakeup)
            self._start_accepting()
            reactor.call_every(self.lifecycle.heartbeat_interval, self._heartbeat)
            self.start_idle_sweeps()
            self._count_bytes()
            self.lifecycle.ready([describe(sock) for sock in self.listeners], label)
            reactor.run()
        finally:
            self.close_listeners()
            with self.lock:
                for conn in self.connections:
                    _shutdown(conn.sock)
                self.all_closed.wait_for(lambda: not self.connections, JOIN_TIMEOUT)
                self.finished = True
            reactor.close()
            self._wakeup_r.close()
            self._wakeup_w.close()
            threading.stack_size(previous_stack)
            self._count_bytes()
            self.lifecycle.stopped()

    def _heartbeat(self) -> None:
        self._count_bytes()
        self.lifecycle.heartbeat()

    def _count_bytes(self) -> None:
        """Bring ``stats`` up to date; the threads count only into their connection."""
        with self.lock:
            live = list(self.connections)
            received, sent = self.closed_received, self.closed_sent
        self.stats.bytes_in = received + sum(conn.received for conn in live)
        self.stats.bytes_out = sent + sum(conn.sent for conn in live)

    # Primitives of the serving policy --------------------------------------------------
    def live_connections(self) -> list[Connection]:
        return self._snapshot()

    def refresh_stats(self) -> None:
        self._count_bytes()

    def on_draining(self) -> None:
        with self.lock:
            self.wake_on_close = True

    def finish(self) -> None:
        self.reactor.stop()

    def call_later(self, delay: float, callback: Callable[[], object]) -> Timer:
        return self.reactor.call_later(delay, callback)

    def call_every(self, interval: float, callback: Callable[[], object]) -> Timer:
        return self.reactor.call_every(interval, callback)

    def _snapshot(self) -> list[Connection]:
        with self.lock:
            return list(self.connections)

    # Accepting -------------------------------------------------------------------------
    def _start_accepting(self) -> None:
        if self.listening.active or self.backing_off or self.lifecycle.draining:
            return
        with self.lock:
            if len(self.connections) >= self.limit:
                self.wake_on_close = True
                return
            self.wake_on_close = False
        self.listening.start()

    def _stop_accepting(self) -> None:
        self.listening.stop()

    def close_listeners(self) -> None:
        self.listening.close()

    def _accept(self, listener: socket.socket) -> None:
        tcp = listener.family != socket.AF_UNIX
        for _ in range(ACCEPT_BATCH):
            with self.lock:
                full = len(self.connections) >= self.limit
                if full:
                    self.wake_on_close = True
            if full:
                # Past the cap new clients wait in the kernel's backlog, as on the reactor.
                self._stop_accepting()
                return
            try:
                sock, _ = listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                if exc.errno in EXHAUSTED:
                    self._back_off(os.strerror(exc.errno or 0))
                    return
                if exc.errno in PEER_GONE:
                    continue
                raise
            sock.setblocking(True)
            if tcp:
                _no_delay(sock)
            if not self._start(Connection(sock, self)):
                return

    def _start(self, conn: Connection) -> bool:
        """Count the connection and start its thread; False when no thread can start."""
        with self.lock:
            self.connections.add(conn)
            self.stats.opened()
        try:
            threading.Thread(target=conn.run, name="echod-connection", daemon=True).start()
        except RuntimeError as exc:  # "can't start new thread": out of memory or pids
            with self.lock:
                self.connections.discard(conn)
                self.stats.connections_open -= 1
                self.stats.connections_total -= 1
                self.stats.connections_dropped += 1
            conn.sock.close()
            self._back_off(str(exc))
            return False
        return True

    def _back_off(self, reason: str) -> None:
        """Out of descriptors or threads: let clients wait in the backlog for a while.

        A level-triggered listener stays readable while its backlog is full, so simply
        returning would spin on the same failing accept.
        """
        self._warn.warning(
            "exhausted",
            "cannot take a new connection (%s): not accepting for %gs; %d connection(s) open",
            reason,
            ACCEPT_BACKOFF,
            self.stats.connections_open,
        )
        self._stop_accepting()
        self.backing_off = True
        with self.lock:
            self.wake_on_close = True  # a freed descriptor ends the back-off early
        self.reactor.call_later(ACCEPT_BACKOFF, self._end_back_off)

    def _end_back_off(self) -> None:
        self.backing_off = False
        self._start_accepting()

    # Closing ---------------------------------------------------------------------------
    def closed(self, conn: Connection) -> None:
        """Called by a connection's thread as its last act."""
        with self.lock:
            self.connections.discard(conn)
            self.closed_received += conn.received
            self.closed_sent += conn.sent
            self.stats.connections_open -= 1
            if self.wake_on_close and not self.finished:
                with contextlib.suppress(OSError):  # full: a wakeup is pending anyway
                    self._wakeup_w.send(b"\0")
            if not self.connections:
                self.all_closed.notify_all()
        conn.sock.close()

    def shut_down(self, conn: Connection) -> None:
        with self.lock:
            # Still in the set means its thread has not closed the socket yet.
            if conn in self.connections:
                _shutdown(conn.sock)

    def _on_wakeup(self, mask: int) -> None:
        with contextlib.suppress(OSError):
            while self._wakeup_r.recv(4096):
                pass
        if self.lifecycle.draining:
            with self.lock:
                empty = not self.connections
            if empty:
                self.reactor.stop()
        else:
            self.backing_off = False  # a connection closed: its descriptor is free again
            self._start_accepting()


def _no_delay(sock: socket.socket) -> None:
    # Echo replies are small and immediate: Nagle would hold each one for the peer's ACK.
    with contextlib.suppress(OSError):  # EINVAL on macOS when the peer has reset already
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


def _shutdown(sock: socket.socket) -> None:
    with contextlib.suppress(OSError):  # ENOTCONN: the peer reset it already
        sock.shutdown(socket.SHUT_RDWR)
