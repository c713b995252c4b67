"""A scrape is answered with counters collected after it came (or at most RENDER_GAP
before), and however many scrapes come, counters are collected at most once per gap.

The endpoint runs over real sockets; only its clock and the supervisor's side (render,
refresh) are stand-ins, so that the test says when time passes and when workers answer.
"""

from __future__ import annotations

import socket
from collections.abc import Callable, Iterator

import pytest

from echod.loop import Reactor, io_manager
from echod.metrics.endpoint import RENDER_GAP, MetricsEndpoint

REQUEST = b"GET /metrics HTTP/1.1\r\nHost: echod\r\n\r\n"


class Supervisor:
    """What the endpoint asks of the supervisor: a rendering of the counters it holds,
    and a collection of fresh ones that ends when :meth:`answer` says the workers did."""

    def __init__(self) -> None:
        self.counter = 0
        self.collections = 0
        self.pending: list[Callable[[], None]] = []
        self.now = 1000.0

    def render(self, openmetrics: bool) -> str:
        return f"echod_received_bytes_total {self.counter}\n"

    def refresh(self, then: Callable[[], None]) -> None:
        self.collections += 1
        self.pending.append(then)

    def answer(self) -> None:
        """Every worker has sent its counters."""
        then = self.pending.pop(0)
        then()


@pytest.fixture
def served() -> Iterator[tuple[MetricsEndpoint, Supervisor]]:
    supervisor = Supervisor()
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    reactor = Reactor(io_manager("epoll"))
    endpoint = MetricsEndpoint(
        listener, supervisor.render, supervisor.refresh, reactor, lambda: supervisor.now
    )
    yield endpoint, supervisor
    endpoint.close()
    reactor.close()


def ask(endpoint: MetricsEndpoint) -> socket.socket:
    client = socket.create_connection(endpoint.listener.getsockname()[:2])
    client.sendall(REQUEST)
    pump(endpoint)
    return client


def pump(endpoint: MetricsEndpoint) -> None:
    """Let the endpoint handle what is ready, on the loop the supervisor runs."""
    endpoint.loop.call_later(0.05, endpoint.loop.stop)
    endpoint.loop.run()


def reply(client: socket.socket) -> bytes | None:
    """The body, if the whole answer has come; None while the request is held."""
    client.setblocking(False)
    try:
        data = client.recv(65536)
    except BlockingIOError:
        return None
    client.settimeout(5)
    while chunk := client.recv(65536):
        data += chunk
    client.close()
    return data.partition(b"\r\n\r\n")[2]


def test_a_scrape_is_held_until_the_workers_have_sent_fresh_counters(
    served: tuple[MetricsEndpoint, Supervisor],
) -> None:
    endpoint, supervisor = served
    client = ask(endpoint)
    assert supervisor.collections == 1
    assert reply(client) is None
    supervisor.counter = 4096  # what the workers report
    supervisor.answer()
    assert reply(client) == b"echod_received_bytes_total 4096\n"


def test_scrapes_within_the_gap_share_one_collection(
    served: tuple[MetricsEndpoint, Supervisor],
) -> None:
    endpoint, supervisor = served
    first = ask(endpoint)
    supervisor.counter = 1
    supervisor.answer()
    assert reply(first) == b"echod_received_bytes_total 1\n"
    supervisor.counter = 2  # counted by now, but not collected
    supervisor.now += RENDER_GAP / 2
    assert [reply(ask(endpoint)) for _ in range(20)] == [b"echod_received_bytes_total 1\n"] * 20
    assert supervisor.collections == 1
    supervisor.now += RENDER_GAP
    late = ask(endpoint)
    assert supervisor.collections == 2
    supervisor.answer()
    assert reply(late) == b"echod_received_bytes_total 2\n"


def test_a_scrape_joins_a_recent_collection_and_waits_for_the_next_after_the_gap(
    served: tuple[MetricsEndpoint, Supervisor],
) -> None:
    endpoint, supervisor = served
    first = ask(endpoint)
    joined = ask(endpoint)  # same instant: the collection under way answers it
    supervisor.now += RENDER_GAP  # workers slow to answer; a later scrape needs newer ones
    later = ask(endpoint)
    assert supervisor.collections == 1
    supervisor.counter = 1
    supervisor.answer()
    assert reply(first) == reply(joined) == b"echod_received_bytes_total 1\n"
    assert reply(later) is None
    assert supervisor.collections == 2
    supervisor.counter = 2
    supervisor.answer()
    assert reply(later) == b"echod_received_bytes_total 2\n"


def test_a_held_scraper_that_leaves_is_forgotten(
    served: tuple[MetricsEndpoint, Supervisor],
) -> None:
    endpoint, supervisor = served
    ask(endpoint).close()
    supervisor.now += 10  # past its deadline
    endpoint.expire()
    assert endpoint.scrapers == {}
    supervisor.answer()  # answering nobody raises nothing
    assert endpoint.scrapers == {}
