"""The real echod with --metrics: scrapes under load on every backend and with workers.

Every scrape is parsed by prometheus_client. Counters never go down, and a scrape counts
everything the server had read before it was asked: the supervisor collects fresh
counters from its workers first, so no scrape trails by a heartbeat.
"""

from __future__ import annotations

import itertools
import os
import re
import signal
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from echod import backends
from echod.metrics.endpoint import RENDER_GAP
from tests.metrics.scrape import Figures, address_of, per_worker, scrape, value
from tests.support import TIMEOUT, Echod, echod, exchange, wait_until

CONNECTIONS = 12
PAYLOAD = 48 * 1024
COUNTERS = (
    "echod_connections_accepted_total",
    "echod_received_bytes_total",
    "echod_sent_bytes_total",
    "echod_worker_restarts_total",
)


def load(server: Echod, connections: int = CONNECTIONS, size: int = PAYLOAD) -> None:
    """`connections` clients each echo `size` random bytes, checked, at the same time."""

    def one(_: int) -> None:
        payload = os.urandom(size)
        with server.connect() as sock:
            assert exchange(sock, payload) == payload

    with ThreadPoolExecutor(max_workers=connections) as pool:
        list(pool.map(one, range(connections)))


def scrape_while(where: tuple[int, object], done: threading.Event) -> list[Figures]:
    """Scrape in a loop until `done`, in both formats; every scrape must parse."""
    scrapes: list[Figures] = []
    while not done.is_set():
        scrapes.append(scrape(where, openmetrics=len(scrapes) % 2 == 1))
        done.wait(0.05)
    return scrapes


def totals(figures: Figures) -> dict[str, float]:
    return {name: sum(v for (n, _), v in figures.items() if n == name) for name in COUNTERS}


def check_under_load(server: Echod, rounds: int = 1) -> Figures:
    where = address_of(server)
    done = threading.Event()
    with ThreadPoolExecutor(max_workers=1) as pool:
        scraping = pool.submit(scrape_while, where, done)
        try:
            for _ in range(rounds):
                load(server)
        finally:
            done.set()
        scrapes = scraping.result(timeout=TIMEOUT)
    assert scrapes, "no scrape completed during the load"
    for earlier, later in itertools.pairwise(scrapes):
        before, after = totals(earlier), totals(later)
        assert all(after[name] >= before[name] for name in COUNTERS), (before, after)
    sent = CONNECTIONS * PAYLOAD * rounds
    # Every client has its echo, so the server has accepted and read everything: a scrape
    # says so at once, with no wait for a heartbeat, once the last collection of counters
    # is older than the endpoint's gap (the scrapes above were answered from it).
    time.sleep(RENDER_GAP)
    first = scrape(where)
    assert value(first, "echod_connections_accepted_total") == CONNECTIONS * rounds
    assert value(first, "echod_received_bytes_total") == sent
    # What is counted after the client has its echo (the last send's return, the close)
    # may still be on its way.
    expected = {
        "echod_connections_accepted_total": CONNECTIONS * rounds,
        "echod_received_bytes_total": sent,
        "echod_sent_bytes_total": sent,
    }
    final: Figures = {}

    def exact() -> bool:
        nonlocal final
        final = scrape(where)
        return all(value(final, name) == want for name, want in expected.items())

    assert wait_until(exact, timeout=TIMEOUT), {n: value(final, n) for n in expected}
    assert sum(per_worker(final, "echod_connections_open").values()) == 0
    return final


@pytest.mark.parametrize("backend", backends.available())
def test_counters_match_what_was_sent_on_every_backend(backend: str) -> None:
    with echod("--port", "0", "--backend", backend, "--metrics", "127.0.0.1:0") as server:
        final = check_under_load(server)
        # Enough echoing for the worker's CPU time to pass one 10 ms tick, then its series
        # against /proc read after the scrape: above 0, and not above what /proc says.
        with server.connect() as sock:
            assert exchange(sock, bytes(16 << 20)) == bytes(16 << 20)
        cpu = 0.0

        def worker_cpu() -> float:
            nonlocal cpu
            cpu = per_worker(scrape(address_of(server)), "echod_worker_cpu_seconds_total")["1"]
            return cpu

        assert wait_until(lambda: worker_cpu() > 0)  # a scrape within 0.1 s is the last one
        (worker,) = server.children()
        stat = Path(f"/proc/{worker}/stat").read_text().rsplit(")", 1)[1].split()
        cpu_now = (int(stat[11]) + int(stat[12])) / os.sysconf("SC_CLK_TCK")  # utime, stime
    assert value(final, "echod_build_info", version="0.1.0", backend=backend) == 1
    assert per_worker(final, "echod_worker_up") == {"1": 1}
    assert value(final, "process_open_fds") > 0
    assert value(final, "process_max_fds") > 0
    assert value(final, "process_resident_memory_bytes") > 1 << 20
    assert 0 < cpu <= cpu_now


def test_two_workers_one_scrape_for_the_whole_service() -> None:
    with echod("--port", "0", "--workers", "2", "--metrics", "127.0.0.1:0") as server:
        server.wait_for("ready: 2 workers serving")
        final = check_under_load(server, rounds=3)
    assert set(per_worker(final, "echod_connections_open")) == {"1", "2"}
    assert per_worker(final, "echod_worker_restarts_total") == {"1": 0, "2": 0}
    assert per_worker(final, "echod_worker_up") == {"1": 1, "2": 1}


def test_a_killed_workers_restart_is_counted_and_nothing_is_lost() -> None:
    with echod("--port", "0", "--workers", "2", "--metrics", "[::1]:0") as server:
        server.wait_for("ready: 2 workers serving")
        where = address_of(server)
        load(server)
        # Its counters reach the supervisor with a heartbeat: wait for them before the kill.
        assert wait_until(
            lambda: value(scrape(where), "echod_connections_accepted_total") == CONNECTIONS
        )
        victim = int(server.wait_for(r"worker 1 started \(pid (\d+)\)").group(1))
        os.kill(victim, signal.SIGKILL)
        server.wait_for(rf"worker 1 started \(pid (?!{victim}\))\d+\)")
        assert wait_until(
            lambda: per_worker(scrape(where), "echod_worker_restarts_total") == {"1": 1, "2": 0}
        )
        load(server)
        assert wait_until(
            lambda: value(scrape(where), "echod_connections_accepted_total") == 2 * CONNECTIONS
        )
        assert per_worker(scrape(where), "echod_worker_up") == {"1": 1, "2": 1}


def test_unix_socket_endpoint_and_bad_address(tmp_path: os.PathLike[str]) -> None:
    path = os.path.join(tmp_path, "metrics.sock")
    with echod("--port", "0", "--metrics", f"unix:{path}") as server:
        load(server, connections=2, size=1000)
        where = address_of(server)
        assert wait_until(lambda: value(scrape(where), "echod_received_bytes_total") == 2000)
    assert not os.path.exists(path), "the socket file outlived echod"
    with Echod("--port", "0", "--metrics", "localhost:99999", wait=False) as bad:
        assert bad.proc.wait(TIMEOUT) == 2  # malformed: a bad setting
    assert re.fullmatch(r"echod: error: [^\n]*99999[^\n]*\n", bad.log), bad.log
