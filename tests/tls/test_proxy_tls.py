"""``proxy-v2+tls:`` on every TLS backend: the PROXY header comes first, in plaintext, as
HAProxy's ``send-proxy-v2`` sends it in front of a TLS passthrough; then the handshake.
The address the header carries is the one echod logs; plaintext after it is refused."""

from __future__ import annotations

import socket
import ssl
from collections.abc import Iterator

import pytest

from echod.net.proxy_protocol import encode_v1, encode_v2
from tests.support import TIMEOUT, Echod, echod, listening_ports, recv_exactly
from tests.tls.tls_support import Pki, client_context

CLIENT = ("192.0.2.44", 40044)


@pytest.fixture(scope="module")
def proxied_tls(backend: str, pki: Pki) -> Iterator[Echod]:
    args = (
        "--backend", backend,
        "--listen", "proxy-v1+tls:127.0.0.1:0",
        "--listen", "proxy-v2:tls:127.0.0.1:0",
        "--proxy-from", "127.0.0.1",
        "--log-level", "debug",
    )  # fmt: skip
    with echod(*args, *pki.server_args()) as server:
        server.wait_for(r"(?s)listening on .*listening on ")
        server.ports = listening_ports(server.log)  # type: ignore[attr-defined]
        yield server


def test_each_listener_is_logged_as_it_would_be_typed(proxied_tls: Echod) -> None:
    # Both spellings of the option are the one listener: logged as Address spells it.
    first, second = proxied_tls.ports  # type: ignore[attr-defined]
    assert f"listening on proxy-v1:tls:127.0.0.1:{first} " in proxied_tls.log
    assert f"listening on proxy-v2:tls:127.0.0.1:{second} " in proxied_tls.log


def connect_with_header(server: Echod, version: int) -> socket.socket:
    raw = socket.create_connection(("127.0.0.1", server.ports[version - 1]), timeout=TIMEOUT)  # type: ignore[attr-defined]
    encode = encode_v1 if version == 1 else encode_v2
    raw.sendall(encode(CLIENT, ("127.0.0.1", 443)))
    return raw


@pytest.mark.parametrize("version", [1, 2])
def test_the_handshake_follows_the_header_and_bytes_are_echoed(
    proxied_tls: Echod, pki: Pki, version: int
) -> None:
    with (
        connect_with_header(proxied_tls, version) as raw,
        client_context(pki).wrap_socket(raw, server_hostname="localhost") as tls,
    ):
        tls.sendall(b"through the balancer")
        assert recv_exactly(tls, 20) == b"through the balancer"
    proxied_tls.wait_for(r"proxy: connection from 192\.0\.2\.44 via 127\.0\.0\.1")


@pytest.mark.parametrize("version", [1, 2])
def test_plaintext_after_the_header_is_never_echoed(proxied_tls: Echod, version: int) -> None:
    with connect_with_header(proxied_tls, version) as raw:
        raw.sendall(b"GET / HTTP/1.0\r\n\r\n")
        received = b""
        try:
            while chunk := raw.recv(4096):
                received += chunk
        except ConnectionResetError:
            pass
        assert b"GET /" not in received  # a TLS alert at most, then the close


def test_a_plain_client_without_the_header_is_not_served(proxied_tls: Echod, pki: Pki) -> None:
    """A TLS client sent straight to the proxy listener: its ClientHello is a bad header."""
    with (
        socket.create_connection(("127.0.0.1", proxied_tls.ports[1]), timeout=TIMEOUT) as raw,  # type: ignore[attr-defined]
        pytest.raises((ssl.SSLError, ConnectionError)),
    ):
        client_context(pki).wrap_socket(raw, server_hostname="localhost")
