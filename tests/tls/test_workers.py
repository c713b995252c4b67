"""tls: listeners under --workers, in both listen modes: every worker wraps its
connections (each reuseport worker binds its own tls: socket), and the supervisor adds
up their handshake counters."""

from __future__ import annotations

import pytest

from tests.metrics.scrape import address_of, scrape
from tests.support import echod, wait_until
from tests.tls.tls_support import Pki, TlsClient, client_context

CLIENTS = 12


@pytest.mark.parametrize("mode", ["reuseport", "shared"])
def test_every_worker_serves_tls(pki: Pki, mode: str) -> None:
    with echod(
        "--listen", "tls:127.0.0.1:0", *pki.server_args(), "--workers", "2",
        "--listen-mode", mode, "--metrics", "127.0.0.1:0",
    ) as server:  # fmt: skip
        for i in range(CLIENTS):
            with TlsClient((server.host, server.port), client_context(pki)) as client:
                client.handshake()
                message = b"worker %d" % i
                assert client.exchange(message) == message
        where = address_of(server)

        def handshakes() -> float:
            return sum(
                figure
                for (name, _), figure in scrape(where).items()
                if name == "echod_tls_handshakes_total"
            )

        assert wait_until(lambda: handshakes() == CLIENTS)
