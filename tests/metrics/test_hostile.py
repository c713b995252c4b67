"""A slow or hostile scraper costs the supervisor bounded memory and descriptors, and
costs echo clients nothing: they are served by workers the scraper never reaches."""

from __future__ import annotations

import contextlib
import socket
import time
from collections.abc import Iterator

import pytest

from echod.metrics.endpoint import DEADLINE, HEAD_LIMIT, MAX_SCRAPERS
from tests.metrics.scrape import address_of, request, scrape, value
from tests.support import Echod, echod, recv_exactly, wait_until

REQUESTS = 3000


def echo_round_trip(sock: socket.socket) -> float:
    started = time.monotonic()
    sock.sendall(b"ping\n")
    assert recv_exactly(sock, 5) == b"ping\n"
    return time.monotonic() - started


def connect(where: tuple[int, object]) -> socket.socket:
    family, address = where
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.settimeout(10)
    sock.connect(address)  # type: ignore[arg-type]
    return sock


def closed_by_server(sock: socket.socket) -> bool:
    try:
        return sock.recv(65536) == b""
    except ConnectionResetError:
        return True


def test_slowloris_cannot_lock_out_a_scrape_and_is_cut_off(metrics_echod: Echod) -> None:
    where = address_of(metrics_echod)
    slow = [connect(where) for _ in range(MAX_SCRAPERS * 3)]
    try:
        for sock in slow:
            sock.sendall(b"GET /metr")  # and never the rest
        with metrics_echod.connect() as client:
            assert echo_round_trip(client) < 2.0
            # The oldest are evicted to make room: a real scraper still gets through.
            assert value(scrape(where), "echod_build_info", version="0.1.0", backend="epoll") == 1
            for sock in slow:
                sock.settimeout(DEADLINE + 5 + 5)  # deadline plus one supervisor tick, slack
            assert all(closed_by_server(sock) for sock in slow)
            assert echo_round_trip(client) < 2.0
    finally:
        for sock in slow:
            sock.close()


def read_all(sock: socket.socket) -> bytes:
    reply = b""
    with contextlib.suppress(ConnectionResetError):
        while chunk := sock.recv(65536):
            reply += chunk
    return reply


def test_a_head_past_the_limit_is_answered_431(metrics_echod: Echod) -> None:
    """One byte over the limit and no more: the endpoint reads all of it, so it closes
    with nothing unread and the 431 cannot be lost to a reset."""
    where = address_of(metrics_echod)
    head = b"GET /metrics HTTP/1.1\r\nX-Fill: "
    with connect(where) as sock:
        sock.sendall(head + b"x" * (HEAD_LIMIT + 1 - len(head)))
        reply = read_all(sock)
    assert reply.startswith(b"HTTP/1.1 431 Request Header Fields Too Large\r\n"), reply[:100]


def test_a_huge_request_is_refused_after_the_head_limit(metrics_echod: Echod) -> None:
    where = address_of(metrics_echod)
    with connect(where) as sock:
        with contextlib.suppress(ConnectionResetError, BrokenPipeError):
            sock.sendall(b"GET /metrics HTTP/1.1\r\nX-Fill: " + b"x" * (1 << 20))
        reply = read_all(sock)
    # Either the 431 arrived, or the unread megabyte made the close a reset first (the
    # 431 itself is checked above, where nothing is left unread).
    assert reply == b"" or reply.startswith(b"HTTP/1.1 431 "), reply[:100]
    status, _, _ = request(where, b"GET /metrics HTTP/1.1\r\n\r\n")
    assert status == "HTTP/1.1 200 OK"


def test_many_requests_cost_bounded_memory_and_no_descriptors(metrics_echod: Echod) -> None:
    where = address_of(metrics_echod)
    scrape(where)
    fds_before, rss_before = metrics_echod.settled_fds(), metrics_echod.rss()
    slowest = 0.0
    with metrics_echod.connect() as client:
        for number in range(REQUESTS):
            status, _, body = request(where, b"GET /metrics HTTP/1.1\r\n\r\n")
            assert status == "HTTP/1.1 200 OK" and body.endswith(b"\n")
            if number % 100 == 0:
                slowest = max(slowest, echo_round_trip(client))
    assert slowest < 2.0  # wide: a shared two-core machine; a blocked echo would be TIMEOUT
    assert wait_until(lambda: metrics_echod.open_fds() <= fds_before)
    assert metrics_echod.rss() - rss_before < 8 << 20


def test_bad_requests_get_one_answer_each(metrics_echod: Echod) -> None:
    where = address_of(metrics_echod)
    assert request(where, b"GET / HTTP/1.1\r\n\r\n")[0] == "HTTP/1.1 404 Not Found"
    assert request(where, b"DELETE /metrics HTTP/1.1\r\n\r\n")[0].startswith("HTTP/1.1 405")
    assert request(where, b"\x16\x03\x01\x02\x00\n\n")[0] == "HTTP/1.1 400 Bad Request"
    assert HEAD_LIMIT <= 64 * 1024


@pytest.fixture
def metrics_echod() -> Iterator[Echod]:
    with echod("--port", "0", "--backend", "epoll", "--metrics", "127.0.0.1:0") as server:
        yield server
