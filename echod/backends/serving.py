"""The serving core: the life of the listeners and of every connection, for every backend.

As h11 keeps everything that moves its state machine in one file, everything that moves
a server's state lives here once, so a fix is made once for every IO model:

* **admit** a connection: select's descriptor ceiling, the admission rules
  (:mod:`echod.admission`: deny and allow lists, per-source limits, fair share when
  full), ``TCP_NODELAY``, count it, track it; refuse with a reset before reading;
* on a ``proxy-v1:``/``proxy-v2:`` listener, first check the peer is in
  ``--proxy-from``, then read the **PROXY header** (:class:`PendingHeader`) before
  echoing starts; admission, logs and metrics then use the address it carries;
* **release** it: untrack, count, finish a drain when it was the last, accept again when
  there is room (or a descriptor was just freed);
* what an **accept error** means: the client left (skip), out of descriptors or memory
  (shed), interrupted or nothing waiting (retry later), anything else (stop: raise);
* **out of descriptors** (or of threads): shed the waiting clients with a spare
  descriptor, as libuv and Twisted do, and accept again as soon as a connection is
  released. Only if the spare itself cannot be taken back does accepting stop, for
  ``ACCEPT_BACKOFF`` or until a connection is released, whichever is first;
* the named **phases**, run in :meth:`ServingCore.serve`: ``start`` (signals, listeners,
  heartbeats, idle sweeps, READY), serve (the backend's ``wait``), ``drain`` (on
  SIGTERM/SIGINT: stop accepting, let connections finish, close quiet ones, end at the
  graceful timeout) and ``stop`` (close what is left, report).

A backend supplies only what differs: how it waits (:meth:`~ServingCore.wait`,
:meth:`~ServingCore.finish`, timers, signals), how it starts serving an accepted socket
(:meth:`~ServingCore.begin`: a reactor callback, a thread, a greenlet, a protocol), and
how it watches its listeners (:meth:`~ServingCore.watch_listeners` and ``unwatch``).
It reports a closed connection with :meth:`~ServingCore.release`, from its loop's thread.

A **completion** backend (io_uring) is told that an operation finished rather than that
one may start. Its entry points are here too: :meth:`~ServingCore.accept_completed`
(a new descriptor, or an error such as EMFILE arriving as a completion),
:meth:`~ServingCore.receive_completed` and :meth:`~ServingCore.send_completed`. The
backend supplies the submissions (a connection's ``echo`` and ``receive``).
"""

from __future__ import annotations

import abc
import contextlib
import errno
import logging
import os
import resource
import socket
import struct
import time
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from typing import Any, Generic, Protocol, TypeVar

from echod import admission
from echod.admission import Admission, Refusal
from echod.backends.base import (
    ACCEPT_BACKOFF,
    ACCEPT_BATCH,
    DRAIN_QUIET,
    EXHAUSTED,
    IDLE_SWEEPS,
    PEER_GONE,
    Cancellable,
    Sweepable,
    owes_echo,
    sweep,
)
from echod.config import Config
from echod.faults import FaultPlan
from echod.lifecycle import Command, Lifecycle, control_signals_held, ignore_control_signals
from echod.logs import RateLimitedLog
from echod.net import proxy_protocol
from echod.net.listeners import describe, proxy_version, tls_of
from echod.service import ServiceError
from echod.tls import TlsEndpoint
from echod.udp.serving import DatagramService

log = logging.getLogger("echod")

Conn = TypeVar("Conn", bound=Sweepable)

# With fair share on and no idle timeout, every connection's idle count goes up once per
# this many seconds (a read sets it to zero), so the longest-idle connection is known.
FAIR_SHARE_TICK = 1.0
# SO_LINGER on, zero seconds: close() sends RST, and the refused client learns at once.
RESET = struct.pack("ii", 1, 0)


# Completion results that only mean "try again": the operation is submitted anew.
RETRY = frozenset({-errno.EAGAIN, -errno.EINTR})


class Completion(Sweepable, Protocol):
    """A connection served by completions: the backend's submissions for it.

    ``echo(offset, length)`` sends that part of the connection's receive buffer and then
    receives into the buffer again (the buffer is not reused before its bytes are
    sent); ``receive()`` only receives. ``in_flight`` is the byte count of the send
    whose completion has not been seen, ``offset`` where it starts in the buffer.
    """

    in_flight: int
    offset: int

    def echo(self, offset: int, length: int, /) -> object: ...
    def receive(self) -> object: ...
    def end(self) -> None:
        """Close with nothing in flight (its last completion just came): no cancel."""


