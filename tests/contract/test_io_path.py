"""Which IO path a reactor runs is said at start, so an operator never has to guess."""

from __future__ import annotations

import re

from tests.support import Echod

# What each backend's start-up line must name; backends on someone else's loop
# (asyncio, uvloop, gevent) have no choice to report.
EXPECTED = {
    "epoll": r"waits on epoll \(select\.epoll owned by the reactor\)",
    "poll": r"waits on poll \(select\.poll owned by the reactor\)",
    "devpoll": r"waits on devpoll \(select\.devpoll owned by the reactor\)",
    "select": r"waits on selectors\.SelectSelector \(public selectors API\)",
    "kqueue": r"waits on selectors\.KqueueSelector \(public selectors API\)",
    "selectors": r"waits on selectors\.\w+Selector \(public selectors API\)",
    "threads": r"waits on selectors\.\w+Selector \(public selectors API\)",
    "uring": r"waits on io_uring \(echod\._uring over liburing; SQ \d+, CQ \d+ entries;",
}


def test_start_up_names_the_io_path(server: Echod, backend: str) -> None:
    expected = EXPECTED.get(backend)
    if expected is None:
        assert "waits on" not in server.log
    else:
        server.wait_for(re.compile(rf"backend {backend} {expected}"), timeout=5)
