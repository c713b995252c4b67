"""``echod-bench --udp`` against echod and against faulty UDP echo servers of our own."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from tests.support import ROOT
from tests.udp.udp_support import udp_echod

Fault = Callable[[int, bytes], list[bytes]]


@contextmanager
def faulty_server(fault: Fault) -> Iterator[int]:
    """A UDP echo on loopback that answers datagram n with ``fault(n, data)``."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    sock.settimeout(0.1)
    done = threading.Event()

    def serve() -> None:
        n = 0
        while not done.is_set():
            try:
                data, source = sock.recvfrom(65_536)
            except TimeoutError:
                continue
            n += 1
            for answer in fault(n, data):
                sock.sendto(answer, source)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield sock.getsockname()[1]
    finally:
        done.set()
        thread.join(5)
        sock.close()


def bench(port: int, tmp_path: Path, *args: str) -> tuple[int, dict[str, object]]:
    out = tmp_path / "udp.json"
    result = subprocess.run(
        [sys.executable, "-m", "loadtest", "--udp", "--port", str(port), "--processes", "1",
         "--connections", "2", "--duration", "1", "--warmup", "0.2", "--timeout", "0.3",
         "--no-progress", "--json", str(out), *args],
        capture_output=True, text=True, timeout=60, cwd=ROOT,
    )  # fmt: skip
    assert "Traceback" not in result.stderr, result.stderr
    return result.returncode, json.loads(out.read_text())


def test_clean_run_against_echod(tmp_path: Path) -> None:
    with udp_echod("--listen", "udp:127.0.0.1:0", "--udp-rate", "0/0", "--udp-budget", "0") as srv:
        status, figures = bench(srv.udp[0][1], tmp_path, "--size", "1000", "--pipeline", "4")
        stats = srv.stats()
    assert status == 0, figures
    assert figures["answered"] > 100
    assert figures["corrupt"] == figures["duplicates"] == 0
    assert figures["datagrams_per_s"] > 0
    assert figures["latency_us"]["count"] == figures["answered"]  # type: ignore[index]
    assert stats["echoed"] >= figures["answered"]  # type: ignore[operator]


def test_open_loop_rate(tmp_path: Path) -> None:
    with udp_echod("--listen", "udp:127.0.0.1:0", "--udp-rate", "0/0") as srv:
        status, figures = bench(srv.udp[0][1], tmp_path, "--rate", "500", "--size", "64")
    assert status == 0, figures
    assert 300 <= figures["sent"] <= 700  # type: ignore[operator]


def test_loss_is_reported_but_not_an_error(tmp_path: Path) -> None:
    with faulty_server(lambda n, data: [] if n % 10 == 0 else [data]) as port:
        status, figures = bench(port, tmp_path)
    assert status == 0
    lost = figures["lost"]
    assert isinstance(lost, int) and lost > 0
    assert 5 < float(figures["loss_pct"]) < 15  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("name", "fault", "counter"),
    [
        ("corrupt", lambda n, d: [d[:-1] + bytes([d[-1] ^ 1])] if n % 50 == 0 else [d], "corrupt"),
        ("truncated", lambda n, d: [d[:-1]] if n % 50 == 0 else [d], "corrupt"),
        ("duplicate", lambda n, d: [d, d] if n % 50 == 0 else [d], "duplicates"),
    ],
)
def test_corruption_and_duplicates_are_errors(
    tmp_path: Path, name: str, fault: Fault, counter: str
) -> None:
    with faulty_server(fault) as port:
        status, figures = bench(port, tmp_path)
    assert status == 3, figures
    assert figures[counter], figures


def test_reordering_is_counted_not_an_error(tmp_path: Path) -> None:
    held: list[bytes] = []

    def swap(n: int, data: bytes) -> list[bytes]:
        if n % 20 == 1:
            held.append(data)
            return []
        if held:
            return [data, held.pop()]
        return [data]

    with faulty_server(swap) as port:
        status, figures = bench(port, tmp_path, "--pipeline", "4", "--connections", "1")
    assert status == 0, figures
    assert figures["reordered"], figures


# The pattern is read off answers over wall-clock time: a loaded machine can blur it, so
# it runs with the timing tests (after the rest, once more if it fails).
@pytest.mark.timing
def test_a_rate_limited_run_says_so_and_an_unlimited_one_does_not(tmp_path: Path) -> None:
    """Against echod's default --udp-rate the answers come at the limit's steady rate:
    the report must say so instead of passing the limit off as the server's speed."""
    with udp_echod("--listen", "udp:127.0.0.1:0") as srv:
        status, figures = bench(srv.udp[0][1], tmp_path, "--connections", "20", "--duration", "3")
    assert status == 0, figures
    warnings = figures["warnings"]
    assert len(warnings) == 1 and "the pattern of a rate limit" in warnings[0], figures  # type: ignore[arg-type,index]
    with udp_echod("--listen", "udp:127.0.0.1:0", "--udp-rate", "0/0", "--udp-budget", "0") as srv:
        status, figures = bench(srv.udp[0][1], tmp_path, "--connections", "20", "--duration", "3")
    assert status == 0 and figures["lost"] == 0, figures
    assert figures["warnings"] == [], figures


def test_the_udp_report_has_the_tcp_layout(tmp_path: Path) -> None:
    with udp_echod("--listen", "udp:127.0.0.1:0", "--udp-rate", "0/0") as srv:
        result = subprocess.run(
            [sys.executable, "-m", "loadtest", "--udp", "--port", str(srv.udp[0][1]),
             "--processes", "1", "--connections", "2", "--duration", "0.5", "--warmup", "0.1",
             "--no-progress"],
            capture_output=True, text=True, timeout=60, cwd=ROOT,
        )  # fmt: skip
    lines = result.stdout.splitlines()
    assert lines[0].startswith("echod-bench ") and lines[0].endswith(", 1 process"), lines
    assert [line[:17] for line in lines[1:]] == [
        "  window         ",
        "  datagrams/s    ",
        "  datagrams      ",
        "  latency µs     ",
        "  errors         ",
        "  generator CPU  ",
    ]
