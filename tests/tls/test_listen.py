"""The tls: prefix: parsed like every address after it, printed back as given, kept
through a reservation, and refused where TLS cannot be served."""

from __future__ import annotations

from pathlib import Path

import pytest

from echod.config import Config, ConfigError
from echod.net.addresses import Address, ListenerError, parse_address
from echod.net.listener_set import open_listeners
from echod.net.listeners import bind, tls_of


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


def test_every_worker_slots_socket_of_a_tls_address_serves_tls(tmp_path: Path) -> None:
    endpoint = object()  # what the sockets carry; building a real one needs certificates
    listeners, _ = open_listeners(
        ["tls:127.0.0.1:0", "127.0.0.1:0"],
        4,
        slots=2,
        tls=endpoint,  # type: ignore[arg-type]
    )
    try:
        for slot in (1, 2):
            tls_socket, plain = listeners.slots[slot]
            assert tls_socket.name == f"echod.reuseport.{slot}.tls"
            assert tls_of(tls_socket.sock) is endpoint and tls_of(plain.sock) is None
        # Handed on (an upgrade), the name alone makes it a TLS socket again.
        again, unused = open_listeners(
            [f"tls:127.0.0.1:{listeners.slots[1][0].sock.getsockname()[1]}"],
            4,
            slots=2,
            available=[named for named in listeners if named.name.endswith(".tls")],
            tls=endpoint,  # type: ignore[arg-type]
        )
        assert unused == [] and all(tls_of(s) is endpoint for s in again.for_slot(1))
    finally:
        listeners.close()


def test_a_plain_listener_has_no_tls() -> None:
    with bind(parse_address("127.0.0.1:0"), 4) as sock:
        assert tls_of(sock) is None
