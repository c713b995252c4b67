"""The C TLS reference server (bench/reference/echo_tls.c), built as the bench builds
it: the TLS row's limit must itself echo exact bytes, hold back a client that does not
read, and answer close_notify after the echo owed."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from tests.support import ROOT, require_tool
from tests.tls.tls_support import Pki, TlsClient, client_context

sys.path.insert(0, str(ROOT))
from bench import servers


@pytest.mark.parametrize("version", ["1.2", "1.3"])
def test_the_c_tls_reference_echoes_exact_bytes(
    c_tls: servers.RunningServer, pki: Pki, version: str
) -> None:
    payload = os.urandom(16 << 20)
    with TlsClient(("127.0.0.1", c_tls.port), client_context(pki, version)) as client:
        client.handshake()
        assert client.send_without_reading(payload) < len(payload)
        assert client.receive(len(payload)) == payload
        client.close_notify()
        assert client.read_to_end() == b""
        assert client.closed_by_peer


def test_openssl_s_time_resumes_sessions_with_it(c_tls: servers.RunningServer) -> None:
    """OpenSSL's own handshake loop completes against it. (It is not the handshake
    cells' client: -reuse does not resume TLS 1.3; echo_hs_client.c is, and
    tests/tls/test_hs_client.py checks its resumption.)"""
    result = subprocess.run(
        [
            require_tool("openssl"), "s_time", "-connect", f"127.0.0.1:{c_tls.port}",
            "-reuse", "-time", "1",
        ],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "connections" in result.stdout
