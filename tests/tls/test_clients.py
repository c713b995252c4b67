"""Real TLS clients: ``openssl s_client`` at each version, and socat's OPENSSL address."""

from __future__ import annotations

import os
import subprocess

import pytest

from tests.support import TIMEOUT, Echod, require_tool
from tests.tls.tls_support import Pki


@pytest.mark.parametrize("version", ["1.2", "1.3"])
def test_openssl_s_client_gets_its_bytes_back(tls_server: Echod, pki: Pki, version: str) -> None:
    payload = os.urandom(48 * 1024).hex().encode() + b"\n"  # text: s_client is line-minded
    client = subprocess.Popen(
        [
            require_tool("openssl"), "s_client", "-quiet", "-verify_return_error",
            "-CAfile", pki.ca, "-servername", "localhost", f"-tls{version.replace('.', '_')}",
            "-connect", f"{tls_server.host}:{tls_server.port}",
        ],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    assert client.stdin is not None and client.stdout is not None
    try:
        client.stdin.write(payload)
        client.stdin.flush()
        received = bytearray()
        while len(received) < len(payload):
            chunk = os.read(client.stdout.fileno(), 1 << 16)
            if not chunk:
                break
            received += chunk
        assert bytes(received) == payload
    finally:
        client.kill()
        client.wait(TIMEOUT)


def test_socat_openssl_echoes_a_binary_file(tls_server: Echod, pki: Pki) -> None:
    payload = os.urandom(2 << 20)
    result = subprocess.run(
        [
            require_tool("socat"), "-t", "10", "-",
            f"OPENSSL:{tls_server.host}:{tls_server.port},cafile={pki.ca},commonname=localhost",
        ],
        input=payload, capture_output=True, timeout=TIMEOUT * 3,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr.decode()
    assert len(result.stdout) == len(payload)
    assert result.stdout == payload
