"""Both pollers drive the same worker to the same verdicts: epoll here, selectors elsewhere."""

from __future__ import annotations

import socket
import time
from typing import Any

import pytest
from loadtest_servers import EchoServer

from loadtest.params import Params
from loadtest.pollers import EpollPoller, SelectorsPoller
from loadtest.stats import Interval
from loadtest.worker import Worker, WorkerPlan


class Inbox:
    """Stands in for the result queue: keeps what the worker puts on it."""

    def __init__(self) -> None:
        self.items: list[tuple[Any, ...]] = []

    def put(self, item: tuple[Any, ...]) -> None:
        self.items.append(item)


@pytest.mark.parametrize("poller", [EpollPoller, SelectorsPoller], ids=["epoll", "selectors"])
@pytest.mark.parametrize(("fault", "kinds"), [(None, set()), ("corrupt", {"mismatch"})])
def test_a_worker_on_either_poller_counts_and_checks_alike(
    poller: type[EpollPoller] | type[SelectorsPoller],
    fault: str | None,
    kinds: set[str],
) -> None:
    server = EchoServer(fault=fault, after=1_000_000 if fault is None else 1000)
    try:
        params = Params(port=server.port, connections=4, size=100, duration=0.6, warmup=0.1)
        address = ("127.0.0.1", server.port)
        plan = WorkerPlan(0, 0, 4, 4, 0.0, socket.AF_INET, address)
        worker = Worker(params, plan, poller())
        assert worker.setup() == 4
        inbox = Inbox()
        result = worker.run(time.monotonic(), inbox)  # type: ignore[arg-type]
    finally:
        server.close()
    assert result.loop == poller.name
    # The corrupting server strikes each connection 1000 bytes after each (re)connect.
    assert set(result.errors) == kinds
    assert result.errors.get("mismatch", 4) >= 4
    assert result.messages > 0
    intervals = [item[2] for item in inbox.items if item[0] == "interval"]
    assert all(isinstance(interval, Interval) for interval in intervals)
    assert sum(interval.messages for interval in intervals) == result.messages
