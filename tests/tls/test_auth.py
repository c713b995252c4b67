"""Mutual TLS (accepted with the right CA, refused otherwise) and SNI (each name gets
its own certificate), on every backend."""

from __future__ import annotations

import socket
import ssl
from collections.abc import Iterator, Mapping

import pytest

from tests.support import TIMEOUT, Echod, echod, recv_exactly
from tests.tls.tls_support import Pki, client_context


@pytest.fixture(scope="module")
def auth_server(backend: str, pki: Pki) -> Iterator[Echod]:
    with echod(
        "--backend", backend, "--listen", "tls:127.0.0.1:0", *pki.server_args(),
        "--tls-client-ca", pki.ca,
        "--tls-sni", f"other.test={pki.path('other.pem')},{pki.path('other.key')}",
    ) as running:  # fmt: skip
        yield running


def echoes(server: Echod, context: ssl.SSLContext, name: str = "localhost") -> Mapping[str, object]:
    """Handshake, one round trip; the server's certificate as the client saw it."""
    with (
        socket.create_connection((server.host, server.port), timeout=TIMEOUT) as raw,
        context.wrap_socket(raw, server_hostname=name) as tls,
    ):
        tls.sendall(b"who goes there")
        assert recv_exactly(tls, 14) == b"who goes there"
        return tls.getpeercert() or {}


def refused(server: Echod, context: ssl.SSLContext) -> bool:
    """True if the server would not echo for this client (TLS 1.3 refuses after the
    client's side of the handshake is done, so the refusal shows on the first read)."""
    try:
        with (
            socket.create_connection((server.host, server.port), timeout=TIMEOUT) as raw,
            context.wrap_socket(raw, server_hostname="localhost") as tls,
        ):
            tls.sendall(b"let me in")
            return tls.recv(9) == b""
    except (ssl.SSLError, ConnectionError):
        return True


def common_name(certificate: Mapping[str, object]) -> str:
    subject = certificate["subject"]
    return dict(pair[0] for pair in subject)["commonName"]  # type: ignore[attr-defined,no-any-return]


@pytest.mark.parametrize("version", ["1.2", "1.3"])
def test_a_client_certificate_from_the_ca_is_accepted(
    auth_server: Echod, pki: Pki, version: str
) -> None:
    assert (
        common_name(echoes(auth_server, client_context(pki, version, cert="client"))) == "localhost"
    )


@pytest.mark.parametrize("version", ["1.2", "1.3"])
@pytest.mark.parametrize("cert", [None, "intruder"], ids=["no-certificate", "other-ca"])
def test_other_clients_are_refused(
    auth_server: Echod, pki: Pki, version: str, cert: str | None
) -> None:
    assert refused(auth_server, client_context(pki, version, cert=cert))
    # ...and the server goes on serving the right ones.
    echoes(auth_server, client_context(pki, version, cert="client"))


@pytest.mark.parametrize("name", ["other.test", "localhost"])
def test_sni_picks_the_certificate_for_the_name(auth_server: Echod, pki: Pki, name: str) -> None:
    # The client verifies the chain and that the certificate is the name's.
    certificate = echoes(auth_server, client_context(pki, cert="client"), name)
    assert common_name(certificate) == name
