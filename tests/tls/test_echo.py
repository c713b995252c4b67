"""Every backend echoes exact bytes over TLS 1.2 and 1.3, and holds back a client
that does not read."""

from __future__ import annotations

import os

import pytest

from tests.support import Echod
from tests.tls.tls_support import Pki, TlsClient, client_context

SIZES = [0, 1, 16 * 1024 + 1, 1 << 20, 16 << 20]


@pytest.mark.parametrize("version", ["1.2", "1.3"])
@pytest.mark.parametrize("size", SIZES, ids=[f"{size}B" for size in SIZES])
def test_exact_bytes_come_back(tls_server: Echod, pki: Pki, version: str, size: int) -> None:
    payload = os.urandom(size)
    with TlsClient((tls_server.host, tls_server.port), client_context(pki, version)) as client:
        client.handshake()
        assert client.tls.version() == f"TLSv{version}"
        echoed = client.exchange(payload)
        assert len(echoed) == size
        assert echoed == payload
        # Still open and still echoing after the bulk transfer.
        assert client.exchange(b"and one more") == b"and one more"


@pytest.mark.parametrize("version", ["1.2", "1.3"])
def test_a_client_that_reads_nothing_is_held_back_then_gets_every_byte(
    tls_server: Echod, pki: Pki, version: str
) -> None:
    """16 MiB sent without reading: the server stops taking them (it holds TLS records
    it cannot send), and once the client reads, every byte comes back in order."""
    payload = os.urandom(16 << 20)
    with TlsClient((tls_server.host, tls_server.port), client_context(pki, version)) as client:
        client.handshake()
        taken = client.send_without_reading(payload)
        assert taken < len(payload), "the server buffered 16 MiB for a client that reads nothing"
        assert client.receive(len(payload)) == payload
        assert client.exchange(b"still open") == b"still open"
    assert tls_server.alive()
