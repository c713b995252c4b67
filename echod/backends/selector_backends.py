"""The echo server on echod's own reactor, one backend per IO mechanism.

``select``, ``poll``, ``epoll``, ``kqueue`` and ``devpoll`` differ only by the IO manager
named in their :class:`SelectorBackend` row (and select's descriptor ceiling); the
server code below is shared, and the life of its connections is the serving core's
(:mod:`echod.backends.serving`). Per-message work is the product, so the hot path is
kept flat: one shared receive buffer filled with ``recv_into``, an immediate ``send``
of what was read, and a copy of only the unsent tail. A connection's registration
changes only when what it wants changes (output backs up or drains), never per message.
"""

from __future__ import annotations

import contextlib
import selectors
import socket
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from echod.backends.base import RECEIVE_SIZE
from echod.backends.fault_driver import FaultDriver, reset_socket
from echod.backends.on_reactor import ReactorServingCore
from echod.config import Config
from echod.faults import ConnectionFaults, FaultPlan
from echod.lifecycle import Lifecycle
from echod.loop import Reactor, io_manager
from echod.session import DONE, WANT_READ, WANT_WRITE, EchoSession
from echod.tls import TlsEndpoint

assert (selectors.EVENT_READ, selectors.EVENT_WRITE) == (WANT_READ, WANT_WRITE)


@dataclass(frozen=True)
class SelectorBackend:
    """A reactor backend: which IO manager it runs on, and nothing else."""

    name: str
    # "epoll", "poll" or "devpoll": the reactor owns that kernel object; otherwise the
    # name of a ``selectors`` class, used through its public API.
    io: str
    # select(2) cannot watch descriptors at or above FD_SETSIZE.
    fd_limit: int | None = None

    def serve(
        self, listeners: Sequence[socket.socket], config: Config, lifecycle: Lifecycle
    ) -> None:
        reactor = Reactor(io_manager(self.io))
        ReactorServer(reactor, listeners, config, lifecycle, self.fd_limit).serve(self.name)


SELECT = SelectorBackend("select", "SelectSelector", fd_limit=1024)
POLL = SelectorBackend("poll", "poll")
EPOLL = SelectorBackend("epoll", "epoll")
KQUEUE = SelectorBackend("kqueue", "KqueueSelector")
DEVPOLL = SelectorBackend("devpoll", "devpoll")
DEFAULT = SelectorBackend("selectors", "DefaultSelector")


class Connection(EchoSession):
    """An accepted socket driven by the reactor through the rules of its session."""

    __slots__ = ("events", "fd", "idle_ticks", "server", "sock")

    def __init__(self, sock: socket.socket, server: ReactorServer) -> None:
        super().__init__(server.marks)
        self.sock = sock
        self.fd = sock.fileno()
        self.server = server
        self.events = WANT_READ  # registered with the selector; 0 once closed
        self.idle_ticks = 0

    def has_pending(self) -> bool:
        return bool(self.pending)

    def fileno(self) -> int:
        return self.fd

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
        if self.reading_paused and self.events & WANT_READ:  # just hit the high-water mark
            self.server.stats.flow_paused += 1
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
        self.server.reactor.change(self.fd, wants, callback)
        self.events = wants

    def close(self) -> None:
        if not self.events:
            return
        self.events = 0
        self.server.forget(self)


# A faulty connection paused by its driver with nothing to send: registered for nothing.
IDLE = -1


