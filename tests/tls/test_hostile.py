"""What is not TLS, or never finishes its handshake, costs that connection only."""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator

import pytest

from tests.support import TIMEOUT, Echod, echod
from tests.tls.tls_support import Pki, TlsClient, client_context

HANDSHAKE_TIMEOUT = 0.5

NOT_TLS = {
    "plaintext": b"GET / HTTP/1.1\r\nHost: echo\r\n\r\n",
    "hello-with-garbage-body": b"\x16\x03\x01\x00\x08\x01\x00\x00\x04\xff\xff\xff\xff",
    "record-too-long": b"\x16\x03\x01\xff\xff" + b"\x00" * 512,
    "wrong-content-type": b"\x17\x03\x03\x00\x10" + b"\x00" * 16,
    "sslv2-hello": b"\x80\x2e\x01\x00\x02\x00\x15\x00\x00\x00\x10" + b"\x07" * 40,
}


@pytest.fixture(scope="module")
def guarded_server(backend: str, pki: Pki) -> Iterator[Echod]:
    with echod(
        "--backend", backend, "--listen", "tls:127.0.0.1:0", *pki.server_args(),
        "--tls-handshake-timeout", str(HANDSHAKE_TIMEOUT),
    ) as running:  # fmt: skip
        yield running


def closed_by_server(sock: socket.socket) -> bool:
    """Read (an alert, perhaps) until the server closes; False if it never does."""
    sock.settimeout(TIMEOUT)
    try:
        while sock.recv(4096):
            pass
    except ConnectionResetError:
        pass
    except TimeoutError:
        return False
    return True


@pytest.mark.parametrize("garbage", list(NOT_TLS.values()), ids=list(NOT_TLS))
def test_what_is_not_tls_closes_only_its_connection(
    guarded_server: Echod, pki: Pki, garbage: bytes
) -> None:
    with TlsClient((guarded_server.host, guarded_server.port), client_context(pki)) as bystander:
        bystander.handshake()
        with socket.create_connection((guarded_server.host, guarded_server.port)) as bad:
            bad.sendall(garbage)
            assert closed_by_server(bad)
        assert bystander.exchange(b"still here") == b"still here"
    assert guarded_server.alive()


@pytest.mark.parametrize("sent", [b"", b"\x16\x03\x01\x02\x00\x01"], ids=["silent", "half-hello"])
def test_a_handshake_that_never_ends_is_closed_at_the_timeout(
    guarded_server: Echod, sent: bytes
) -> None:
    started = time.monotonic()
    with socket.create_connection((guarded_server.host, guarded_server.port)) as idle:
        idle.sendall(sent)
        assert closed_by_server(idle)
    # Closed by the timer, not by anything else: never before the timeout.
    assert time.monotonic() - started >= HANDSHAKE_TIMEOUT * 0.9