class CannotStart(Exception):
    """A backend could not start serving an accepted socket (no thread, no memory)."""


class SpareDescriptor:
    """One descriptor held back, to refuse clients when the process runs out of them.

    Out of descriptors, a level-triggered listener stays readable while clients wait, so
    a loop that only retries accept() spins. As libuv and Twisted do: give the spare
    back, accept and close what waits, and take the spare again.
    """

    def __init__(self) -> None:
        self.fd: int | None = self._open()

    @staticmethod
    def _open() -> int | None:
        try:
            return os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC)
        except OSError:
            return None

    def shed(
        self,
        listeners: Iterable[socket.socket],
        keep: Callable[[socket.socket, socket.socket, Any], bool] | None = None,
    ) -> int:
        """Refuse every client waiting on ``listeners``; returns how many were refused.

        ``keep(listener, sock, peer)``, when given, decides first (fair share): a socket
        it keeps is its own to serve or close. Afterwards
        ``fd`` is None if the spare could not be taken back.
        """
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None
        refused = 0
        for listener in listeners:
            while True:
                try:
                    sock, peer = listener.accept()
                except OSError:
                    break
                if keep is not None and keep(listener, sock, peer):
                    if self.fd is None:
                        self.fd = self._open()
                    continue
                sock.close()
                refused += 1
        if self.fd is None:
            self.fd = self._open()
        return refused

    def close(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None


def set_no_delay(sock: socket.socket) -> None:
    # Echo replies are small and immediate: Nagle would hold each one for the peer's ACK.
    with contextlib.suppress(OSError):  # EINVAL on macOS when the peer has reset already
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


class PendingHeader:
    """An accepted connection on a PROXY listener whose header has not all arrived.

    Read non-blocking on the core's loop, never past the header's end (v2 reads exactly
    what its length says; v1 peeks for the LF, then takes that much), so the client's
    first bytes stay in the socket for the backend to echo. A malformed header, an end
    of input or the header timeout resets the connection, counted as ``proxy_header``.
    """

    __slots__ = ("core", "data", "peer", "sock", "tcp", "timer", "tls", "version", "watched")

    def __init__(
        self,
        core: ServingCore[Any],
        sock: socket.socket,
        version: int,
        peer: Any,
        tcp: bool,
        tls: TlsEndpoint | None,
    ) -> None:
        self.core = core
        self.sock = sock
        self.version = version
        self.peer = peer
        self.tcp = tcp
        self.tls = tls  # the handshake follows the header (proxy-v2+tls)
        self.data = b""
        self.timer: Cancellable | None = None
        self.watched = False

    def on_readable(self, mask: int = 0) -> None:
        self.read()

    def read(self) -> bool:
        """Read what has arrived; whether the header is done with (read, or failed)."""
        self._read()
        return self not in self.core.pending_headers

    def _read(self) -> None:
        # v2 comes in two reads (16 bytes, then the length they give), v1 in one or two
        # (peek, take): read on while bytes arrive, at most a few times per wakeup.
        for _ in range(3):
            if not self._read_once():
                return

    def _read_once(self) -> bool:
        """One read; whether to read again (bytes came, and the header is incomplete)."""
        sock = self.sock
        want = proxy_protocol.wanted(self.version, self.data)
        try:
            if self.version == 1:
                peeked = sock.recv(want, socket.MSG_PEEK)
                end = peeked.find(b"\n")
                chunk = sock.recv(end + 1 if end >= 0 else len(peeked)) if peeked else b""
            else:
                chunk = sock.recv(want)
        except (BlockingIOError, InterruptedError):
            return False
        except OSError as exc:
            self.core.header_failed(self, f"connection lost: {exc.strerror or exc}")
            return False
        if not chunk:
            if self.data:
                self.core.header_failed(self, "end of input before the header's end")
            else:  # connected and left, as a balancer's plain TCP health check does
                self.core.header_abandoned(self)
            return False
        self.data += chunk
        try:
            header = proxy_protocol.parse(self.version, self.data)
        except proxy_protocol.ProxyHeaderError as exc:
            self.core.header_failed(self, str(exc))
            return False
        if header is not None:
            self.core.header_read(self, header)
            return False
        return True

    def expire(self) -> None:
        self.timer = None
        self.core.header_failed(self, "header timeout (--proxy-timeout)")


class ServingCore(abc.ABC, Generic[Conn]):
    """Listeners, connections, signals and phases of one serving process."""

    # How long ``stop`` lets closed connections report back (threads, greenlets).
    settle_timeout = 1.0

    def __init__(
        self,
        listeners: Sequence[socket.socket],
        config: Config,
        lifecycle: Lifecycle,
        *,
        limit: int | None = None,
        fd_limit: int | None = None,
    ) -> None:
        # UDP listeners have no connections: the datagram service answers them on the
        # backend's loop (reactor and asyncio family only; cli refuses the others).
        self.listeners, self.udp = DatagramService.take(listeners, config, lifecycle.stats)
        self.config = config
        self.lifecycle = lifecycle
        self.stats = lifecycle.stats
        # What --fault asks, decided per connection by the backends that carry faults;
        # None without it, so an accept pays one identity test and no call.
        self.fault_plan = FaultPlan(config.fault, config.fault_every) if config.fault else None
        self.limit = config.max_connections if limit is None else limit
        # select(2) cannot watch descriptors at or above FD_SETSIZE: such connections are
        # refused, or the whole loop would die on the next select() call.
        self.fd_limit = fd_limit
        # Every connection served, with the admission source it counts against (None
        # once it gave way): kept here, so admission needs no map of its own.
        self.connections: dict[Conn, admission.Source[Conn] | None] = {}
        self.accepting = False  # the listeners are watched
        self.listeners_closed = False
        self.backing_off = False  # out of descriptors with no spare to shed with
        self._spare = SpareDescriptor()
        # Completion backends: descriptors the kernel accepted after accepting paused.
        self.parked: deque[tuple[socket.socket, bool]] = deque()
        self._sweeper: Cancellable | None = None
        self._warn = RateLimitedLog(log, interval=10.0)
        for sock in self.listeners:
            tls = tls_of(sock)
            if tls is not None:  # one endpoint per process: its counters are the stats'
                self.stats.tls = tls.counters
        self.fair_share = config.fair_share == "on"
        self._idle_ticker: Cancellable | None = None
        self._shedding = False
        # Slots for fair share: the cap, else the descriptors the process may open.
        descriptors = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
        slots = self.limit or (descriptors if descriptors != resource.RLIM_INFINITY else 1 << 20)
        self.admission: Admission[Conn] = Admission(admission_settings(config), slots)
        self.proxy_from = admission.AccessRules(map(admission.network, config.proxy_from))
        self.pending_headers: set[PendingHeader] = set()
        proxied = [sock for sock in self.listeners if proxy_version(sock)]
        if proxied and not config.proxy_from:
            raise ServiceError(
                f"{describe(proxied[0])} speaks the PROXY protocol: it needs --proxy-from"
            )

    # What a backend supplies -----------------------------------------------------------
    @abc.abstractmethod
    def handle_signals(self) -> None:
        """Have the loop call :meth:`on_signal` for each of ``HANDLED_SIGNALS``."""

    @abc.abstractmethod
    def wait(self) -> None:
        """Serve until :meth:`finish` is called."""

    @abc.abstractmethod
    def finish(self) -> None:
        """End :meth:`wait` now; ``stop`` then closes what is left."""

    @abc.abstractmethod
    def begin(self, sock: socket.socket) -> Conn:
        """Start serving an accepted socket; raise :class:`CannotStart` if it cannot."""

    def begin_tls(self, sock: socket.socket, tls: TlsEndpoint) -> Conn:
        """Start serving an accepted socket of a ``tls:`` listener: wrap it with
        ``tls.context`` as it is now (a reload swaps it for later connections only),
        handshake within ``tls.handshake_timeout`` and count the outcome in
        ``tls.counters``; then echo as :meth:`begin` does. Start-up refuses tls:
        listeners for a backend without it (:func:`echod.tls.check_tls_backend`)."""
        raise NotImplementedError(f"{type(self).__name__} does not serve TLS")

    @abc.abstractmethod
    def watch_listeners(self) -> None:
        """Call :meth:`accept_from` whenever a listener has clients waiting."""

    @abc.abstractmethod
    def unwatch_listeners(self) -> None: ...

    @abc.abstractmethod
    def call_later(self, delay: float, callback: Callable[[], object]) -> Cancellable: ...

    @abc.abstractmethod
    def call_every(self, interval: float, callback: Callable[[], object]) -> Cancellable: ...

    def watch_readable(self, sock: socket.socket, callback: Callable[[int], None]) -> None:
        """Call ``callback`` whenever ``sock`` is readable (for datagram listeners)."""
        raise NotImplementedError(f"{type(self).__name__} does not serve datagrams")

    def unwatch_readable(self, sock: socket.socket) -> None:
        raise NotImplementedError(f"{type(self).__name__} does not serve datagrams")

    def io_description(self) -> str | None:
        """What the loop waits on, logged at start when there is a choice."""
        return None

    def refresh_stats(self) -> None:  # optional hook
        """Bring ``lifecycle.stats`` up to date before it is reported (if kept elsewhere)."""

    def settle(self, timeout: float) -> None:  # optional hook
        """After ``stop`` closed every connection: wait up to ``timeout`` for releases."""

    def close_loop(self) -> None:  # optional hook
        """Last act of ``stop``: give back what the loop holds."""

    # Phases ----------------------------------------------------------------------------
    def serve(self, label: str) -> None:
        """start → serve → (drain, on a signal) → stop, the same for every backend."""
        try:
            self.start(label)
            self.wait()
        finally:
            self.stop()

    def start(self, label: str) -> None:
        # Ignored under the loop's handlers: a loop that restores what it found on
        # closing leaves them ignored (see ``control_signals_held`` for the others).
        if self.lifecycle.signals:
            ignore_control_signals()
            self.handle_signals()
        self.resume_accepting()
        self.call_every(self.lifecycle.heartbeat_interval, self.heartbeat)
        self.start_idle_sweeps()
        self.udp.start(self.watch_readable, self.unwatch_readable)
        if self.lifecycle.control is not None:
            self.watch_readable(self.lifecycle.control.sock, self.on_requests)
        addresses = [describe(sock) for sock in self.listeners] + self.udp.addresses
        for sock in self.listeners:
            if proxy_version(sock):
                log.info(
                    "%s takes a PROXY protocol v%d header from %s",
                    describe(sock),
                    proxy_version(sock),
                    " ".join(self.config.proxy_from),
                )
        if self.fault_plan is not None:
            log.warning(
                "FAULTS ON: this server misbehaves on purpose (%s): never use it as an echo service",
                self.fault_plan.describe(),
            )
        self.lifecycle.ready(addresses, label)
        io = self.io_description()
        if io is not None:
            log.info("backend %s waits on %s", label, io)

    def drain(self) -> None:
        graceful = self.config.graceful_timeout
        if self._idle_ticker is not None:  # the drain's sweeps count idleness now
            self._idle_ticker.cancel()
            self._idle_ticker = None
        # Clients already queued came before the drain: serve them. Closing a listener
        # this process holds last resets its queue (a reload that removes a socket).
        if self.accepting:
            for sock in self.listeners:
                self.accept_from(sock)
        self.refresh_stats()
        self.lifecycle.start_draining(graceful)
        self.close_listeners()
        if self.drained():
            self.finish()
            return
        self.call_later(graceful, self._graceful_timeout)
        quiet = self.lifecycle.drain_quiet
        self.sweep_every((DRAIN_QUIET if quiet is None else quiet) / 2, 2, only_drained=True)

    def stop(self) -> None:
        self.close_listeners()
        self.close_waiting()
        for conn in list(self.connections):
            conn.close()
        if self.connections:
            self.settle(self.settle_timeout)
        self._spare.close()
        with control_signals_held() if self.lifecycle.signals else contextlib.nullcontext():
            self.close_loop()
        for sock in self.listeners:  # any whose close waited on an accept the loop ended
            sock.close()
        self.refresh_stats()
        self.lifecycle.stopped()

    def heartbeat(self) -> None:
        self.refresh_stats()
        self.lifecycle.heartbeat()

    def on_signal(self, signum: int) -> None:
        self.obey(self.lifecycle.command(signum))

    def on_requests(self, mask: int) -> None:
        """The supervisor's channel is readable: its requests, or its end."""
        control = self.lifecycle.control
        assert control is not None
        messages = control.receive()
        if messages is None:  # the supervisor is gone: nobody will ask for a drain
            self.unwatch_readable(control.sock)
            self.obey(Command.DRAIN)
            return
        for message in messages:
            command = self.lifecycle.request(message)
            if command is not None:
                self.obey(command, message.id)

    def obey(self, command: Command, request: int = 0) -> None:
        """Do what a signal or a request asks; ``request`` is the id an answer repeats."""
        if command is Command.REPORT or command is Command.COLLECT:
            self.refresh_stats()
            if command is Command.REPORT:
                self.lifecycle.report(request)
            else:
                self.lifecycle.refresh(request)
        elif command is Command.RELOAD or command is Command.UPGRADE:
            self.lifecycle.needs_supervisor(command)
        elif command is Command.EXIT_NOW:
            log.warning("second interrupt: closing %d connection(s) now", len(self.connections))
            self.finish()
        elif not self.lifecycle.draining:
            self.drain()

    def drained(self) -> bool:
        """Nothing left to serve: no connection, no client accepted and waiting (for
        room, or for its PROXY header), and no accept that could still hand this
        process a client (see :meth:`accepts_settled`)."""
        return (
            not self.connections
            and not self.parked
            and not self.pending_headers
            and self.accepts_settled()
        )

    def accepts_settled(self) -> bool:
        """A completion backend's accept outlives its cancel: the kernel may complete it
        after the listeners closed, with a client the drain must still serve."""
        return True

    def finish_if_drained(self) -> None:
        """Something a drain waits for has ended: the drain may be over now."""
        if self.lifecycle.draining and self.drained():
            self.finish()

    def _graceful_timeout(self) -> None:
        log.warning("graceful timeout: closing %d connection(s)", len(self.connections))
        self.finish()

    # Idle and drain sweeps -------------------------------------------------------------
    def start_idle_sweeps(self) -> None:
        if self.config.idle_timeout > 0:
            self.sweep_every(self.config.idle_timeout / IDLE_SWEEPS, IDLE_SWEEPS, False)
        elif self.fair_share:
            # Fair share needs the longest-idle connection; the idle sweeps count it
            # when there are any. O(connections) per tick: 10,000 cost about 1 ms.
            self._idle_ticker = self.call_every(FAIR_SHARE_TICK, self._tick_idle)

    def _tick_idle(self) -> None:
        for conn in self.connections:
            conn.idle_ticks += 1

    def sweep_every(self, interval: float, ticks: int, only_drained: bool) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()
        for conn in self.connections:
            conn.idle_ticks = 0
        self._sweeper = self.call_every(
            max(interval, 0.01), lambda: self._sweep(ticks, only_drained)
        )

    def _sweep(self, ticks: int, only_drained: bool) -> None:
        closed = sweep(list(self.connections), ticks, only_drained)
        if not only_drained:  # the idle timeout's closes; a drain's are the stop's own
            self.stats.idle_closed += closed

    # Listeners -------------------------------------------------------------------------
    def full(self) -> bool:
        # Connections that gave way are no longer held, even while their close is on
        # its way (threads, greenlets, transports close later).
        return bool(self.limit) and self.admission.held >= self.limit

    def resume_accepting(self) -> None:
        if self.accepting or self.listeners_closed or self.lifecycle.draining:
            return
        if self.backing_off or (self.full() and not self.fair_share):
            return
        self.accepting = True
        self.watch_listeners()

    def pause_accepting(self) -> None:
        if self.accepting:
            self.accepting = False
            self.unwatch_listeners()

    def close_listeners(self) -> None:
        self.pause_accepting()
        if not self.listeners_closed:
            self.listeners_closed = True
            for sock in self.listeners:
                self.close_listener(sock)
            self.udp.close()  # a graceful stop has no datagram to finish

    def close_listener(self, sock: socket.socket) -> None:
        """A backend whose accept outlives its cancel closes the listener later."""
        sock.close()

    def close_waiting(self) -> None:
        """At the stop, clients accepted but never served: a drain served them."""
        for pending in list(self.pending_headers):
            self._end_header(pending)
            pending.sock.close()
        while self.parked:
            self.parked.popleft()[0].close()

    # Admit -----------------------------------------------------------------------------
    def accept_from(self, listener: socket.socket) -> None:
        """Accept a bounded batch, so a connection storm cannot starve served clients."""
        tcp = listener.family != socket.AF_UNIX
        for _ in range(ACCEPT_BATCH):
            if not self.accepting:
                return  # paused or draining by an earlier admit of this batch
            if self.full() and not self.fair_share:
                # Past the cap new clients wait in the kernel's backlog, as HAProxy's
                # maxconn does, instead of being accepted only to be dropped. Under fair
                # share the core accepts and decides: in the backlog, a greedy source's
                # connections would crowd out everyone else's SYNs.
                self.pause_accepting()
                return
            if not self.accept_one(listener, tcp):
                return

    def accept_one(self, listener: socket.socket, tcp: bool) -> bool:
        """Accept one queued client and take it; False once none waits any more (the
        backend waits for readiness again) or descriptors ran out."""
        try:
            sock, peer = listener.accept()
        except (BlockingIOError, InterruptedError):
            return False
        except OSError as exc:
            if exc.errno in PEER_GONE:
                self.stats.accept_errors_peer_gone += 1
                return True  # the client left before we got to it, or a firewall said no
            if exc.errno in EXHAUSTED:
                self.stats.accept_errors_exhausted += 1
                self.out_of_resources(os.strerror(exc.errno or 0))
                return False
            raise  # a listener gone bad is a bug to report, not a state to serve in
        self.take(listener, sock, peer, tcp)
        return True

    def accept_completed(self, listener: socket.socket, result: int) -> None:
        """A completion backend's accept finished: ``result`` is the new descriptor, or
        ``-errno`` (EMFILE arrives here as a completion, not as a readable listener).

        The kernel accepts before the loop hears that accepting paused (the cap, a
        back-off): such a descriptor is parked until a release makes room, as a client
        waits in the backlog. After a drain closed the listeners it is served, as a
        client queued before the drain is: the new generation shares the listener, and
        this client reached this process, not it (a reload under load reset 2 of
        61,000 churned connections on uring in reuseport mode when it was closed).
        """
        if result < 0:
            code = -result
            if result in RETRY:
                return
            if code in PEER_GONE:
                self.stats.accept_errors_peer_gone += 1
                return
            if code in EXHAUSTED:
                self.stats.accept_errors_exhausted += 1
                self.out_of_resources(os.strerror(code))
                return
            raise OSError(code, os.strerror(code))  # a listener gone bad, as accept_from
        sock = socket.socket(listener.family, listener.type, listener.proto, result)
        tcp = listener.family != socket.AF_UNIX
        if self.listeners_closed:
            self.take(listener, sock, None, tcp)
        elif not self.accepting or (self.full() and not self.fair_share):
            self.parked.append((sock, tcp))
            self.pause_accepting()
        else:
            self.take(listener, sock, None, tcp)  # full under fair share: admit decides
            if self.full() and not self.fair_share:
                self.pause_accepting()

    def take(self, listener: socket.socket, sock: socket.socket, peer: Any, tcp: bool) -> None:
        """An accepted socket: its PROXY header first where the listener says so."""
        version = proxy_version(listener)
        if version:
            self.read_header(sock, version, peer, tcp, tls_of(listener))
        else:
            self.admit(sock, tcp, peer, tls_of(listener))

    # PROXY protocol --------------------------------------------------------------------
    def read_header(
        self, sock: socket.socket, version: int, peer: Any, tcp: bool, tls: TlsEndpoint | None
    ) -> None:
        """Stage one: the peer must be a trusted proxy; stage two reads its header."""
        host = self.peer_host(sock, peer, tcp)
        if host is not None and not self.proxy_from.permits(admission.peer_address(host)):
            self.refuse(sock, Refusal.PROXY_PEER, host)
            return
        if self.fd_limit is not None and sock.fileno() >= self.fd_limit:
            self.admit(sock, tcp, peer)  # refused there: select could not watch it
            return
        sock.setblocking(False)
        pending = PendingHeader(self, sock, version, peer, tcp, tls)
        self.pending_headers.add(pending)
        # A proxy sends the header at once: it has often arrived by the accept, and then
        # needs no watching and no timer (callgrind under churn: 193 k instructions per
        # connection without this, 173 k with it; 94 k without a PROXY listener).
        if pending.read():
            return
        pending.watched = True
        self.watch_readable(sock, pending.on_readable)
        pending.timer = self.call_later(self.config.proxy_timeout, pending.expire)

    def _end_header(self, pending: PendingHeader) -> bool:
        if pending not in self.pending_headers:
            return False
        self.pending_headers.remove(pending)
        if pending.watched:
            pending.watched = False
            self.unwatch_readable(pending.sock)
        if pending.timer is not None:
            pending.timer.cancel()
            pending.timer = None
        return True

    def header_read(self, pending: PendingHeader, header: proxy_protocol.ProxyHeader) -> None:
        """The header is in: admit the connection as coming from the client it names."""
        if not self._end_header(pending):
            return
        client = header.source or pending.peer
        if log.isEnabledFor(logging.DEBUG):
            log.debug(
                "proxy: connection from %s via %s",
                self.peer_host(pending.sock, client, True) or "a Unix peer",
                self.peer_host(pending.sock, pending.peer, pending.tcp) or "a Unix peer",
            )
        self.admit(pending.sock, pending.tcp, client, pending.tls)

    def header_failed(self, pending: PendingHeader, reason: str) -> None:
        if not self._end_header(pending):
            return
        host = self.peer_host(pending.sock, pending.peer, pending.tcp)
        self.refuse(pending.sock, Refusal.PROXY_HEADER, host, reason)
        self.finish_if_drained()

    def header_abandoned(self, pending: PendingHeader) -> None:
        if self._end_header(pending):
            pending.sock.close()
            self.finish_if_drained()

    def admit(
        self,
        sock: socket.socket,
        tcp: bool,
        peer: Any = None,
        tls: TlsEndpoint | None = None,
        *,
        slots: int | None = None,
    ) -> Conn | None:
        """Start serving an accepted socket, counted and tracked; None if refused.

        ``peer`` is accept()'s address (looked up if None); ``slots``, what the process
        holds when it is out of descriptors (full at that count).
        """
        if self.fd_limit is not None and sock.fileno() >= self.fd_limit:
            self._warn.warning(
                "fd-limit",
                "select backend cannot watch descriptor %d (FD_SETSIZE %d): connection refused; "
                "use the poll or epoll backend for more connections",
                sock.fileno(),
                self.fd_limit,
            )
            sock.close()
            self.stats.refused_fd_setsize += 1
            return None
        host = self.peer_host(sock, peer, tcp)
        gate = self.admission
        key, address = gate.key(host)
        now = time.monotonic()
        refusal = gate.refusal(key, address, now) if gate.checks else None
        if refusal is None and (slots is not None or self.full()):
            victim = gate.victim(key, owes_echo, slots) if self.fair_share else None
            if victim is None:
                refusal = Refusal.FULL
            else:
                self.give_way(victim)
        if refusal is Refusal.FULL and slots is not None:
            # Out of descriptors with none to give way: shed, as without fair share.
            sock.close()
            self.stats.refused_resources += 1
            return None
        if refusal is not None:
            self.refuse(sock, refusal, host)
            return None
        if tcp:
            set_no_delay(sock)
        try:
            conn = self.begin(sock) if tls is None else self.begin_tls(sock, tls)
        except CannotStart as exc:
            sock.close()
            self.stats.refused_resources += 1
            self.out_of_resources(str(exc))
            return None
        except BaseException:
            sock.close()  # never handed over: its client must see an end, not wait on it
            raise
        self.connections[conn] = gate.add(key, conn, now)
        self.stats.opened()
        return conn

    @staticmethod
    def peer_host(sock: socket.socket, peer: Any, tcp: bool) -> str | None:
        """The peer's IP address as text; None for a Unix peer (or one already gone).

        ``peer`` is accept()'s address, or the client a PROXY header named."""
        if peer is None and tcp:
            try:
                peer = sock.getpeername()
            except OSError:
                return None
        return peer[0] if isinstance(peer, tuple) else None

    def refuse(
        self, sock: socket.socket, refusal: Refusal, host: str | None, detail: str = ""
    ) -> None:
        """Close with a reset before reading a byte, count it, and say so now and then."""
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, RESET)
        sock.close()
        name = f"refused_{refusal.value}"
        setattr(self.stats, name, getattr(self.stats, name) + 1)
        self._warn.warning(
            refusal,
            "refused a connection from %s: %s%s",
            host or "a Unix peer",
            admission.REASONS[refusal],
            f" ({detail})" if detail else "",
        )

    def give_way(self, conn: Conn) -> None:
        """Fair share: close ``conn`` (idle, owing nothing) as the idle timeout would."""
        source = self.connections.get(conn)
        if source is not None:
            self.admission.remove(conn, source)
            self.connections[conn] = None  # no longer held, even while its close is on its way
        self.stats.gave_way += 1
        conn.close()

    def out_of_resources(self, reason: str) -> None:
        """Refuse the waiting clients instead of spinning on them; accept again on release.

        The listeners stay watched: each client that arrives meanwhile is refused the
        same way, which empties the backlog, so a level-triggered loop cannot spin.
        """
        self._warn.warning(
            "exhausted",
            "cannot take a new connection (%s): refusing clients until one closes; "
            "%d connection(s) open",
            reason,
            len(self.connections),
        )
        if self._shedding:
            return  # a connection could not start while shedding: the shed goes on
        keep = self._keep_when_out_of_descriptors if self.fair_share else None
        self._shedding = True
        try:
            shed = self._spare.shed(self.listeners, keep)  # keep counts its own refusals
        finally:
            self._shedding = False
        self.stats.refused_resources += shed
        if self._spare.fd is None:
            # Not even the spare is free to shed with: stop until a connection is
            # released, or ACCEPT_BACKOFF passes.
            self.pause_accepting()
            self.backing_off = True
            self.call_later(ACCEPT_BACKOFF, self._end_back_off)

    def _keep_when_out_of_descriptors(
        self, listener: socket.socket, sock: socket.socket, peer: Any
    ) -> bool:
        """Fair share at the descriptor limit: the spare's descriptor let us accept
        ``sock``, and admission decides as if full at what the process holds. Either a
        connection gave way to it (its descriptor takes the spare's place), or it was
        refused with a reset: handled either way."""
        if proxy_version(listener):
            return False  # its header would need a descriptor's worth of waiting: shed
        tcp = listener.family != socket.AF_UNIX
        self.admit(sock, tcp, peer, slots=max(self.admission.held, 1))
        return True

    def _end_back_off(self) -> None:
        if self.backing_off:
            self.backing_off = False
            self.resume_accepting()

    # Echo by completions ---------------------------------------------------------------
    # These two run once per echoed read: the conditions are ordered for the common case
    # and nothing is called that the result does not need.
    def receive_completed(self, conn: Completion, result: int, flags: int = 0) -> None:
        """``result`` bytes arrived in ``conn``'s buffer (0: end of input, < 0: -errno).
        ``flags`` are the completion's (unused: a receive here is single-shot).

        Its earlier echo was sent in full (the receive was linked behind it), so the
        bytes are sent straight from the buffer. They are counted out when submitted;
        a send that fails takes back what it did not send.
        """
        if result > 0:
            conn.idle_ticks = 0
            stats = self.stats
            stats.bytes_in += result
            stats.bytes_out += result
            conn.in_flight = result
            conn.offset = 0
            conn.echo(0, result)
        elif result in RETRY:
            conn.in_flight = 0
            conn.receive()
        else:  # end of input with nothing left to send, or the peer is gone
            conn.in_flight = 0
            conn.end()

    def send_completed(self, conn: Completion, result: int, flags: int = 0) -> None:
        """A send finished short of its length: ``result`` bytes went, or -errno.

        Successful sends post no completion. A short count means the socket failed
        part-way; what is left is sent again and its error, if it stays, closes it.
        """
        if result >= 0 or result in RETRY:
            sent = max(result, 0)
            conn.offset += sent
            conn.in_flight -= sent
            if conn.in_flight > 0:
                conn.echo(conn.offset, conn.in_flight)
            else:
                conn.receive()
            return
        self.stats.bytes_out -= conn.in_flight
        conn.in_flight = 0
        conn.end()  # EPIPE, ECONNRESET: the peer is gone, and so is its echo

    # Release ---------------------------------------------------------------------------
    def release(self, conn: Conn) -> None:
        """A connection closed (its descriptor is free): count it, then act on it."""
        if conn not in self.connections:
            return
        source = self.connections.pop(conn)
        if source is not None:
            self.admission.remove(conn, source)
        self.stats.closed()
        while self.parked and not self.full():
            self.admit(*self.parked.popleft())
        if self.lifecycle.draining:
            self.finish_if_drained()
            return
        if not self.accepting:
            self.backing_off = False  # the descriptor just freed ends any back-off
            self.resume_accepting()


def admission_settings(config: Config) -> admission.AdmissionSettings:
    return admission.settings_from(
        allow=config.allow,
        deny=config.deny,
        per_source=config.max_connections_per_source,
        connect_rate=config.connect_rate_per_source,
        connect_burst=config.connect_burst_per_source,
        prefix_v6=config.source_prefix_v6,
        fair_share=config.fair_share == "on",
    )
