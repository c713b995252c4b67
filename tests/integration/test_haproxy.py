"""A real HAProxy (Debian's package) in front of echod, sending PROXY v1 and v2.

HAProxy runs in the foreground from a generated config on loopback: one frontend per
version, ``send-proxy`` to echod's ``proxy-v1:`` listener and ``send-proxy-v2`` to its
``proxy-v2:`` one. Clients connect to HAProxy from their own loopback addresses; echod
must echo them, and its log and metrics must show their addresses, not HAProxy's.
"""

from __future__ import annotations

import re
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.metrics.scrape import address_of, scrape
from tests.support import Echod, echod, exchange, listening_ports, require_tool

CLIENT, DENIED_CLIENT = "127.0.0.5", "127.0.0.6"

CONFIG = """
global
    maxconn 100

defaults
    mode tcp
    timeout connect 5s
    timeout client 30s
    timeout server 30s

frontend v1
    bind 127.0.0.1:{front_v1}
    default_backend echod_v1

frontend v2
    bind 127.0.0.1:{front_v2}
    default_backend echod_v2

backend echod_v1
    server echod 127.0.0.1:{echod_v1} send-proxy

backend echod_v2
    server echod 127.0.0.1:{echod_v2} send-proxy-v2
"""


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


@pytest.fixture
def stack(tmp_path: Path) -> Iterator[tuple[Echod, dict[int, int]]]:
    haproxy = require_tool("haproxy")
    args = (
        "--listen", "proxy-v1:127.0.0.1:0",
        "--listen", "proxy-v2:127.0.0.1:0",
        "--proxy-from", "127.0.0.1/32",
        "--deny", DENIED_CLIENT,
        "--metrics", "127.0.0.1:0",
        "--log-level", "debug",
    )  # fmt: skip
    with echod(*args) as server:
        server.wait_for(r"(?s)listening on .*listening on ")
        ports = listening_ports(server.log)
        front = {1: free_port(), 2: free_port()}
        config = tmp_path / "haproxy.cfg"
        config.write_text(
            CONFIG.format(
                front_v1=front[1], front_v2=front[2], echod_v1=ports[0], echod_v2=ports[1]
            )
        )
        check = subprocess.run([haproxy, "-c", "-f", str(config)], capture_output=True, text=True)
        assert check.returncode == 0, check.stdout + check.stderr
        proxy = subprocess.Popen(
            [haproxy, "-db", "-f", str(config)],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            for port in front.values():
                deadline = time.monotonic() + 10
                while True:
                    try:
                        socket.create_connection(("127.0.0.1", port), timeout=1).close()
                        break
                    except OSError:
                        assert proxy.poll() is None, "haproxy exited"
                        assert time.monotonic() < deadline, "haproxy never listened"
                        time.sleep(0.05)
            yield server, front
        finally:
            proxy.terminate()
            proxy.wait(10)


def through(front: int, source: str) -> socket.socket:
    sock = socket.socket()
    sock.settimeout(10)
    sock.bind((source, 0))
    sock.connect(("127.0.0.1", front))
    return sock


@pytest.mark.parametrize("version", [1, 2])
def test_haproxy_send_proxy_carries_the_clients_address(
    stack: tuple[Echod, dict[int, int]], version: int
) -> None:
    server, front = stack
    payload = bytes(range(256)) * 512
    with through(front[version], CLIENT) as sock:
        assert exchange(sock, payload) == payload
    server.wait_for(rf"proxy: connection from {re.escape(CLIENT)} via 127\.0\.0\.1")
    # The rules see the client too: a denied client is refused though HAProxy is trusted.
    with through(front[version], DENIED_CLIENT) as sock:
        sock.sendall(b"refused")
        assert sock.recv(16) == b""  # HAProxy closes the client once echod resets it
    server.wait_for(rf"refused a connection from {re.escape(DENIED_CLIENT)}: source denied")
    figures = scrape(address_of(server))
    assert figures[("echod_connections_refused_total", (("reason", "denied"),))] >= 1
    assert figures[("echod_connections_refused_total", (("reason", "proxy_header"),))] == 0
    assert figures[("echod_connections_refused_total", (("reason", "proxy_peer"),))] == 0
    assert figures[("echod_received_bytes_total", ())] >= len(payload)
