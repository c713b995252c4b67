"""TLS series in the scrape: handshakes by version and cipher, failures by reason, and
each served certificate's expiry; a worker's counters cross the pipe intact."""

from __future__ import annotations

import contextlib
import socket
import ssl
import subprocess

import pytest

from echod.lifecycle import Stats
from echod.tls_counters import TlsCounters
from tests.metrics.scrape import address_of, scrape, value
from tests.support import TIMEOUT, echod, require_tool, wait_until
from tests.tls.tls_support import Pki, TlsClient, client_context


def not_after(path: str) -> float:
    text = subprocess.run(
        [require_tool("openssl"), "x509", "-noout", "-enddate", "-in", path],
        capture_output=True, text=True, check=True, timeout=TIMEOUT,
    ).stdout  # fmt: skip
    return float(ssl.cert_time_to_seconds(text.strip().removeprefix("notAfter=")))


@pytest.mark.parametrize("backend", ["epoll", "asyncio", "threads", "gevent"])
def test_handshakes_failures_and_expiry_are_scraped(pki: Pki, backend: str) -> None:
    with echod(
        "--backend", backend, "--listen", "tls:127.0.0.1:0", *pki.server_args(), "--metrics", "127.0.0.1:0",
        "--tls-sni", f"other.test={pki.path('other.pem')},{pki.path('other.key')}",
    ) as server:  # fmt: skip
        where = address_of(server)
        for version in ("1.2", "1.3", "1.3"):
            with TlsClient((server.host, server.port), client_context(pki, version)) as client:
                client.handshake()
                assert client.exchange(b"ping") == b"ping"
        with socket.create_connection((server.host, server.port)) as plain:
            plain.sendall(b"GET / HTTP/1.0\r\n\r\n")
            plain.settimeout(TIMEOUT)
            with contextlib.suppress(ConnectionResetError):  # the alert, then a reset
                while plain.recv(4096):
                    pass

        def handshakes(version: str) -> float:
            figures = scrape(where)
            return sum(
                figure
                for (name, labels), figure in figures.items()
                if name == "echod_tls_handshakes_total" and ("version", version) in labels
            )

        assert wait_until(lambda: handshakes("TLSv1.3") == 2 and handshakes("TLSv1.2") == 1)
        figures = scrape(where)
        failures = "echod_tls_handshake_failures_total"
        assert value(figures, failures, reason="unexpected_record") == 1
        assert value(figures, failures, reason="bad_certificate") == 0
        expiry = "echod_tls_certificate_expiry_timestamp_seconds"
        for name, pem in (("default", "server.pem"), ("other.test", "other.pem")):
            assert figures[(expiry, (("name", name),))] == not_after(pki.path(pem))


def test_tls_counters_cross_a_workers_pipe() -> None:
    stats = Stats(bytes_in=5)
    stats.tls = TlsCounters()
    stats.tls.handshake("TLSv1.3", "TLS_AES_256_GCM_SHA384")
    stats.tls.handshake("TLSv1.2", "ECDHE-ECDSA-AES256-GCM-SHA384")
    stats.tls.failed("timeout")
    decoded = Stats.decode(stats.encode())
    assert decoded.bytes_in == 5
    assert decoded.tls == stats.tls
    assert Stats.decode(Stats().encode()).tls is None


@pytest.mark.parametrize("backend", ["epoll", "asyncio", "threads", "gevent"])
def test_each_failure_is_counted_under_its_reason(pki: Pki, backend: str) -> None:
    with echod(
        "--backend", backend, "--listen", "tls:127.0.0.1:0", *pki.server_args(),
        "--metrics", "127.0.0.1:0", "--tls-min-version", "1.3", "--tls-client-ca", pki.ca,
        "--tls-handshake-timeout", "0.3",
    ) as server:  # fmt: skip
        where = address_of(server)
        address = (server.host, server.port)
        # protocol_version: a client that offers TLS 1.2 only.
        with (
            TlsClient(address, client_context(pki, "1.2", cert="client")) as old,
            contextlib.suppress(ssl.SSLError, ConnectionError),
        ):
            old.handshake()
        # bad_certificate: no client certificate where one is required.
        with (
            TlsClient(address, client_context(pki, "1.3")) as anonymous,
            contextlib.suppress(ssl.SSLError, ConnectionError),
        ):
            anonymous.handshake()
            anonymous.exchange(b"x")
        # timeout: a client that never says hello.
        with socket.create_connection(address) as silent:
            silent.settimeout(TIMEOUT)
            with contextlib.suppress(ConnectionError):
                assert silent.recv(1) == b""

        def failures(reason: str) -> float | None:
            return scrape(where).get(("echod_tls_handshake_failures_total", (("reason", reason),)))

        for reason in ("protocol_version", "bad_certificate", "timeout"):
            assert wait_until(lambda reason=reason: failures(reason) == 1), (  # type: ignore[misc]
                reason,
                {
                    r: failures(r)
                    for r in ("protocol_version", "bad_certificate", "timeout", "other")
                },
            )
