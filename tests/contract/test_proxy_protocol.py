"""PROXY protocol listeners on every backend: the header is read by the serving core,
the bytes after it are echoed, and the address it carries is the one the rules see."""

from __future__ import annotations

import re
import signal
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from echod.net.proxy_protocol import encode_v1, encode_v2
from tests.support import Echod, echod, listening_ports, recv_exactly, wait_until

CLIENT = ("192.0.2.10", 40001)  # the address the header carries (TEST-NET-1)
DENIED = ("198.51.100.7", 40002)  # TEST-NET-2, denied below


@pytest.fixture(scope="module")
def proxied(backend: str) -> Iterator[Echod]:
    args = (
        "--backend", backend,
        "--listen", "proxy-v1:127.0.0.1:0",
        "--listen", "proxy-v2:127.0.0.1:0",
        "--proxy-from", "127.0.0.1",
        "--deny", "198.51.100.0/24",
        "--proxy-timeout", "1",
        "--log-level", "debug",
    )  # fmt: skip
    with echod(*args) as server:
        server.wait_for(r"(?s)listening on .*listening on ")
        ports = listening_ports(server.log)
        server.ports = ports  # type: ignore[attr-defined]
        yield server


def connect(server: Echod, version: int, source: str = "127.0.0.1") -> socket.socket:
    sock = socket.socket()
    sock.settimeout(5)
    sock.bind((source, 0))
    sock.connect(("127.0.0.1", server.ports[version - 1]))  # type: ignore[attr-defined]
    return sock


def header(version: int, source: tuple[str, int] = CLIENT) -> bytes:
    destination = ("127.0.0.1", 7)
    return encode_v1(source, destination) if version == 1 else encode_v2(source, destination)


@pytest.mark.parametrize("version", [1, 2])
def test_bytes_sent_with_the_header_are_echoed(proxied: Echod, version: int) -> None:
    with connect(proxied, version) as sock:
        sock.sendall(header(version) + b"payload in the header's segment")
        assert recv_exactly(sock, 31) == b"payload in the header's segment"
        sock.sendall(b"and after")
        assert recv_exactly(sock, 9) == b"and after"
    proxied.wait_for(r"proxy: connection from 192\.0\.2\.10 via 127\.0\.0\.1")


@pytest.mark.parametrize("version", [1, 2])
def test_a_header_sent_byte_by_byte_is_read_whole(proxied: Echod, version: int) -> None:
    with connect(proxied, version) as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        for byte in header(version, ("192.0.2.11", 5)):
            sock.send(bytes([byte]))
            time.sleep(0.001)
        sock.sendall(b"x")
        assert recv_exactly(sock, 1) == b"x"


@pytest.mark.parametrize("version", [1, 2])
def test_the_carried_address_is_what_deny_sees(proxied: Echod, version: int) -> None:
    with connect(proxied, version) as sock:
        sock.sendall(header(version, DENIED) + b"never echoed")
        with pytest.raises(ConnectionResetError):
            sock.recv(1)  # the header is read first, so the send always completes
    proxied.wait_for(r"refused a connection from 198\.51\.100\.7: source denied")


@pytest.mark.parametrize("version", [1, 2])
def test_a_malformed_header_resets_and_is_counted(proxied: Echod, version: int) -> None:
    bad = b"PROXY TCP4 1.2.3.4 5.6.7.8 1 99999\r\n" if version == 1 else b"\r\n\r\n\x00\r\nQUIZ"
    with connect(proxied, version) as sock:
        sock.sendall(bad)
        with pytest.raises(ConnectionResetError):
            sock.recv(1)
    assert "proxy_header=" in proxied.report()


def test_a_header_that_never_comes_times_out(proxied: Echod) -> None:
    with connect(proxied, 2) as sock:
        sock.sendall(b"\r\n\r\n")
        start = time.monotonic()
        with pytest.raises(ConnectionResetError):
            sock.recv(1)  # the socket's own timeout is 5 s, --proxy-timeout 1
        assert time.monotonic() - start > 0.5


def test_a_peer_outside_proxy_from_is_reset_before_reading(proxied: Echod) -> None:
    # The reset may come before connect() returns, or before the send.
    with pytest.raises(ConnectionResetError), connect(proxied, 2, source="127.0.0.2") as sock:
        sock.sendall(header(2) + b"spoofed")
        sock.recv(1)
    proxied.wait_for(r"refused a connection from 127\.0\.0\.2: peer not in --proxy-from")
    assert "proxy_peer=" in proxied.report()


def test_a_v2_health_check_uses_the_proxys_own_address(proxied: Echod) -> None:
    with connect(proxied, 2) as sock:
        sock.sendall(encode_v2(None, None) + b"ok")
        assert recv_exactly(sock, 2) == b"ok"
    proxied.wait_for(r"proxy: connection from 127\.0\.0\.1 via 127\.0\.0\.1")


def test_a_proxy_listener_without_proxy_from_is_a_bad_setting() -> None:
    server = Echod("--listen", "proxy-v2:127.0.0.1:0", wait=False)
    assert server.proc.wait(20) == 2
    assert "needs --proxy-from" in server.log and "Traceback" not in server.log


def test_a_peer_that_connects_and_leaves_is_not_a_bad_header(proxied: Echod) -> None:
    """A balancer's plain TCP health check: connect, close, never a byte."""
    before = proxied.report()
    socket.create_connection(("127.0.0.1", proxied.ports[1]), timeout=5).close()  # type: ignore[attr-defined]
    with connect(proxied, 2) as sock:  # served after it, so the close was handled
        sock.sendall(header(2) + b"after")
        assert recv_exactly(sock, 5) == b"after"
    count = re.compile(r"proxy_header=(\d+)")
    assert count.findall(proxied.report()) == count.findall(before)


def _backlog(port: int) -> int:
    """Clients waiting in the accept queue of the IPv4 listener on ``port``: for a
    listening socket, /proc/net/tcp's rx_queue is that count."""
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        if int(fields[1].split(":")[1], 16) == port and fields[3] == "0A":
            return int(fields[4].split(":")[1], 16)
    raise AssertionError(f"no listener on port {port}")


def test_a_stop_serves_a_client_whose_header_is_still_on_its_way(backend: str) -> None:
    """Accepted before the stop, the client is served: a drain waits for its header
    as it waits for a connection's echo (a reload drains the old workers the same way)."""
    args = ("--listen", "proxy-v2:127.0.0.1:0", "--proxy-from", "127.0.0.1")
    with echod("--backend", backend, *args) as server:
        port = server.port
        server.ports = [0, port]  # type: ignore[attr-defined]
        with connect(server, 2) as sock:
            first = header(2)
            sock.sendall(first[:4])
            assert wait_until(lambda: _backlog(port) == 0)
            server.signal(signal.SIGTERM)
            server.wait_for("stopping: 0 connection")
            sock.sendall(first[4:] + b"late")
            assert recv_exactly(sock, 4) == b"late"
        assert server.proc.wait(20) == 0  # the stop ends once the client has left
