"""SIGHUP renews certificates: new connections get the new one, open ones keep theirs
and go on echoing, and a certificate that does not load refuses the whole reload."""

from __future__ import annotations

import shutil
import signal
import socket
import ssl
from pathlib import Path

from tests.support import Echod
from tests.tls.test_reload import echo, peer_name
from tests.tls.tls_support import Pki


def connect(server: Echod, pki: Pki) -> ssl.SSLSocket:
    context = ssl.create_default_context(cafile=pki.ca)
    context.check_hostname = False  # the test asks which certificate it got
    sock = socket.create_connection((server.host, server.port), timeout=10)
    return context.wrap_socket(sock, server_hostname="localhost")


def test_a_reload_serves_the_new_certificate_and_keeps_open_connections(
    pki: Pki, tmp_path: Path
) -> None:
    cert, key = tmp_path / "live.pem", tmp_path / "live.key"
    shutil.copy(pki.path("server.pem"), cert)
    shutil.copy(pki.path("server.key"), key)
    config = tmp_path / "echod.toml"
    config.write_text(
        f'listen = ["tls:127.0.0.1:0"]\nworkers = 2\ntls_cert = "{cert}"\ntls_key = "{key}"\n'
    )
    with Echod("--config", str(config)) as server:
        server.wait_for("ready: 2 workers serving")
        before = connect(server, pki)
        assert peer_name(before) == "localhost" and echo(before, b"a" * 100_000) == b"a" * 100_000
        shutil.copy(pki.path("other.pem"), cert)
        shutil.copy(pki.path("other.key"), key)
        server.signal(signal.SIGHUP)
        server.wait_for("reload done: generation 2")
        with connect(server, pki) as after:
            assert peer_name(after) == "other.test"
            assert echo(after, b"new") == b"new"
        # Opened before the reload: its old worker drains it, with its certificate.
        assert peer_name(before) == "localhost" and echo(before, b"b" * 100_000) == b"b" * 100_000
        cert.write_text("-----BEGIN CERTIFICATE-----\nnot base64\n-----END CERTIFICATE-----\n")
        server.signal(signal.SIGHUP)
        refused = server.wait_for(r"reload refused, serving on with generation 2: (.*)")
        assert "does not load" in refused.group(1)
        with connect(server, pki) as still:
            assert peer_name(still) == "other.test" and echo(still, b"x") == b"x"
        before.close()
        assert server.stop() == 0
