"""The tls: prefix: parsed like every address after it, printed back as given, kept
through a reservation, and refused where TLS cannot be served."""

from __future__ import annotations

import pytest

from echod.config import Config, ConfigError
from echod.net.listeners import Address, ListenerError, bind, parse_address, reserve, tls_of


@pytest.mark.parametrize(
    ("text", "address"),
    [
        ("tls:127.0.0.1:7443", Address("127.0.0.1", 7443, tls=True)),
        ("tls:[::1]:7443", Address("::1", 7443, tls=True)),
        ("tls::7443", Address("0.0.0.0", 7443, tls=True)),
        ("tls:unix:/run/echod.sock", Address(path="/run/echod.sock", tls=True)),
    ],
)
def test_tls_prefixes_any_stream_address(text: str, address: Address) -> None:
    assert parse_address(text) == address
    assert parse_address(str(address)) == address


@pytest.mark.parametrize(
    ("text", "says"),
    [("tls:udp:127.0.0.1:7", "not UDP"), ("tls:tls:127.0.0.1:7", "twice"), ("tls:", "HOST:PORT")],
)
def test_tls_where_it_cannot_be_is_one_line(text: str, says: str) -> None:
    with pytest.raises(ListenerError, match=says):
        parse_address(text)


def test_a_tls_listener_needs_a_certificate() -> None:
    with pytest.raises(ConfigError, match="needs --tls-cert"):
        Config(listen=("tls:127.0.0.1:0",))


def test_a_reservation_keeps_the_prefix() -> None:
    sock, resolved = reserve(parse_address("tls:127.0.0.1:0"))
    with sock:
        assert resolved.tls and resolved.port == sock.getsockname()[1]


def test_a_plain_listener_has_no_tls() -> None:
    with bind(parse_address("127.0.0.1:0"), 4) as sock:
        assert tls_of(sock) is None
