"""RFC 862 over UDP: each datagram comes back once, exactly, to its sender — every backend."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator

import pytest

from tests.support import ROOT, ipv6_loopback, missing, require_ipv6
from tests.udp.udp_support import (
    UDP_BACKENDS,
    UdpEchod,
    client,
    receive_all,
    udp_echod,
)

SIZES = [0, 1, 1472, 8192, 65_507]


@pytest.fixture(params=UDP_BACKENDS, scope="module")
def server(request: pytest.FixtureRequest) -> Iterator[UdpEchod]:
    listen = ["--listen", "127.0.0.1:0", "--listen", "udp:127.0.0.1:0"]
    if ipv6_loopback():
        listen += ["--listen", "udp:[::1]:0"]
    with udp_echod("--backend", request.param, *listen, listeners=len(listen) // 2 - 1) as running:
        yield running


@pytest.mark.parametrize("family", ["ipv4", "ipv6"])
@pytest.mark.parametrize("size", SIZES)
def test_each_datagram_comes_back_once_exactly(server: UdpEchod, size: int, family: str) -> None:
    if family == "ipv6":
        require_ipv6()
    address = server.udp[0 if family == "ipv4" else 1]
    payload = os.urandom(size)
    with client(address[0]) as sock:
        sock.sendto(payload, address)
        answer, source = sock.recvfrom(70_000)
        assert answer == payload
        assert source[:2] == address  # from the address it was sent to
        assert receive_all(sock, quiet=0.2) == []  # at most once


def test_ipv6_carries_more_than_ipv4_can(server: UdpEchod) -> None:
    require_ipv6()
    payload = os.urandom(65_527)  # the largest UDP payload over IPv6
    with client("::1") as sock:
        sock.sendto(payload, server.udp[1])
        assert sock.recv(70_000) == payload


def test_many_datagrams_each_answered_once_and_counted(server: UdpEchod) -> None:
    before = server.stats()
    payloads = [i.to_bytes(4, "big") + os.urandom(60) for i in range(50)]
    with client("127.0.0.1") as sock:
        for payload in payloads:
            sock.sendto(payload, server.udp[0])
        answers = receive_all(sock, quiet=0.5)
    assert sorted(answers) == sorted(payloads)
    after = server.stats()
    assert after["in"] - before["in"] == 50
    assert after["echoed"] - before["echoed"] == 50


def test_tcp_still_served_beside_udp(server: UdpEchod) -> None:
    with server.connect() as sock:
        sock.sendall(b"tcp too")
        assert sock.recv(100) == b"tcp too"


@pytest.mark.parametrize("backend", ["threads", "gevent"])
def test_backends_without_udp_say_so_in_one_line(backend: str) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "echod", "--backend", backend, "--listen", "udp:127.0.0.1:0"],
        capture_output=True,
        text=True,
        timeout=30,
        cwd=ROOT,
    )
    if "not available" in result.stderr:
        missing(result.stderr.strip())
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [
        f"echod: error: backend {backend} does not serve UDP listeners; use a reactor "
        "backend (epoll, poll, select, ...), asyncio or uvloop"
    ]


@pytest.mark.parametrize(
    ("listen", "status"),
    # Malformed: a bad setting (2). Well-formed but unusable: a listener error (1).
    [("udp:unix:/tmp/x", 2), ("udp:127.0.0.1:99999", 2), ("udp:nowhere.invalid:7", 1)],
)
def test_bad_udp_addresses_are_one_line(listen: str, status: int) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "echod", "--listen", listen],
        capture_output=True,
        text=True,
        timeout=30,
        cwd=ROOT,
    )
    assert result.returncode == status, result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert result.stderr.startswith("echod: error:") and "Traceback" not in result.stderr
    assert listen in result.stderr  # udp: prefix and all


@pytest.mark.parametrize("backend", UDP_BACKENDS)
def test_graceful_stop_reports_udp_and_exits_0(backend: str) -> None:
    server = UdpEchod("--backend", backend, "--listen", "udp:127.0.0.1:0")
    with client("127.0.0.1") as sock:
        sock.sendto(b"x", server.udp[0])
        assert sock.recv(10) == b"x"
    server.signal(signal.SIGTERM)
    assert server.proc.wait(20) == 0
    server.stop()
    assert "stopped: " in server.log and "udp in=1 echoed=1 dropped=0" in server.log
