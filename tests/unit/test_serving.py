"""The serving core's bookkeeping, on real listening sockets, with no event loop.

The core is driven the way a backend drives it (``accept_from`` when a listener is
ready, ``release`` when a connection closed); the backend below only records what the
core asked of it.
"""

from __future__ import annotations

import errno
import socket
from collections.abc import Callable, Iterator

import pytest

from echod.backends.serving import CannotStart, ServingCore, SpareDescriptor
from echod.config import Config
from echod.lifecycle import Lifecycle
from echod.net.addresses import parse_address
from echod.net.listeners import bind


class Conn:
    def __init__(self, sock: socket.socket, core: Recorder) -> None:
        self.sock = sock
        self.core = core
        self.idle_ticks = 0

    def has_pending(self) -> bool:
        return False

    def fileno(self) -> int:
        return self.sock.fileno()

    def close(self) -> None:
        self.sock.close()
        self.core.release(self)


class Recorder(ServingCore[Conn]):
    """A backend that serves nothing and remembers what the core asked of it."""

    def __init__(self, listeners: list[socket.socket], config: Config) -> None:
        super().__init__(listeners, config, Lifecycle())
        self.watched = False
        self.finished = False
        self.timers: list[tuple[float, Callable[[], object]]] = []
        self.refuse_next = False

    def handle_signals(self) -> None:
        pass

    def wait(self) -> None:
        pass

    def finish(self) -> None:
        self.finished = True

    def begin(self, sock: socket.socket) -> Conn:
        if self.refuse_next:
            raise CannotStart("can't start new thread")
        return Conn(sock, self)

    def watch_listeners(self) -> None:
        self.watched = True

    def unwatch_listeners(self) -> None:
        self.watched = False

    def call_later(self, delay: float, callback: Callable[[], object]) -> Timer:
        self.timers.append((delay, callback))
        return Timer()

    def call_every(self, interval: float, callback: Callable[[], object]) -> Timer:
        return Timer()


class Timer:
    def cancel(self) -> None:
        pass


@pytest.fixture
def listener() -> Iterator[socket.socket]:
    sock = socket.create_server(("127.0.0.1", 0))
    sock.setblocking(False)
    yield sock
    sock.close()


def _clients(listener: socket.socket, count: int) -> list[socket.socket]:
    return [socket.create_connection(listener.getsockname(), timeout=5) for _ in range(count)]


def _refused(sock: socket.socket) -> bool:
    try:
        return sock.recv(1) == b""
    except ConnectionResetError:
        return True


def test_admit_counts_and_tracks_release_uncounts(listener: socket.socket) -> None:
    core = Recorder([listener], Config())
    core.start("recorder")
    assert core.watched
    clients = _clients(listener, 3)
    core.accept_from(listener)
    assert len(core.connections) == 3
    assert (core.stats.connections_open, core.stats.connections_total) == (3, 3)
    conn = next(iter(core.connections))
    assert conn.sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)
    conn.close()
    conn.close()  # a second report of the same close is not counted twice
    assert (core.stats.connections_open, core.stats.connections_total) == (2, 3)
    for sock in clients:
        sock.close()
    core.stop()


def test_the_cap_pauses_accepting_and_a_release_resumes_it(listener: socket.socket) -> None:
    core = Recorder([listener], Config(max_connections=2, fair_share="off"))
    core.start("recorder")
    clients = _clients(listener, 3)
    core.accept_from(listener)
    assert len(core.connections) == 2
    assert not core.watched, "past the cap, clients must wait in the backlog"
    next(iter(core.connections)).close()
    assert core.watched
    core.accept_from(listener)
    assert len(core.connections) == 2 and core.stats.connections_total == 3
    for sock in clients:
        sock.close()
    core.stop()


