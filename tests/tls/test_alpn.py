"""ALPN is accepted and logged; the start-up log names the certificates and their
expiry."""

from __future__ import annotations

import pytest

from tests.support import echod
from tests.tls.tls_support import Pki, TlsClient, client_context


@pytest.mark.parametrize("backend", ["epoll", "asyncio", "threads", "gevent"])
def test_the_protocol_chosen_by_alpn_is_used_and_logged(pki: Pki, backend: str) -> None:
    with echod(
        "--backend", backend, "--listen", "tls:127.0.0.1:0", *pki.server_args(),
        "--tls-alpn", "echo,h2", "--log-level", "debug",
    ) as server:  # fmt: skip
        assert "tls: TLS 1.2+, certificates: default until 20" in server.log
        context = client_context(pki)
        context.set_alpn_protocols(["x-unknown", "echo"])
        with TlsClient((server.host, server.port), context) as client:
            client.handshake()
            assert client.tls.selected_alpn_protocol() == "echo"
            assert client.exchange(b"alpn") == b"alpn"
        server.wait_for(r"tls: TLSv1\.3 .* alpn=echo")
