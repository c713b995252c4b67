"""Allow and deny lists and the per-source limits, on the real echod over loopback.

Each rule is shown once: a refused peer is reset before any byte is read (so it never
gets an echo), is counted by reason, and the log names it; a peer the rules let in is
echoed. Sources are distinct loopback addresses.
"""

from __future__ import annotations

import socket

import pytest

from tests.support import Echod, echod, round_trip
from tests.udp.udp_support import client, receive_all, udp_echod


def connect_from(server: Echod, source: str) -> socket.socket:
    sock = socket.socket()
    sock.settimeout(5)
    sock.bind((source, 0))
    sock.connect((server.host, server.port))
    return sock


def echoed(server: Echod, source: str) -> bool:
    """Whether a connection from ``source`` is echoed (False: reset, never served)."""
    try:
        with connect_from(server, source) as sock:
            return round_trip(sock, b"hello") == b"hello"
    except ConnectionResetError:
        return False


def test_deny_resets_a_denied_peer_before_reading_and_names_it() -> None:
    with echod("--port", "0", "--deny", "127.0.0.2/32") as server:
        with connect_from(server, "127.0.0.2") as sock, pytest.raises(ConnectionResetError):
            sock.recv(1)  # a reset (SO_LINGER 0), not an orderly close
        assert echoed(server, "127.0.0.3")
        server.wait_for(r"refused a connection from 127\.0\.0\.2: source denied")
        assert "refused denied=1" in server.report()


def test_allow_lets_in_only_the_listed_networks() -> None:
    with echod("--port", "0", "--allow", "127.0.0.3", "--allow", "10.0.0.0/8") as server:
        assert echoed(server, "127.0.0.3")
        assert not echoed(server, "127.0.0.2")
        assert "refused denied=1" in server.report()


def test_deny_is_checked_before_allow() -> None:
    with echod("--port", "0", "--allow", "127.0.0.0/8", "--deny", "127.0.0.2") as server:
        assert not echoed(server, "127.0.0.2")
        assert echoed(server, "127.0.0.4")


def test_a_source_at_its_connection_limit_is_refused_and_others_are_not() -> None:
    with echod("--port", "0", "--max-connections-per-source", "2") as server:
        held = [connect_from(server, "127.0.0.2") for _ in range(2)]
        for sock in held:
            assert round_trip(sock, b"held") == b"held"
        assert not echoed(server, "127.0.0.2")
        assert echoed(server, "127.0.0.3")
        held.pop().close()
        server.report_until("connections open=1 ")
        assert echoed(server, "127.0.0.2")
        assert "per_source=1" in server.report()
        for sock in held:
            sock.close()


def test_connect_rate_per_source_allows_the_burst_then_refuses() -> None:
    args = ("--connect-rate-per-source", "0.5", "--connect-burst-per-source", "6")
    with echod("--port", "0", *args) as server:
        results = [echoed(server, "127.0.0.2") for _ in range(5)]
        assert results == [True, True, True, False, False]
        assert echoed(server, "127.0.0.3")  # its own bucket
        assert "connect_rate=2" in server.report()


@pytest.mark.parametrize("backend", ["epoll", "asyncio"])
def test_udp_datagrams_from_a_denied_source_are_not_answered(backend: str) -> None:
    listen = ("--listen", "127.0.0.1:0", "--listen", "udp:127.0.0.1:0")
    with udp_echod("--backend", backend, *listen, "--deny", "127.0.0.2") as server:
        address = server.udp[0]
        with client("127.0.0.1", bind=("127.0.0.2", 0)) as denied:
            denied.sendto(b"denied", address)
            assert receive_all(denied) == []
        with client("127.0.0.1", bind=("127.0.0.3", 0)) as allowed:
            allowed.sendto(b"allowed", address)
            assert receive_all(allowed) == [b"allowed"]
        assert server.stats()["denied"] == 1
