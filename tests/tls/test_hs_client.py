"""The C handshake client (bench/reference/echo_hs_client.c), built and run as `make
bench` runs it in the TLS handshake cells.

Its rates are what the handshake goal is judged on, so it must not pass a server that
corrupts an echo, nor call a run "resumed" whose handshakes were full: it is run
against the C TLS server and real echod (full and resumed, resumption checked), and
against small Python TLS echo servers that flip a byte (mismatch, exit 3), send no
ticket, or refuse the tickets they sent (not resumed, exit 1).
"""

from __future__ import annotations

import contextlib
import json
import ssl
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from echod import backends
from tests.support import ROOT, TIMEOUT, echod, require_tool
from tests.tls.tls_support import Pki, flip_first, threaded_tls_echo

sys.path.insert(0, str(ROOT))  # bench/ is a directory of the repository, not installed
from bench import certs, run, servers
from bench.matrix import Timing, named
from bench.query import C_CLIENT


@pytest.fixture(scope="module")
def client() -> Path:
    require_tool("gcc")
    problem = servers.build_hs_client()
    assert problem is None, problem
    return servers.HS_CLIENT_BINARY


def drive(client: Path, port: int, *options: str, connections: int = 8) -> tuple[int, Any, str]:
    proc = subprocess.run(
        [str(client), *options, "127.0.0.1", str(port), str(connections), "0.5", "0.2"],
        capture_output=True,
        text=True,
        timeout=TIMEOUT * 2,
    )
    return proc.returncode, json.loads(proc.stdout), proc.stderr


def assert_clean(status: int, counts: dict[str, Any], resumed: bool) -> None:
    assert status == 0, counts
    assert counts["handshakes"] > 0 and counts["handshakes_per_s"] > 0
    kinds = ("mismatches", "closed", "timeouts", "tls", "connect", "not_resumed")
    assert all(counts[k] == 0 for k in kinds), counts
    # Resumed: every handshake of the window reused its slot's ticket; full: none did.
    assert counts["resumed"] == (counts["handshakes"] if resumed else 0), counts
    assert counts["mode"] == ("resumed" if resumed else "full")
    assert 0 < counts["latency_us"]["p50"] <= counts["latency_us"]["p99"]
    start, end = counts["window"]
    assert end - start == pytest.approx(counts["seconds"], abs=0.01)


@pytest.mark.parametrize("resumed", [False, True], ids=["full", "resumed"])
def test_handshakes_with_the_c_tls_server(
    client: Path, c_tls: servers.RunningServer, pki: Pki, resumed: bool
) -> None:
    # The CA and the name verified, as a client that checks the certificate would.
    options = ["-c", pki.ca, "-n", "localhost", *(["-r"] if resumed else [])]
    status, counts, _ = drive(client, c_tls.port, *options)
    assert_clean(status, counts, resumed)


HANDSHAKE_BACKENDS = [b for b in ("epoll", "uvloop") if b in backends.available()]


@pytest.mark.parametrize("backend", HANDSHAKE_BACKENDS)
def test_handshakes_with_echod(client: Path, pki: Pki, backend: str) -> None:
    args = ("--backend", backend, "--listen", "tls:127.0.0.1:0", *pki.server_args())
    with echod(*args) as server:
        for resumed in (False, True):
            status, counts, _ = drive(client, server.port, *(["-r"] if resumed else []))
            assert_clean(status, counts, resumed)


@contextlib.contextmanager
def faulty_server(pki: Pki, fault: str) -> Iterator[int]:
    """A threaded TLS 1.3 echo: ``corrupt`` flips the first byte of every echo,
    ``no-tickets`` sends no session ticket, ``refuse`` sends tickets no later
    connection can use (a fresh context, so fresh ticket keys, per connection)."""

    def context() -> ssl.SSLContext:
        made = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        made.minimum_version = ssl.TLSVersion.TLSv1_3
        made.load_cert_chain(pki.path("server.pem"), pki.path("server.key"))
        if fault == "no-tickets":
            made.num_tickets = 0
        return made

    shared = context()

    def alter(data: bytes, echoed: int) -> bytes:
        return flip_first(data) if fault == "corrupt" else data

    with threaded_tls_echo(context if fault == "refuse" else lambda: shared, alter) as port:
        yield port


def test_a_corrupted_byte_is_a_mismatch(client: Path, pki: Pki) -> None:
    with faulty_server(pki, "corrupt") as port:
        status, counts, _ = drive(client, port, connections=2)
    assert status == 3, counts
    assert counts["mismatches"] >= 1


@pytest.mark.parametrize("fault", ["no-tickets", "refuse"])
def test_a_resumed_run_that_does_not_resume_fails(client: Path, pki: Pki, fault: str) -> None:
    with faulty_server(pki, fault) as port:
        status, counts, stderr = drive(client, port, "-r", connections=2)
        # The same server passes a full run: it is resumption that failed.
        full_status, full, _ = drive(client, port, connections=2)
    assert status == 1, counts
    assert counts["not_resumed"] >= 1 and counts["resumed"] == 0
    assert "not resumed" in stderr
    assert_clean(full_status, full, resumed=False)


def test_a_certificate_that_does_not_verify_is_a_tls_error(client: Path, pki: Pki) -> None:
    with faulty_server(pki, "") as port:
        status, counts, stderr = drive(client, port, "-c", pki.path("rogue.pem"), connections=2)
    assert status == 1, counts
    assert counts["tls"] >= 1 and counts["handshakes"] == 0
    assert "certificate verify failed" in stderr


@pytest.mark.parametrize(
    "args",
    [["127.0.0.1", "1", "0", "1"], ["127.0.0.1", "1", "5000", "1"], ["-s", "0", "127.0.0.1", "1", "1", "1"],
     ["127.0.0.1", "1", "1", "9999"], ["-x", "127.0.0.1", "1", "1", "1"], ["127.0.0.1", "1"]],
)  # fmt: skip
def test_bad_usage_is_one_line_and_status_2(client: Path, args: list[str]) -> None:
    proc = subprocess.run([str(client), *args], capture_output=True, text=True, timeout=TIMEOUT)
    assert proc.returncode == 2
    assert proc.stderr.count("\n") == 1 and proc.stderr.startswith("echo-hs-client: ")
    assert proc.stdout == ""


@pytest.mark.parametrize("cell_name", ["tls-hs-ecdsa", "tls-hs-rsa-resumed"])
def test_the_runner_drives_a_handshake_cell_with_it(client: Path, cell_name: str) -> None:
    """The runner's own path: the cell's certificate, echod epoll, the C client, and the
    server's CPU per handshake over the client's window."""
    cell = named(cell_name)
    assert cell.c_client and cell.handshakes
    (epoll,) = servers.specs(["epoll"], with_reference=False)
    timing = Timing(rounds=1, duration=0.5, warmup=0.3)
    with tempfile.TemporaryDirectory() as scratch:
        made = certs.make(Path(scratch), (cell.tls,))
        record = run.measure(run.for_cell(epoll, cell, made), cell, timing, None, None, C_CLIENT)
    assert "error" not in record, record
    assert record["generator"] == C_CLIENT and record["generator_status"] == 0
    figures = record["figures"]
    assert figures["messages"] > 0 and figures["errors"] == {}
    shaken = figures["handshakes"]
    assert shaken["mode"] == ("resumed" if "--tls-resume" in cell.args else "full")
    assert shaken["resumed"] == (figures["messages"] if shaken["mode"] == "resumed" else 0)
    assert figures["server"]["cpu_us_per_msg"] > 0 and figures["latency_us"]["p99"] > 0
