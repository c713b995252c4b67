"""The TLS units: echod-tls.socket and the echod.service drop-in that passes a root-only
certificate and key through LoadCredential=, checked without systemd as PID 1:
systemd-analyze verify, the socket named "tls" handed over by systemd-socket-activate,
and the two halves of the credential argument (a key echod's user cannot read fails in
one line naming LoadCredential=; a root-only key read before --user drops root works)."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.service.test_units import EXEC_START, SYSTEMD_DIR, UNITS, stage_root, verify
from tests.support import ROOT, TIMEOUT, Echod, require_tool
from tests.tls.tls_support import Pki, TlsClient, client_context

TLS_UNITS = ["echod-tls.socket", "echod.service"]


@pytest.fixture
def staged(tmp_path: Path) -> Path:
    require_tool("systemd-analyze")
    unit_dir = stage_root(tmp_path)
    unit_dir.mkdir(parents=True, exist_ok=True)
    for unit in [*UNITS, "echod-metrics.socket", "echod-tls.socket"]:
        shutil.copy(SYSTEMD_DIR / unit, unit_dir / unit)
    (unit_dir / "echod.service.d").mkdir()
    shutil.copy(SYSTEMD_DIR / "echod-tls.conf", unit_dir / "echod.service.d" / "tls.conf")
    stub = tmp_path / EXEC_START.lstrip("/")
    stub.parent.mkdir(parents=True)
    stub.write_text("#!/bin/sh\n")
    stub.chmod(0o755)
    return tmp_path


@pytest.mark.parametrize("unit", TLS_UNITS)
def test_the_tls_socket_and_drop_in_verify_silently(staged: Path, unit: str) -> None:
    result = verify(staged, unit)
    assert result.returncode == 0, result.stderr
    assert result.stderr.strip() == "", result.stderr


def test_the_drop_in_is_read_by_verify(staged: Path) -> None:
    """verify does look at the drop-in: a broken line in it is reported."""
    drop_in = staged / "etc/systemd/system/echod.service.d/tls.conf"
    drop_in.write_text(drop_in.read_text() + "LoadCredentialBogus=x\n")
    assert "LoadCredentialBogus" in verify(staged, "echod.service").stderr


def echoes_over_tls(server: Echod, pki: Pki) -> None:
    with TlsClient((server.host, server.port), client_context(pki)) as client:
        client.handshake()
        assert client.exchange(b"over tls") == b"over tls"


@pytest.fixture
def free_port() -> Iterator[int]:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    yield port


def test_a_socket_named_tls_serves_tls(pki: Pki, free_port: int) -> None:
    tool = require_tool("systemd-socket-activate")
    server = Echod(
        *pki.server_args(),
        wrapper=(
            tool, "-l", f"127.0.0.1:{free_port}", "--fdname=tls",
            "-E", "PYTHONPATH=" + os.pathsep.join(sys.path),
        ),
        wait=False,
    )  # fmt: skip
    with server:
        server.port = free_port
        server.wait_for(f"Listening on 127.0.0.1:{free_port}")  # the tool's own line
        # The first connection starts echod (Accept=no), which then takes it.
        echoes_over_tls(server, pki)
        assert "listening on tls:127.0.0.1" in server.log


def test_a_key_echods_user_cannot_read_fails_in_one_line(pki: Pki, tmp_path: Path) -> None:
    """What DynamicUser= meets with a root-only key file; LoadCredential= is the cure."""
    if os.geteuid() != 0:
        pytest.skip("needs root to hand the key to another owner")
    key = tmp_path / "key.pem"
    shutil.copy(pki.path("server.key"), key)
    os.chown(key, 65534, 65534)
    key.chmod(0o600)
    # Root without the capabilities that override file permissions.
    drop = "-dac_override,-dac_read_search"
    result = subprocess.run(
        [
            require_tool("setpriv"), "--bounding-set", drop, "--inh-caps", drop,
            sys.executable, "-m", "echod", "--listen", "tls:127.0.0.1:0",
            "--tls-cert", pki.path("server.pem"), "--tls-key", str(key),
        ],
        capture_output=True, text=True, timeout=TIMEOUT, cwd=ROOT,
    )  # fmt: skip
    assert result.returncode == 2, result.stderr
    assert result.stderr.count("\n") == 1, result.stderr
    assert "permission denied" in result.stderr and "LoadCredential=" in result.stderr


def test_a_root_only_key_is_read_before_user_drops_root(pki: Pki, tmp_path: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("--user needs root")
    key = tmp_path / "key.pem"
    shutil.copy(pki.path("server.key"), key)
    key.chmod(0o600)  # root's alone
    tmp_path.chmod(0o755)
    with Echod(
        "--listen", "tls:127.0.0.1:0", "--tls-cert", pki.path("server.pem"),
        "--tls-key", str(key), "--user", "nobody",
    ) as server:  # fmt: skip
        echoes_over_tls(server, pki)