class FaultyConnection(Connection):
    """A connection with faults on (``--fault``): every read goes through its
    :class:`~echod.backends.fault_driver.FaultDriver`, which writes the echo back
    through :meth:`write` when it is due, and ends the connection as the fault says."""

    __slots__ = ("driver", "fault_paused", "output_ending")

    def __init__(
        self, sock: socket.socket, server: ReactorServer, faults: ConnectionFaults
    ) -> None:
        super().__init__(sock, server)
        self.driver = FaultDriver(self, faults, server.call_later, server.marks)
        self.fault_paused = False
        self.output_ending = False  # close-after: FIN once pending output is sent

    def on_readable(self, mask: int) -> None:
        server = self.server
        try:
            received = self.sock.recv_into(server.buffer)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            self.close()
            return
        if not received:
            self.pause_reading()  # nothing more to read: the driver ends it in turn
            self.driver.end_of_input()
            return
        self.idle_ticks = 0
        server.stats.bytes_in += received
        self.driver.received(bytes(server.view[:received]))

    # The driver's Carrier ----------------------------------------------------------------
    def write(self, data: bytes) -> None:
        if not self.events:
            return  # closed meanwhile
        if not self.pending:
            try:
                sent = self.sock.send(data)
            except (BlockingIOError, InterruptedError):
                sent = 0
            except OSError:
                self.close()
                return
            self.server.stats.bytes_out += sent
            data = data[sent:]
        if data:
            self.queue(data)
            self.sync()

    def pause_reading(self) -> None:
        self.fault_paused = True
        self._update()
        self.sync()

    def resume_reading(self) -> None:
        self.fault_paused = False
        self._update()
        self.sync()

    def end_input(self) -> None:
        if self.events:
            self.eof()
            self.sync()

    def finish(self) -> None:
        self.output_ending = True
        self.sync()

    def reset(self) -> None:
        reset_socket(self.sock)
        self.close()

    # Its wants, with the driver's pause -------------------------------------------------
    def has_pending(self) -> bool:
        return bool(self.pending) or self.driver.pieces.held > 0

    def _update(self) -> int:
        wants = super()._update()
        if self.fault_paused and wants & WANT_READ:
            wants &= ~WANT_READ
            self.wants = wants
        return wants

    def sync(self) -> None:
        """As :meth:`Connection.sync`, except that wanting nothing before the end of
        input means waiting for the driver (unregistered, ``IDLE``), not closing."""
        if self.output_ending and not self.pending and self.events:
            self.output_ending = False
            with contextlib.suppress(OSError):  # the peer is gone: its close will tell
                self.sock.shutdown(socket.SHUT_WR)
        wants = self.wants
        if wants == self.events or not self.events:
            return
        reactor = self.server.reactor
        if wants == DONE:
            if self.eof_received:
                self.close()
            elif self.events != IDLE:
                reactor.remove(self.fd)
                self.events = IDLE
            return
        callback: Callable[[int], None]
        if wants == WANT_READ:
            callback = self.on_readable
        elif wants == WANT_WRITE:
            callback = self.on_writable
        else:
            callback = self.on_ready
        if self.events == IDLE:
            reactor.add(self.fd, wants, callback)
        else:
            reactor.change(self.fd, wants, callback)
        self.events = wants

    def close(self) -> None:
        self.driver.cancel()
        if self.events == IDLE:  # registered again, for forget() to remove
            self.server.reactor.add(self.fd, WANT_READ, self.on_readable)
            self.events = WANT_READ
        super().close()


class ReactorServer(ReactorServingCore[Connection]):
    """The serving core on a reactor: callbacks on readiness, one shared buffer."""

    def __init__(
        self,
        reactor: Reactor,
        listeners: Sequence[socket.socket],
        config: Config,
        lifecycle: Lifecycle,
        fd_limit: int | None,
    ) -> None:
        super().__init__(reactor, listeners, config, lifecycle, fd_limit=fd_limit)
        self.marks = config.marks
        self.buffer = bytearray(RECEIVE_SIZE)
        self.view = memoryview(self.buffer)
        # None without --fault: an accept then pays one identity test, no call.
        self.fault_plan = FaultPlan(config.fault, config.fault_every) if config.fault else None

    # What the serving core asks of a backend --------------------------------------------
    def begin(self, sock: socket.socket) -> Connection:
        sock.setblocking(False)
        plan = self.fault_plan
        faults = None if plan is None else plan.next_connection()
        conn = Connection(sock, self) if faults is None else FaultyConnection(sock, self, faults)
        self.reactor.add(conn.fd, WANT_READ, conn.on_readable)
        return conn

    def begin_tls(self, sock: socket.socket, tls: TlsEndpoint) -> Connection:
        from echod.backends.reactor_tls import begin_tls  # TLS listeners only

        sock.setblocking(False)
        wrapped = tls.context.wrap_socket(
            sock, server_side=True, do_handshake_on_connect=False, suppress_ragged_eofs=False
        )
        return begin_tls(self, wrapped, tls)

    def forget(self, conn: Connection) -> None:
        self.reactor.remove(conn.fd)
        conn.sock.close()
        self.release(conn)
