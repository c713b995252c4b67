"""The idle and drain sweeps: which quiet connections may be closed."""

from __future__ import annotations

import socket
from collections.abc import Iterator

import pytest

from echod.backends.base import sweep, unread_bytes


class Quiet:
    """A connection as the sweep sees it, over one end of a real socket pair."""

    def __init__(self, sock: socket.socket, pending: bool = False) -> None:
        self.sock = sock
        self.idle_ticks = 0
        self.pending = pending
        self.closed = False

    def has_pending(self) -> bool:
        return self.pending

    def fileno(self) -> int:
        return self.sock.fileno()

    def close(self) -> None:
        self.closed = True


@pytest.fixture
def pair() -> Iterator[tuple[socket.socket, socket.socket]]:
    server, client = socket.socketpair()
    yield server, client
    server.close()
    client.close()


def test_unread_bytes_counts_what_the_kernel_holds(
    pair: tuple[socket.socket, socket.socket],
) -> None:
    server, client = pair
    assert unread_bytes(server.fileno()) == 0
    client.sendall(b"x" * 1000)
    assert unread_bytes(server.fileno()) == 1000


def test_idle_sweep_closes_after_enough_quiet_sweeps(
    pair: tuple[socket.socket, socket.socket],
) -> None:
    conn = Quiet(pair[0])
    sweep([conn], ticks=3, only_drained=False)
    sweep([conn], ticks=3, only_drained=False)
    assert not conn.closed
    sweep([conn], ticks=3, only_drained=False)
    assert conn.closed


def test_drain_sweep_spares_a_connection_with_output_queued(
    pair: tuple[socket.socket, socket.socket],
) -> None:
    conn = Quiet(pair[0], pending=True)
    for _ in range(5):
        sweep([conn], ticks=2, only_drained=True)
    assert not conn.closed


def test_drain_sweep_spares_a_connection_whose_input_waits_unread(
    pair: tuple[socket.socket, socket.socket],
) -> None:
    """Closing it would make the kernel answer RST and the client lose its echo."""
    server, client = pair
    client.sendall(b"sent before the signal")
    conn = Quiet(server)
    for _ in range(5):
        sweep([conn], ticks=2, only_drained=True)
    assert not conn.closed
    server.recv(100)  # the server caught up: now it has nothing left to owe
    sweep([conn], ticks=2, only_drained=True)
    assert conn.closed


def test_drain_sweep_passes_over_a_socket_its_thread_already_closed(
    pair: tuple[socket.socket, socket.socket],
) -> None:
    """A threads connection closes its own socket, then hands its release to the main
    thread: a drain sweep in between sees ``fileno() == -1`` and must not raise (it did:
    echod exited 1 with a traceback on SIGTERM after 10,000 clients left at once)."""
    server, _ = pair
    server.close()
    conn = Quiet(server)
    for _ in range(2):
        sweep([conn], ticks=2, only_drained=True)
    assert conn.closed
