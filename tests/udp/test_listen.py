"""``udp:`` listen addresses: parsed beside TCP and Unix ones, bound as datagram sockets."""

from __future__ import annotations

import socket

import pytest

from echod.net.addresses import Address, ListenerError, parse_address
from echod.net.listeners import bind


@pytest.mark.parametrize(
    ("text", "address"),
    [
        ("udp:127.0.0.1:7", Address("127.0.0.1", 7, datagram=True)),
        ("udp:[::1]:7007", Address("::1", 7007, datagram=True)),
        ("udp::9", Address("0.0.0.0", 9, datagram=True)),
        ("udp:localhost:0", Address("localhost", 0, datagram=True)),
        ("127.0.0.1:7", Address("127.0.0.1", 7)),
    ],
)
def test_udp_addresses_parse(text: str, address: Address) -> None:
    assert parse_address(text) == address
    assert str(parse_address(text)).startswith("udp:") == address.datagram


@pytest.mark.parametrize(
    "text", ["udp:unix:/run/x", "udp:", "udp:127.0.0.1", "udp:[::1]7", "udp:h:70000"]
)
def test_bad_udp_addresses_are_one_line_errors(text: str) -> None:
    with pytest.raises(ListenerError) as excinfo:
        parse_address(text)
    assert "\n" not in str(excinfo.value)


def test_udp_binds_a_datagram_socket_not_shared_with_a_second_server() -> None:
    udp = bind(parse_address("udp:127.0.0.1:0"), 16)
    try:
        assert udp.type == socket.SOCK_DGRAM
        port = udp.getsockname()[1]
        # No SO_REUSEADDR on UDP: a second echod on the port fails instead of sharing it.
        with pytest.raises(ListenerError, match="address already in use"):
            bind(parse_address(f"udp:127.0.0.1:{port}"), 16)
    finally:
        udp.close()
