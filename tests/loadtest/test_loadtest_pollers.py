"""Every poller drives the same worker to the same verdicts: epoll, selectors, and C (rr)."""

from __future__ import annotations

import socket
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from loadtest_servers import EchoServer

from loadtest.params import Params
from loadtest.pollers import EpollPoller, Poller, RRPoller, SelectorsPoller, rrloop
from loadtest.stats import Interval
from loadtest.worker import Worker, WorkerPlan

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:  # tests/ is a directory of the repository, not installed
    sys.path.insert(0, str(ROOT))

from tests.support import missing  # noqa: E402


class Inbox:
    """Stands in for the result queue: keeps what the worker puts on it."""

    def __init__(self) -> None:
        self.items: list[tuple[Any, ...]] = []

    def put(self, item: tuple[Any, ...]) -> None:
        self.items.append(item)


def c_loop() -> Poller:
    module = rrloop()
    if module is None:
        missing("loadtest._rrloop is not built (pip install -e . with a C compiler)")
    return RRPoller(module)


@pytest.mark.parametrize(
    "poller", [EpollPoller, SelectorsPoller, c_loop], ids=["epoll", "selectors", "c-rr"]
)
@pytest.mark.parametrize(("fault", "kinds"), [(None, set()), ("corrupt", {"mismatch"})])
def test_a_worker_on_either_poller_counts_and_checks_alike(
    poller: Callable[[], Poller],
    fault: str | None,
    kinds: set[str],
) -> None:
    server = EchoServer(fault=fault, after=1_000_000 if fault is None else 1000)
    try:
        params = Params(port=server.port, connections=4, size=100, duration=0.6, warmup=0.1)
        address = ("127.0.0.1", server.port)
        plan = WorkerPlan(0, 0, 4, 4, 0.0, socket.AF_INET, address)
        chosen = poller()
        worker = Worker(params, plan, chosen)
        assert worker.setup() == 4
        inbox = Inbox()
        result = worker.run(time.monotonic(), inbox)  # type: ignore[arg-type]
    finally:
        server.close()
    assert result.loop == chosen.name
    # The corrupting server strikes each connection 1000 bytes after each (re)connect.
    assert set(result.errors) == kinds
    assert result.errors.get("mismatch", 4) >= 4
    assert result.messages > 0
    intervals = [item[2] for item in inbox.items if item[0] == "interval"]
    assert all(isinstance(interval, Interval) for interval in intervals)
    assert sum(interval.messages for interval in intervals) == result.messages
