"""What a client sees from the threads and gevent backends: the echo rules of RFC 862
and echod's session (exact bytes, half-close, bounded memory, the connection cap)."""

from __future__ import annotations

import os
import socket
import threading
import time
from collections.abc import Callable

import pytest

from tests.backends.conftest import Server, echo, fill_until_stalled, reset, round_trip

Start = Callable[..., Server]


@pytest.mark.parametrize("size", [0, 1, 1000, 65537, 1 << 20, 4 << 20])
def test_every_byte_comes_back_once_in_order(start: Start, size: int) -> None:
    server = start()
    payload = os.urandom(size)
    with server.connect() as sock:
        assert echo(sock, payload) == payload


def test_two_hundred_connections_are_served_at_once(start: Start) -> None:
    server = start()
    clients = [server.connect() for _ in range(200)]
    payloads = [os.urandom(2048) for _ in clients]
    try:
        for sock, payload in zip(clients, payloads, strict=True):
            sock.sendall(payload)
        for sock, payload in zip(clients, payloads, strict=True):
            received = bytearray()
            while len(received) < len(payload):
                received += sock.recv(len(payload) - len(received))
            assert received == payload
        assert "connections open=200 " in server.report()
    finally:
        for sock in clients:
            sock.close()
    # Counters kept by 200 threads (or greenlets) add up once they are all gone.
    line = server.report_until("connections open=0 ")
    assert "connections open=0 total=200 " in line
    total = 200 * 2048
    assert f"bytes in={total} out={total} " in line


def test_concurrent_streams_never_mix(start: Start) -> None:
    server = start()
    payloads = [os.urandom(2 << 20) for _ in range(8)]
    results: dict[int, bytes] = {}

    def stream(index: int) -> None:
        with server.connect() as sock:
            results[index] = echo(sock, payloads[index], chunk=64 * 1024)

    streams = [threading.Thread(target=stream, args=(i,)) for i in range(len(payloads))]
    for thread in streams:
        thread.start()
    for thread in streams:
        thread.join(timeout=60)
    assert sorted(results) == list(range(len(payloads)))
    for index, payload in enumerate(payloads):
        assert results[index] == payload, f"stream {index} came back altered"


def test_after_half_close_everything_pending_comes_back_then_eof(start: Start) -> None:
    server = start()
    payload = os.urandom(1 << 20)
    with server.connect() as sock:
        # echo() ends its input with shutdown(SHUT_WR) and reads until the server closes.
        assert echo(sock, payload, chunk=1 << 20) == payload
        assert sock.recv(1) == b""


def test_a_client_reset_mid_stream_frees_its_connection(start: Start) -> None:
    server = start()
    victim = server.connect()
    fill_until_stalled(victim, limit=8 << 20)  # the server is mid-echo, blocked on us
    reset(victim)
    assert "connections open=0 " in server.report_until("connections open=0 ")
    with server.connect() as sock:
        assert echo(sock, b"still here") == b"still here"


def test_a_client_that_never_reads_costs_bounded_memory(start: Start) -> None:
    server = start()
    with server.connect() as warm:  # let the server touch its buffers once first
        payload = os.urandom(1 << 20)
        assert echo(warm, payload) == payload
    before = server.rss()
    with server.connect() as hog:
        sent = fill_until_stalled(hog, limit=256 << 20)
        # The server stopped reading: what went is what the kernel buffers hold, not 256 MiB.
        assert sent < 64 << 20
        grown = server.rss() - before
        assert grown < 8 << 20, f"server grew by {grown} bytes holding {sent} unread bytes"
        with server.connect() as other:  # and everyone else is still served
            assert round_trip(other, b"ping") == b"ping"


def test_past_max_connections_a_client_waits_until_one_closes(start: Start) -> None:
    server = start("--max-connections", "2")
    first, second, third = server.connect(), server.connect(), server.connect()
    try:
        assert round_trip(first, b"1") == b"1"
        assert round_trip(second, b"2") == b"2"
        third.settimeout(0.5)
        third.sendall(b"3")
        with pytest.raises(socket.timeout):
            third.recv(1)
        first.close()
        third.settimeout(5)
        assert third.recv(1) == b"3"
    finally:
        for sock in (first, second, third):
            sock.close()


def test_idle_timeout_closes_a_silent_client_but_not_a_talking_one(start: Start) -> None:
    server = start("--idle-timeout", "0.5")
    silent = server.connect()
    talking = server.connect()
    began = time.monotonic()
    try:
        while time.monotonic() - began < 1.5:
            assert round_trip(talking, b"still talking") == b"still talking"
            time.sleep(0.1)
        # Closed between one and 1.25 timeouts after its last byte (none, here).
        silent.settimeout(0.1)
        assert silent.recv(1) == b""
    finally:
        silent.close()
        talking.close()
