"""The C100k bench cells: enough source addresses, and backends that cannot say why."""

from __future__ import annotations

import ipaddress
import resource
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:  # bench/ is a directory of the repository, not installed
    sys.path.insert(0, str(ROOT))

from bench.matrix import C100K, C100K_10K_SPREAD, C100K_SMALL, FULL  # noqa: E402
from bench.run import kernel_thread_limit, obstacle, per_process, spread_over_workers  # noqa: E402
from bench.servers import ServerSpec  # noqa: E402

# Ports one source address has towards one server port (Linux default range).
PORTS_PER_SOURCE = 60999 - 32768 + 1


def sources(args: tuple[str, ...]) -> int:
    first, last = args[args.index("--source-address") + 1].split("-")
    return int(ipaddress.ip_address(last)) - int(ipaddress.ip_address(first)) + 1


def test_cells_run_from_1k_to_100k_with_ports_to_spare() -> None:
    assert [c.connections for c in C100K] == [1_000, 10_000, 100_000]
    assert all(c in FULL for c in C100K)
    for cell in (*C100K, C100K_SMALL):
        assert cell.args[cell.args.index("--active") + 1] == "100"
        assert sources(cell.args) * PORTS_PER_SOURCE > 1.5 * cell.connections


def spec(backend: str) -> ServerSpec:
    return ServerSpec(backend, ("echod",), backend)


def test_select_is_reported_with_its_reason_not_dropped() -> None:
    reason = obstacle(spec("select"), C100K[1])
    assert reason is not None and "FD_SETSIZE" in reason
    assert obstacle(spec("select"), C100K[0]) is None


@pytest.mark.parametrize("limit", [32_768, 4_194_304])
def test_threads_are_held_to_the_kernel_thread_limit(limit: int) -> None:
    """Both sides, whatever this machine's own limit: 32,768 is the old pid_max default
    (100k threads cannot start), 4,194,304 today's (they can)."""
    for cell in C100K:
        reason = obstacle(spec("threads"), cell, threads=limit)
        if cell.connections > limit - 1024:
            assert reason is not None and f"allow {limit:,}" in reason, (cell, reason)
        else:
            assert reason is None or "pid_max" not in reason, (cell, reason)
    # Only threads spend a thread per connection.
    assert "pid_max" not in (obstacle(spec("epoll"), C100K[-1], threads=1000) or "")
    found = kernel_thread_limit()
    assert found is not None and found >= 1024  # read from this machine's /proc


def test_a_descriptor_limit_too_low_is_the_reason_for_every_backend() -> None:
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    for cell in C100K:
        server = spread_over_workers(spec("epoll"), cell)
        reason = obstacle(server, cell)
        if hard != resource.RLIM_INFINITY and per_process(cell) + 64 > hard:
            assert reason is not None and "hard limit" in reason
        else:
            assert reason is None


def test_the_100k_cell_spreads_epoll_uvloop_uring_over_workers_and_says_why_not_others() -> None:
    big = C100K[-1]
    assert big.spread and per_process(big) + 1024 < 20_000, "each process under 20,000 files"
    assert big.args[big.args.index("--processes") + 1] == str(big.spread)
    for backend in ("epoll", "uvloop", "uring"):
        server = spread_over_workers(spec(backend), big)
        assert server.argv[-4:] == ("--workers", str(big.spread), "--listen-mode", "reuseport")
        assert server.workers == big.spread
    poll = obstacle(spread_over_workers(spec("poll"), big), big)
    assert poll is not None and "poll(2)" in poll
    asyncio = obstacle(spread_over_workers(spec("asyncio"), big), big)
    assert asyncio is not None and "spread over" in asyncio
    reference = ServerSpec("c-epoll", ("echo-epoll",))
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    if hard != resource.RLIM_INFINITY and big.connections + 64 > hard:
        found = obstacle(spread_over_workers(reference, big), big)
        assert found is not None and "hard limit" in found


def test_the_10k_cell_over_six_workers_runs_the_100k_cells_servers() -> None:
    """The RSS slope from 10k to 100k compares the same processes: same workers, same
    generator processes, same backends, only the connections differ."""
    big, small = C100K[-1], C100K_10K_SPREAD
    assert small not in FULL and small.connections == 10_000
    assert (small.spread, small.spread_backends) == (big.spread, big.spread_backends)
    drop = ("--connections",)
    assert [a for a in small.args if a not in drop and a != "10000"] == [
        a for a in big.args if a not in drop and a != "100000"
    ]
    server = spread_over_workers(spec("uring"), small)
    assert server.argv[-4:] == ("--workers", str(big.spread), "--listen-mode", "reuseport")
