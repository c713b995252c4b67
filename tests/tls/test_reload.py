"""Renewing a certificate in one serving process, with no supervisor to fork new
workers: ``build_context`` then ``TlsEndpoint.swap`` while serving (a SIGHUP reload
builds a new endpoint for its new workers instead: tests/tls/test_sighup.py). A TLS connection opened
before the swap keeps echoing with the certificate it started with; one opened after
gets the new certificate. Run in this process, on the real backends, so the swap
lands while their loop serves."""

from __future__ import annotations

import os
import signal
import socket
import ssl
import threading
from collections.abc import Callable
from dataclasses import replace
from typing import Any

import pytest

from echod import backends
from echod.config import Config
from echod.lifecycle import Lifecycle
from echod.net.addresses import parse_address
from echod.net.listeners import bind
from echod.tls import TlsEndpoint, TlsSettings, build_context
from tests.support import TIMEOUT, recv_exactly
from tests.tls.tls_support import Pki, client_context


def peer_name(tls: ssl.SSLSocket) -> str:
    subject = (tls.getpeercert() or {})["subject"]
    return dict(pair[0] for pair in subject)["commonName"]  # type: ignore[misc]


def echo(tls: ssl.SSLSocket, data: bytes) -> bytes:
    tls.sendall(data)
    return recv_exactly(tls, len(data))


@pytest.mark.parametrize("backend", ["epoll", "asyncio", "threads"])
def test_a_swap_serves_new_connections_and_keeps_open_ones(pki: Pki, backend: str) -> None:
    listener = bind(parse_address("tls:127.0.0.1:0"), 16)
    config = Config(tls_cert=pki.path("server.pem"), tls_key=pki.path("server.key"))
    endpoint = TlsEndpoint.from_config(config)
    assert endpoint is not None
    listener.tls = endpoint  # type: ignore[attr-defined]  # a ListeningSocket
    address = listener.getsockname()
    # "other.test"'s certificate, served to clients that ask for "other.test" by name
    # (no SNI mapping: the default certificate changes).
    renewed = TlsSettings(cert=pki.path("other.pem"), key=pki.path("other.key"))
    outcome: dict[str, Any] = {}

    def client() -> None:
        try:
            context = client_context(pki)
            context.check_hostname = False  # the names are checked below
            with (
                socket.create_connection(address, timeout=TIMEOUT) as raw,
                context.wrap_socket(raw, server_hostname="localhost") as before,
            ):
                assert echo(before, b"one") == b"one"
                endpoint.swap(renewed, build_context(renewed))
                with (
                    socket.create_connection(address, timeout=TIMEOUT) as raw2,
                    context.wrap_socket(raw2, server_hostname="localhost") as after,
                ):
                    assert echo(after, b"two") == b"two"
                    outcome["after"] = peer_name(after)
                assert echo(before, b"three" * 1000) == b"three" * 1000
                outcome["before"] = peer_name(before)
        except BaseException as exc:
            outcome["error"] = exc
        finally:
            os.kill(os.getpid(), signal.SIGTERM)  # the backend drains and returns

    serve: Callable[..., None] = backends.load(backend).serve
    thread = threading.Thread(target=client, daemon=True)
    thread.start()
    try:
        serve([listener], replace(config, graceful_timeout=5.0), Lifecycle())
    finally:
        listener.close()
        thread.join(TIMEOUT)
    if "error" in outcome:
        raise outcome["error"]
    assert outcome == {"before": "localhost", "after": "other.test"}
