"""A graceful stop with TLS connections open, one mid-transfer and one mid-handshake:
the transfer's echo is finished, quiet connections are closed with close_notify, and
echod exits 0 without a traceback, on every backend."""

from __future__ import annotations

import os
import signal
import socket

from tests.support import TIMEOUT, Echod, echod
from tests.tls.tls_support import Pki, TlsClient, client_context


def test_sigterm_finishes_echoes_and_closes_tls_connections(backend: str, pki: Pki) -> None:
    payload = os.urandom(4 << 20)
    server: Echod
    with echod("--backend", backend, "--listen", "tls:127.0.0.1:0", *pki.server_args()) as server:
        address = (server.host, server.port)
        with (
            socket.create_connection(address) as half_hello,
            TlsClient(address, client_context(pki)) as busy,
            TlsClient(address, client_context(pki)) as quiet,
        ):
            half_hello.sendall(b"\x16\x03\x01\x02\x00\x01")
            busy.handshake()
            quiet.handshake()
            assert quiet.exchange(b"before") == b"before"
            busy.send_without_reading(payload)
            server.signal(signal.SIGTERM)
            server.wait_for("stopping")
            assert busy.receive(len(payload)) == payload
            assert quiet.read_to_end() == b""
            assert quiet.closed_by_peer or quiet.eof
        assert server.proc.wait(TIMEOUT) == 0  # the drain ends by itself
