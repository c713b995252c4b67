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

import selectors
import socket
from collections.abc import Sequence
from dataclasses import dataclass

from echod.backends.base import RECEIVE_SIZE
from echod.backends.on_reactor import ReactorServingCore
from echod.backends.reactor_connection import Connection
from echod.backends.reactor_faults import FaultyConnection
from echod.backends.reactor_tls import begin_tls
from echod.config import Config
from echod.lifecycle import Lifecycle
from echod.loop import Reactor, io_manager
from echod.session import WANT_READ, WANT_WRITE
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

    # What the serving core asks of a backend --------------------------------------------
    def begin(self, sock: socket.socket) -> Connection:
        sock.setblocking(False)
        plan = self.fault_plan
        faults = None if plan is None else plan.next_connection()
        conn = (
            Connection(sock, self)
            if faults is None
            else FaultyConnection(sock, self, faults, self.call_later)
        )
        self.reactor.add_handler(conn.fd, WANT_READ, conn)
        return conn

    def begin_tls(self, sock: socket.socket, tls: TlsEndpoint) -> Connection:
        sock.setblocking(False)
        wrapped = tls.context.wrap_socket(
            sock, server_side=True, do_handshake_on_connect=False, suppress_ragged_eofs=False
        )
        return begin_tls(self, wrapped, tls)

    def forget(self, conn: Connection) -> None:
        self.reactor.remove(conn.fd)
        conn.sock.close()
        self.release(conn)
