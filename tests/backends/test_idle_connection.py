"""What an idle connection holds on the reactor backends, structurally.

The memory per idle connection is a benchmark figure (``python -m bench.conn_memory``
and the c100k slope in docs/uring.md); these tests pin the structure behind it, on a
real server and real sockets: the reactor keeps the connection itself as its handler
(no bound method, no wrapper per connection), the connection keeps no ``__dict__``,
and admission keeps nothing per connection besides its source's table.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator

import pytest

from echod.backends import BY_NAME, available, load
from echod.backends.reactor_connection import Connection
from echod.backends.reactor_faults import FaultyConnection
from echod.backends.reactor_tls import TlsConnection
from echod.backends.selector_backends import ReactorServer, SelectorBackend
from echod.config import Config
from echod.lifecycle import Lifecycle
from echod.loop import PollFamilyIO, Reactor, SelectorIO, io_manager

REACTOR_BACKENDS = [
    name for name in available() if BY_NAME[name].target.startswith("echod.backends.selector_")
]
CLIENTS = 20


def _backend(name: str) -> SelectorBackend:
    backend = load(name)
    assert isinstance(backend, SelectorBackend)
    return backend


@pytest.fixture(params=REACTOR_BACKENDS)
def server(request: pytest.FixtureRequest) -> Iterator[ReactorServer]:
    backend = _backend(request.param)
    listener = socket.create_server(("127.0.0.1", 0))
    listener.setblocking(False)
    reactor = Reactor(io_manager(backend.io))
    served = ReactorServer(reactor, [listener], Config(), Lifecycle(), backend.fd_limit)
    served.start(backend.name)
    yield served
    served.stop()


def _handler(reactor: Reactor, fd: int) -> object:
    io = reactor.io
    if isinstance(io, PollFamilyIO):
        return io.handlers[fd]
    assert isinstance(io, SelectorIO)
    return io.selector.get_key(fd).data


def _accept(server: ReactorServer, listener: socket.socket, count: int) -> None:
    deadline = time.monotonic() + 10
    while len(server.connections) < count:
        assert time.monotonic() < deadline, f"{len(server.connections)} of {count} accepted"
        server.accept_from(listener)


def test_an_idle_connection_is_its_own_handler(server: ReactorServer) -> None:
    listener = server.listeners[0]
    clients = [socket.create_connection(listener.getsockname()) for _ in range(CLIENTS)]
    try:
        _accept(server, listener, CLIENTS)
        for conn in server.connections:
            assert isinstance(conn, Connection)
            assert _handler(server.reactor, conn.fd) is conn, "a bound method per connection"
            assert not hasattr(conn, "__dict__")
            # The only record beside the connection set: its source's table.
            source = server.connections[conn]
            assert source is not None and conn in source.connections
        sizes = [len(v) for v in vars(server.admission).values() if hasattr(v, "__len__")]
        assert max(sizes) < CLIENTS, "admission keeps an entry per connection"
    finally:
        for sock in clients:
            sock.close()


def test_every_connection_class_reads_as_its_handler() -> None:
    for cls in (Connection, FaultyConnection, TlsConnection):
        assert cls.on_event is cls.on_readable, cls.__name__
        assert "__dict__" not in dir(cls), cls.__name__
