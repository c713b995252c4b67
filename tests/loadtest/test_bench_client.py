"""The C client of the generator-ceiling cells, built and run as `make bench` runs it.

It sets the bar echod-bench is judged against, so it must not pass a server that
loses or corrupts bytes: it is run against the C reference server (clean), a server
that flips one byte (mismatch, exit 3) and one that stops echoing a connection while
keeping it open (lost, exit 1). The runner's ceiling path is run end to end too, and
a server that ignores SIGTERM is recorded as killed.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from loadtest_servers import EchoServer

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:  # bench/ is a directory of the repository, not installed
    sys.path.insert(0, str(ROOT))

from bench import generators, run, servers  # noqa: E402
from bench.matrix import QUICK, Timing, named  # noqa: E402
from bench.query import C_CLIENT, ECHOD_BENCH, Results  # noqa: E402
from tests.support import missing  # noqa: E402


def need_cc() -> None:
    if shutil.which("cc") is None:
        missing("no C compiler (cc): the C client cannot be built")


@pytest.fixture(scope="module")
def client() -> Path:
    need_cc()
    assert servers.build_client() is None
    return servers.CLIENT_BINARY


@pytest.fixture(scope="module")
def reference() -> servers.ServerSpec:
    need_cc()
    assert servers.build_reference() is None
    return next(s for s in servers.specs([], with_reference=True) if s.name == servers.REFERENCE)


def drive(client: Path, port: int, connections: int, size: int) -> tuple[int, dict[str, int]]:
    proc = subprocess.run(
        [str(client), "127.0.0.1", str(port), str(connections), str(size), "0.5", "0.1"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    return proc.returncode, json.loads(proc.stdout)


def test_clean_against_the_c_server(client: Path, reference: servers.ServerSpec) -> None:
    server = servers.RunningServer(reference, None)
    try:
        status, counts = drive(client, server.port, 20, 1024)
    finally:
        assert server.stop() == 0
    assert status == 0, counts
    assert counts["requests"] > 0 and counts["requests_per_s"] > 0
    assert counts["mismatches"] == counts["errors"] == counts["lost"] == 0


def test_a_corrupted_byte_is_a_mismatch(client: Path) -> None:
    server = EchoServer(fault="corrupt", after=5000)
    try:
        status, counts = drive(client, server.port, 4, 1024)
    finally:
        server.close()
    assert status == 3, counts
    assert counts["mismatches"] >= 1


def test_a_connection_that_stops_echoing_is_lost(client: Path) -> None:
    # Every connection stalls after 5,000 bytes, inside the window: the client must
    # not end as if it were merely slow.
    server = EchoServer(fault="stall", after=5000)
    try:
        status, counts = drive(client, server.port, 4, 1024)
    finally:
        server.close()
    assert status == 1, counts
    assert counts["lost"] == 4 and counts["mismatches"] == 0


def test_bad_usage_is_one_line_and_status_2(client: Path) -> None:
    proc = subprocess.run(
        [str(client), "127.0.0.1", "1", "0", "64", "1"], capture_output=True, text=True
    )
    assert proc.returncode == 2
    assert proc.stderr.count("\n") == 1 and proc.stderr.startswith("echo-client: ")


def test_a_compared_cell_runs_both_generators_against_every_server(
    client: Path, reference: servers.ServerSpec
) -> None:
    """The runner's own path: one round of the quick compared cell, then the report's
    query. Each server is driven by echod-bench, then at once by the C client."""
    cell = next(c for c in QUICK if c.c_client)
    timing = Timing(rounds=1, duration=0.5, warmup=0.2)
    (epoll,) = servers.specs(["epoll"], with_reference=False)
    records = [
        {**run.measure(spec, cell, timing, None, None, generator), "round": 1}
        for spec, generator in run.line_up(cell, [epoll, reference])
    ]
    assert [(r["server"], r["generator"]) for r in records] == [
        ("epoll", ECHOD_BENCH),
        ("epoll", C_CLIENT),
        (reference.name, ECHOD_BENCH),
        (reference.name, C_CLIENT),
    ]
    for record in records:
        assert "error" not in record, record
        assert record["generator_status"] == 0 and record["server_exit"] == 0
    mine = records[3]["figures"]
    assert mine["requests_per_s"] > 0 and mine["errors"] == {}
    assert 0 <= mine["workers"][0]["cpu_pct"] <= 150
    data = {
        "servers": ["epoll", reference.name],
        "reference": reference.name,
        "cells": [
            {"name": cell.name, "args": list(cell.args), "connections": 10, "c_client": True}
        ],
        "runs": records,
    }
    res = Results(data)
    ours, theirs = res.ceiling(cell.name), res.ceiling(cell.name, C_CLIENT)
    assert ours and theirs and res.ceiling_ratio(cell.name) == ours / theirs
    driven = res.c_client_rate("epoll", cell.name)
    assert driven and res.c_client_share("epoll", cell.name) == driven / theirs


IGNORES_SIGTERM = (
    "import signal, socket, sys, time\n"
    "signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
    "s = socket.create_server(('127.0.0.1', 0))\n"
    "print(f'listening on 127.0.0.1:{s.getsockname()[1]}', file=sys.stderr, flush=True)\n"
    "time.sleep(60)\n"
)


def test_a_server_that_ignores_sigterm_is_recorded_as_killed() -> None:
    spec = servers.ServerSpec("stubborn", (sys.executable, "-c", IGNORES_SIGTERM))
    server = servers.RunningServer(spec, None)
    assert server.stop(timeout=0.5) == -9
    assert server.killed


def test_c_client_counts_become_error_kinds() -> None:
    line = (
        '{"requests": 10, "seconds": 1.0, "requests_per_s": 10.0, '
        '"mismatches": 1, "errors": 0, "lost": 2}\n'
    )
    counts = generators.c_client_counts(line)
    figures = generators.c_client_figures(counts, cpu_s=0.95, wall_s=1.0)
    assert figures["errors"] == {"mismatch": 1, "lost": 2}
    assert figures["requests_per_s"] == 10.0 and figures["messages"] == 10
    assert figures["workers"] == [{"index": 0, "cpu_pct": 95.0, "saturated": True}]
    assert figures["server"] is None and "handshakes" not in figures


def test_handshake_client_counts_become_figures() -> None:
    """echo-hs-client's line: a handshake is a message, and a resumed cell's full
    handshake is an error of its own kind."""
    line = (
        '{"mode": "resumed", "handshakes": 300, "resumed": 298, "seconds": 2.0, '
        '"handshakes_per_s": 150.0, "window": [10.0, 12.0], "latency_us": {"p50": 900, '
        '"p99": 4000, "p99.9": 6000}, "mismatches": 0, "closed": 1, "timeouts": 0, "tls": 0, '
        '"connect": 0, "not_resumed": 2}\n'
    )
    server = {"cpu_us_per_msg": 700.0}
    figures = generators.c_client_figures(generators.c_client_counts(line), 1.0, 4.0, server)
    assert figures["requests_per_s"] == 150.0 and figures["messages"] == 300
    assert figures["errors"] == {"closed": 1, "not_resumed": 2}
    assert figures["handshakes"] == {"resumed": 298, "mode": "resumed"}
    assert figures["latency_us"]["p99"] == 4000 and figures["server"] is server
    assert figures["workers"][0] == {"index": 0, "cpu_pct": 25.0, "saturated": False}


def test_without_the_c_programs_only_echod_bench_runs() -> None:
    kept, notes = run.runnable(list(QUICK), ["epoll", "uvloop"], c_client=False, hs_client=False)
    assert [c.name for c in kept] == [c.name for c in QUICK]
    assert not any(c.c_client for c in kept)
    assert notes == [
        f"{name}: echod-bench only, the C client needs the C programs"
        for name in ("rr-1k-10", "tls-hs-ecdsa-resumed")
    ]
    # Each C client is needed only by its own cells.
    kept, notes = run.runnable(list(QUICK), ["epoll"], c_client=False, hs_client=True)
    assert [c.name for c in kept if c.c_client] == ["tls-hs-ecdsa-resumed"]


def test_rounds_rotate_but_keep_each_servers_pair_side_by_side() -> None:
    cell = next(c for c in QUICK if c.c_client)
    specs = servers.specs(["epoll", "poll"], with_reference=True)
    ref = specs[-1].name
    group = run.line_up(cell, specs)
    who = [[(s.name, g) for s, g in run.in_round_order(cell, group, i)] for i in range(3)]
    eb, cc = ECHOD_BENCH, C_CLIENT
    assert who[0] == [
        ("epoll", eb),
        ("epoll", cc),
        ("poll", eb),
        ("poll", cc),
        (ref, eb),
        (ref, cc),
    ]
    # One server further along, and the C client first this time.
    assert who[1] == [
        ("poll", cc),
        ("poll", eb),
        (ref, cc),
        (ref, eb),
        ("epoll", cc),
        ("epoll", eb),
    ]
    assert who[2][:2] == [(ref, eb), (ref, cc)]
    # A cell without the C client just starts one further along each round.
    plain = run.line_up(named("rr-16k"), specs)
    assert [s.name for s, _ in run.in_round_order(named("rr-16k"), plain, 1)] == [
        "poll",
        ref,
        "epoll",
    ]


def test_a_run_that_lost_its_cpu_to_the_hypervisor_is_contended() -> None:
    ticks = run.steal_ticks()  # this machine's own /proc/stat
    assert ticks and all(cpu.startswith("cpu") and n >= 0 for cpu, n in ticks.items())
    hz = os.sysconf("SC_CLK_TCK")
    before = {"cpu0": 1000, "cpu1": 500}
    # Over 4 s: CPU 0 lost 2% (this machine's usual), CPU 1 lost 25%.
    after = {"cpu0": 1000 + int(0.08 * hz), "cpu1": 500 + int(1.0 * hz)}
    assert run.stolen(before, after, 4.0) == {"hypervisor steal 25% on cpu1"}
    assert run.stolen(before, before, 4.0) == set()
