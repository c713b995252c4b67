"""Each guard, on real loopback sockets: it refuses what it should and serves the rest.

Spoofed sources (broadcast, multicast, the listener itself) are sent through a raw
socket and low source ports need a privileged bind: both need root, as CI runs the
tests; elsewhere those cases are skipped with the reason printed.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator

import pytest

from echod.udp.guard import Refusal
from tests.support import missing
from tests.udp.udp_support import (
    UDP_BACKENDS,
    UdpEchod,
    client,
    receive_all,
    settled,
    spoofed,
    udp_echod,
    wait_until_count,
)

REFUSALS = [reason.value for reason in Refusal]

# Binding source ports below 1024 and spoofing sources need root.
needs_root = pytest.mark.usefixtures("as_root")


@pytest.fixture(scope="module")
def listed() -> Iterator[socket.socket]:
    """The client socket of the listed reflector port, bound before echod is told the
    port and held until the end: no other program can take the port in between."""
    with client("127.0.0.1", bind=("127.0.0.1", 0)) as sock:
        yield sock


@pytest.fixture(params=UDP_BACKENDS, scope="module")
def server(request: pytest.FixtureRequest, listed: socket.socket) -> Iterator[UdpEchod]:
    with udp_echod(
        "--backend",
        request.param,
        "--listen",
        "127.0.0.1:0",
        "--listen",
        "udp:127.0.0.1:0",
        "--udp-refuse-ports",
        str(listed.getsockname()[1]),
    ) as running:
        yield running


def answered(server: UdpEchod, source: tuple[str, int], payload: bytes = b"probe") -> bool:
    try:
        sock = client("127.0.0.1", bind=source)
    except OSError as exc:
        missing(f"cannot bind source {source}: {exc}")
    with sock:
        return answered_on(server, sock, payload)


def answered_on(server: UdpEchod, sock: socket.socket, payload: bytes = b"probe") -> bool:
    """Whether echod answers a datagram from ``sock``; a refusal is waited for on its
    counters, not guessed from a quiet spell."""
    before = server.stats()
    sock.sendto(payload, server.udp[0])
    sock.settimeout(0.05)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            return sock.recv(65_536) == payload and receive_all(sock, quiet=0.05) == []
        except TimeoutError:
            stats = server.stats()
            if sum(stats[k] for k in REFUSALS) > sum(before[k] for k in REFUSALS):
                return False
    raise AssertionError("echod neither answered nor refused within 10 s")


def refused_by(server: UdpEchod, reason: str, send: object) -> None:
    before = server.stats()
    assert callable(send)
    send()
    after = wait_until_count(server, reason, before[reason] + 1, timeout=3)
    assert after[reason] == before[reason] + 1, (before, after)
    assert after["echoed"] == before["echoed"], (before, after)


@needs_root
@pytest.mark.parametrize("port", [1, 7, 19, 1023])
def test_low_source_ports_are_refused(server: UdpEchod, port: int) -> None:
    before = server.stats()["low-port"]
    assert not answered(server, ("127.0.0.1", port))
    assert server.stats()["low-port"] == before + 1


def test_source_port_1024_is_served(server: UdpEchod) -> None:
    assert answered(server, ("127.0.0.1", 1024))


def test_listed_reflector_port_is_refused_and_its_neighbour_served(
    server: UdpEchod, listed: socket.socket
) -> None:
    assert not answered_on(server, listed)
    assert server.stats()["listed-port"] >= 1
    assert answered(server, ("127.0.0.1", 0))


def test_echods_own_listening_port_is_refused_as_a_source(server: UdpEchod) -> None:
    # The TCP listener's port number, used as a UDP source port: another echod there
    # would bounce every answer back.
    before = server.stats()["own-port"]
    assert not answered(server, ("127.0.0.2", server.port))
    assert server.stats()["own-port"] == before + 1


@needs_root
def test_the_listener_itself_is_refused_as_a_source(server: UdpEchod) -> None:
    refused_by(server, "self", lambda: spoofed(server.udp[0], server.udp[0], b"me"))


@needs_root
@pytest.mark.parametrize("source", ["255.255.255.255", "224.0.0.1", "239.255.255.250"])
def test_broadcast_and_multicast_sources_are_refused(server: UdpEchod, source: str) -> None:
    refused_by(server, "address", lambda: spoofed((source, 40000), server.udp[0], b"x"))


@needs_root
def test_a_spoofed_unicast_source_is_answered_there(server: UdpEchod) -> None:
    # The same raw path as the refused cases, so those prove the guard, not the path.
    with client("127.0.0.1", bind=("127.0.0.9", 0)) as victim:
        spoofed(victim.getsockname(), server.udp[0], b"reflected")
        assert victim.recv(100) == b"reflected"


def test_rate_per_source_answers_the_burst_then_the_rate() -> None:
    with udp_echod("--listen", "udp:127.0.0.1:0", "--udp-rate", "20/0", "--udp-burst", "1") as srv:
        with client("127.0.0.1") as sock:
            start = time.monotonic()
            for i in range(200):
                sock.sendto(i.to_bytes(2, "big"), srv.udp[0])
            elapsed = time.monotonic() - start
            answers = receive_all(sock, quiet=0.5)
        # 20 at once, then 20/s while the 200 went out (a wide margin: +2).
        assert 20 <= len(answers) <= 20 + 20 * elapsed + 2, (len(answers), elapsed)
        stats = srv.stats()
        assert stats["rate"] == 200 - len(answers)
        # Another source has its own bucket.
        with client("127.0.0.1") as other:
            other.sendto(b"fresh", srv.udp[0])
            assert other.recv(10) == b"fresh"


def test_byte_rate_per_source() -> None:
    with udp_echod("--listen", "udp:127.0.0.1:0", "--udp-rate", "0/10K", "--udp-burst", "1") as srv:
        with client("127.0.0.1") as sock:
            start = time.monotonic()
            for _ in range(200):
                sock.sendto(bytes(1000), srv.udp[0])
            elapsed = time.monotonic() - start
            answers = receive_all(sock, quiet=0.5)
        # The bucket holds at least one largest datagram (65,535 B), then 10 KiB/s.
        limit = (65_535 + 10_240 * (elapsed + 0.5)) // 1000 + 1
        assert 60 <= len(answers) <= limit, (len(answers), elapsed)


def test_global_budget_holds_across_sources() -> None:
    with udp_echod(
        "--listen", "udp:127.0.0.1:0", "--udp-rate", "0/0", "--udp-budget", "100K"
    ) as srv:
        socks = [client("127.0.0.1", bind=(f"127.0.3.{i}", 0)) for i in range(1, 51)]
        try:
            start = time.monotonic()
            for _ in range(40):
                for sock in socks:
                    sock.sendto(bytes(1000), srv.udp[0])
            elapsed = time.monotonic() - start
            stats = settled(srv)
            received = sum(len(receive_all(sock, quiet=0.05)) for sock in socks)
        finally:
            for sock in socks:
                sock.close()
        allowed = (102_400 * (1 + elapsed + 0.5)) // 1000
        assert received <= allowed, (received, elapsed)
        # Every datagram echod read (the kernel may drop some first) was answered or
        # refused by the budget, and far more were refused than answered.
        assert stats["budget"] == stats["in"] - stats["echoed"] > 5 * stats["echoed"]
        assert received == stats["echoed"]
