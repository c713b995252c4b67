"""echod-bench --tls: rr at each version and the handshake workload (churn, resumed or
not) against echod, every byte still verified; a server that corrupts a byte over TLS
is a mismatch (exit 3); a certificate that does not verify stops it before any worker
starts (exit 2, one line)."""

from __future__ import annotations

import contextlib
import json
import ssl
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support import ROOT, TIMEOUT, Echod, echod
from tests.tls.tls_support import Pki, flip_first, threaded_tls_echo


@pytest.fixture(scope="module")
def server(pki: Pki) -> Iterator[Echod]:
    with echod("--listen", "tls:127.0.0.1:0", *pki.server_args()) as running:
        yield running


def bench(port: int, *args: str, json_path: Path | None = None) -> subprocess.CompletedProcess[str]:
    extra = ["--json", str(json_path)] if json_path is not None else []
    return subprocess.run(
        [
            sys.executable, "-m", "loadtest", "--port", str(port), "--processes", "1",
            "--duration", "1", "--warmup", "0.2", "--no-progress", *extra, *args,
        ],
        capture_output=True, text=True, timeout=TIMEOUT * 3, cwd=ROOT,
    )  # fmt: skip


def figures(path: Path) -> dict[str, Any]:
    result: dict[str, Any] = json.loads(path.read_text())
    return result


@pytest.mark.parametrize("version", ["1.2", "1.3"])
def test_rr_over_tls_verifies_every_byte(
    server: Echod, pki: Pki, tmp_path: Path, version: str
) -> None:
    out = tmp_path / "rr.json"
    result = bench(
        server.port, "--tls", "--tls-ca", pki.ca, "--tls-sni", "localhost",
        "--tls-min-version", version, "--tls-max-version", version,
        "--connections", "8", "--size", "20000", "--pipeline", "2", json_path=out,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    data = figures(out)
    assert data["errors_total"] == 0
    assert data["messages"] > 0
    assert "C loop does not speak TLS" in data["loop"]


@pytest.mark.parametrize("resume", [False, True], ids=["full", "resumed"])
def test_the_handshake_workload_reports_handshakes(
    server: Echod, pki: Pki, tmp_path: Path, resume: bool
) -> None:
    out = tmp_path / "churn.json"
    result = bench(
        server.port, "--tls", "--tls-ca", pki.ca, "--tls-sni", "localhost", "--churn",
        "--connections", "2", *(["--tls-resume"] if resume else []), json_path=out,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "handshakes/s" in result.stdout + result.stderr
    data = figures(out)
    assert data["errors_total"] == 0
    assert data["messages"] > 0
    assert data["connect_us"]["count"] > 0  # connect + handshake


def test_a_certificate_that_does_not_verify_stops_the_run(server: Echod, pki: Pki) -> None:
    result = bench(server.port, "--tls", "--tls-ca", pki.path("rogue.pem"))
    assert result.returncode == 2
    assert result.stderr.strip().count("\n") == 0, result.stderr
    assert "CERTIFICATE_VERIFY_FAILED" in result.stderr


@pytest.mark.parametrize(
    ("args", "says"),
    [(["--tls"], "--tls-ca"), (["--insecure"], "needs --tls"), (["--tls", "--insecure", "--tls-resume"], "churn")],
)  # fmt: skip
def test_tls_flags_that_do_not_fit_exit_2(args: list[str], says: str) -> None:
    result = bench(1, *args)
    assert result.returncode == 2
    assert says in result.stderr


@contextlib.contextmanager
def corrupting_server(pki: Pki) -> Iterator[int]:
    """A TLS echo that flips one byte once 100 kB have gone by (threads, blocking)."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(pki.path("server.pem"), pki.path("server.key"))

    def alter(data: bytes, echoed: int) -> bytes:
        return flip_first(data) if echoed < 100_000 <= echoed + len(data) else data

    with threaded_tls_echo(lambda: context, alter) as port:
        yield port


def test_a_corrupted_byte_over_tls_is_a_mismatch(pki: Pki) -> None:
    with corrupting_server(pki) as port:
        result = bench(port, "--tls", "--insecure", "--connections", "1", "--size", "1000")
    assert result.returncode == 3, result.stdout + result.stderr
