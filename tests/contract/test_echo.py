"""RFC 862: every byte a client sends comes back, in order, unchanged — on every backend."""

from __future__ import annotations

import asyncio
import os
import random
import socket
import subprocess

import pytest

from tests.support import (
    Echod,
    exchange,
    in_threads,
    missing,
    recv_exactly,
    require_tool,
    reset,
    wait_until,
)


@pytest.mark.parametrize("size", [0, 1, 1023, 64 * 1024 + 7, 1 << 20, 4 << 20])
def test_echoes_random_binary_payload_exactly(server: Echod, size: int) -> None:
    payload = os.urandom(size)
    with server.connect() as sock:
        assert exchange(sock, payload) == payload


def test_half_close_returns_everything_then_eof(server: Echod) -> None:
    payload = os.urandom(1 << 20)
    with server.connect() as sock:
        sock.sendall(payload)
        sock.shutdown(socket.SHUT_WR)  # before reading a single byte back
        assert recv_exactly(sock, len(payload)) == payload
        assert sock.recv(1) == b""


def test_thousands_of_pipelined_small_messages_keep_their_order(server: Echod) -> None:
    messages = [f"{i:08d}:".encode() + os.urandom(random.randint(1, 40)) for i in range(5000)]
    stream = b"".join(messages)
    with server.connect() as sock:
        assert exchange(sock, stream, chunk=4096) == stream


def test_serves_500_concurrent_connections(server: Echod) -> None:
    async def run() -> list[bool]:
        payloads = [os.urandom(1024) for _ in range(500)]
        # Open them all before any finishes: the server holds 500 at once.
        connections = [await asyncio.open_connection(server.host, server.port) for _ in payloads]
        for (_, writer), payload in zip(connections, payloads, strict=True):
            writer.write(payload)
        results = []
        for (reader, writer), payload in zip(connections, payloads, strict=True):
            results.append(await reader.readexactly(len(payload)) == payload)
            writer.close()
        return results

    results = asyncio.run(run())
    assert results.count(True) == 500


def test_survives_a_client_reset_mid_stream_and_closes_its_descriptor(server: Echod) -> None:
    baseline = server.settled_fds()
    victim = server.connect()
    victim.sendall(os.urandom(2 << 20))  # leaves the server writing to a peer that is gone
    assert wait_until(lambda: server.open_fds() == baseline + 1)
    reset(victim)
    assert wait_until(lambda: server.open_fds() == baseline), "the reset connection's fd leaked"
    with server.connect() as sock:
        assert exchange(sock, b"still here") == b"still here"


def test_a_slow_reader_does_not_delay_other_clients(server: Echod) -> None:
    slow = server.connect()
    slow.setblocking(False)
    sent = 0
    try:
        while sent < 32 << 20:  # fills the server's budget for it and every kernel buffer
            sent += slow.send(os.urandom(64 * 1024))
    except BlockingIOError:
        pass
    try:
        with server.connect() as other:
            other.settimeout(5)
            assert exchange(other, b"x" * 100_000) == b"x" * 100_000
    finally:
        reset(slow)


@pytest.mark.parametrize("tool", ["nc", "socat"])
def test_real_clients_get_their_bytes_back(server: Echod, tool: str) -> None:
    path = require_tool(tool)
    if tool == "nc":
        # -N: shut down the write side at end of input, so the server's EOF ends nc.
        help_text = subprocess.run([path, "-h"], capture_output=True, text=True).stderr
        if "-N" not in help_text:
            missing("this nc has no -N (apt-get install netcat-openbsd)")
        command = [path, "-N", server.host, str(server.port)]
    else:
        command = [path, "-t", "5", "-", f"TCP:{server.host}:{server.port}"]
    payload = b"hello, echod\n" + bytes(range(256)) * 64
    result = subprocess.run(command, input=payload, capture_output=True, timeout=20)
    assert result.stdout == payload


def test_many_threads_interleaving_sends_each_get_their_own_stream(server: Echod) -> None:
    def client(seed: int) -> None:
        rng = random.Random(seed)
        chunk = rng.choice([7, 100, 4096, 65536])
        payload = rng.randbytes(rng.randint(1, 200 * chunk))
        with server.connect() as sock:
            assert exchange(sock, payload, chunk=chunk) == payload, f"client {seed}"

    in_threads(client, [(seed,) for seed in range(40)])