def test_full_under_fair_share_a_newcomer_takes_a_slot_and_the_holder_is_reset(
    listener: socket.socket,
) -> None:
    core = Recorder([listener], Config(max_connections=2))
    core.start("recorder")
    holder = _clients(listener, 3)  # all from 127.0.0.1
    core.accept_from(listener)
    assert core.watched, "under fair share a full core keeps accepting, and decides"
    assert len(core.connections) == 2 and core.stats.refused_full == 1
    assert _refused(holder[2])
    oldest = next(iter(core.admission.holding["127.0.0.1"].connections))  # admitted first
    newcomer = socket.socket()
    newcomer.bind(("127.0.0.2", 0))
    newcomer.connect(listener.getsockname())
    core.accept_from(listener)
    assert core.stats.gave_way == 1 and len(core.connections) == 2
    assert oldest not in core.connections, "the longest-idle (oldest) holder gave way"
    assert "127.0.0.2" in core.admission.holding
    for sock in [*holder, newcomer]:
        sock.close()
    core.stop()


def test_a_denied_peer_is_reset_before_reading(listener: socket.socket) -> None:
    core = Recorder([listener], Config(deny=("127.0.0.0/8",)))
    core.start("recorder")
    (client,) = _clients(listener, 1)
    core.accept_from(listener)
    assert not core.connections and core.stats.refused_denied == 1
    with pytest.raises(ConnectionResetError):
        client.recv(1)
    client.close()
    core.stop()


def test_out_of_descriptors_a_proxy_listeners_clients_are_shed_not_admitted(
    listener: socket.socket,
) -> None:
    """Their header would need waiting for: under fair share they are shed, never
    admitted headerless (the header would be echoed as payload), even where a
    connection of another source could give way."""
    proxied = bind(parse_address("proxy-v2:127.0.0.1:0"), 16)
    core = Recorder([listener, proxied], Config(proxy_from=("127.0.0.1",)))
    core.start("recorder")
    other = socket.socket()
    other.bind(("127.0.0.2", 0))
    other.connect(listener.getsockname())
    core.accept_from(listener)
    assert len(core.connections) == 1
    clients = _clients(proxied, 2)
    core.out_of_resources("test")
    assert len(core.connections) == 1 and core.stats.gave_way == 0
    assert core.stats.refused_resources == 2
    assert all(_refused(sock) for sock in clients)
    for sock in [*clients, other]:
        sock.close()
    core.stop()


def test_the_last_release_while_draining_finishes(listener: socket.socket) -> None:
    core = Recorder([listener], Config())
    core.start("recorder")
    clients = _clients(listener, 2)
    core.accept_from(listener)
    core.drain()
    assert core.listeners_closed and not core.watched and not core.finished
    first, second = list(core.connections)
    first.close()
    assert not core.finished
    second.close()
    assert core.finished
    for sock in clients:
        sock.close()
    core.stop()


def test_a_connection_that_cannot_start_sheds_the_waiting_clients(
    listener: socket.socket,
) -> None:
    core = Recorder([listener], Config())
    core.start("recorder")
    clients = _clients(listener, 4)
    core.refuse_next = True
    core.accept_from(listener)
    # The first was accepted and could not start; the other three were shed.
    assert core.stats.connections_dropped == 4
    assert not core.connections and core.stats.connections_open == 0
    assert all(_refused(sock) for sock in clients)
    assert core.watched, "shedding keeps listening: each new client is refused alike"
    core.refuse_next = False
    late = _clients(listener, 1)
    core.accept_from(listener)
    assert len(core.connections) == 1
    for sock in clients + late:
        sock.close()
    core.stop()


def test_without_a_spare_accepting_stops_until_a_release(listener: socket.socket) -> None:
    core = Recorder([listener], Config())
    core.start("recorder")
    held = _clients(listener, 1)
    core.accept_from(listener)
    core._spare.close()
    core._spare = NoSpare()
    core.out_of_resources("Too many open files")
    assert not core.watched and core.backing_off
    assert [delay for delay, _ in core.timers] == [1.0]
    next(iter(core.connections)).close()
    assert core.watched and not core.backing_off, "a freed descriptor ends the back-off"
    for sock in held:
        sock.close()
    core.stop()


