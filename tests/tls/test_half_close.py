"""close_notify ends only the client's direction: the echo still owed follows, then the
server's own close_notify (TLS 1.3, RFC 8446 §6.1; for TLS 1.2 see echod.tls on why
owed echo is still sent). The client is a MemoryBIO one: ``SSLSocket.unwrap`` cannot
read after it."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from tests.support import Echod, echod
from tests.tls.tls_support import Pki, TlsClient, client_context

# Under the server's high-water mark, so it reads all of it and the close_notify behind
# it, and three times what its send buffer can grow to (4 MiB): most is still owed.
OWED = 12 << 20


@pytest.fixture(scope="module")
def roomy_server(backend: str, pki: Pki) -> Iterator[Echod]:
    """A high-water mark above OWED, so the server reads the whole payload and then the
    close_notify while most of the echo waits for a client that reads slowly."""
    with echod(
        "--backend", backend, "--listen", "tls:127.0.0.1:0", "--high-water", "32M",
        *pki.server_args(),
    ) as running:  # fmt: skip
        yield running


def owed_client(server: Echod, pki: Pki, version: str) -> TlsClient:
    # A small receive window keeps the echo in the server, not in the client's kernel.
    return TlsClient((server.host, server.port), client_context(pki, version), receive_buffer=4096)


@pytest.mark.parametrize("version", ["1.2", "1.3"])
@pytest.mark.parametrize("size", [0, 100, OWED])
def test_close_notify_ends_only_the_clients_direction(
    roomy_server: Echod, pki: Pki, size: int, version: str
) -> None:
    payload = os.urandom(size)
    with owed_client(roomy_server, pki, version) as client:
        client.handshake()
        client.send_without_reading(payload)
        client.close_notify()
        client.send_without_reading(b"")  # the alert goes out behind the payload
        client.wait_until_quiet()  # the server has read it all, and owes the rest
        echoed = client.read_to_end()
        assert len(echoed) == size
        assert echoed == payload
        assert client.closed_by_peer, "the server closed without its close_notify"