class NoSpare(SpareDescriptor):
    """A spare that cannot be taken back, as when another thread took the descriptor."""

    def __init__(self) -> None:
        self.fd = None

    @staticmethod
    def _open() -> int | None:
        return None


def test_spare_descriptor_refuses_every_waiting_client(listener: socket.socket) -> None:
    spare = SpareDescriptor()
    try:
        clients = _clients(listener, 3)
        assert spare.shed([listener]) == 3
        assert spare.fd is not None
        assert all(_refused(sock) for sock in clients)
        for sock in clients:
            sock.close()
    finally:
        spare.close()


# Completion entry points (the uring backend's): the kernel hands over a descriptor or an
# error; the core decides what it means, as it does for a readable listener.
def _accepted_fd(listener: socket.socket) -> int:
    """What a completed accept hands over: a new descriptor the core now owns."""
    sock, _ = listener.accept()
    return sock.detach()


def test_a_descriptor_accepted_past_the_cap_waits_for_a_release(listener: socket.socket) -> None:
    # Without fair share (with it, admission decides at once: tests/contract/test_fair_share).
    core = Recorder([listener], Config(max_connections=1, fair_share="off"))
    core.start("recorder")
    clients = _clients(listener, 2)
    core.accept_completed(listener, _accepted_fd(listener))
    assert len(core.connections) == 1 and not core.watched
    # The kernel had accepted the second before it heard that accepting paused.
    core.accept_completed(listener, _accepted_fd(listener))
    assert len(core.connections) == 1 and len(core.parked) == 1
    next(iter(core.connections)).close()
    assert len(core.connections) == 1 and not core.parked, "the parked one is served"
    assert core.stats.connections_total == 2
    for sock in clients:
        sock.close()
    core.stop()


def test_emfile_arriving_as_a_completion_sheds_the_waiting_clients(
    listener: socket.socket,
) -> None:
    core = Recorder([listener], Config())
    core.start("recorder")
    clients = _clients(listener, 3)
    core.accept_completed(listener, -errno.EMFILE)
    assert core.stats.accept_errors_exhausted == 1
    assert core.stats.refused_resources == 3
    assert all(_refused(sock) for sock in clients)
    core.accept_completed(listener, -errno.ECONNABORTED)
    assert core.stats.accept_errors_peer_gone == 1
    with pytest.raises(OSError):
        core.accept_completed(listener, -errno.EBADF)  # a listener gone bad is a bug
    core.stop()


class Completed:
    """A completion connection that records what the core submitted for it."""

    def __init__(self) -> None:
        self.idle_ticks = 3
        self.in_flight = 0
        self.offset = 0
        self.submitted: list[tuple[str, int, int]] = []
        self.ended = False

    def echo(self, offset: int, length: int) -> None:
        self.submitted.append(("echo", offset, length))

    def receive(self) -> None:
        self.submitted.append(("receive", 0, 0))

    def end(self) -> None:
        self.ended = True

    def has_pending(self) -> bool:
        return False

    def fileno(self) -> int:
        return -1

    def close(self) -> None:
        self.ended = True


def test_a_receive_is_echoed_and_a_short_send_sends_the_rest(listener: socket.socket) -> None:
    core = Recorder([listener], Config())
    conn = Completed()
    core.receive_completed(conn, 1000)
    assert conn.submitted == [("echo", 0, 1000)] and conn.idle_ticks == 0
    core.send_completed(conn, 300)  # failed after 300 bytes: the rest again
    assert conn.submitted[-1] == ("echo", 300, 700)
    core.send_completed(conn, -errno.EPIPE)  # the peer is gone
    assert conn.ended
    assert (core.stats.bytes_in, core.stats.bytes_out) == (1000, 300)
    other = Completed()
    core.receive_completed(other, -errno.EINTR)
    assert other.submitted == [("receive", 0, 0)] and not other.ended
    core.receive_completed(other, 0)  # end of input, nothing in flight
    assert other.ended
    core.stop()
