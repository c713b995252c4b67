"""Timers of the asyncio and gevent backends: only live ones are kept.

Out of descriptors, the serving core sets a one-shot timer each back-off second; a
backend that kept every one until close grew by one per second for as long as the
exhaustion lasted.
"""

from __future__ import annotations

import asyncio

from echod.backends.aio import AsyncServer
from echod.config import Config
from echod.lifecycle import Lifecycle
from tests.support import require_module


def test_asyncio_keeps_only_live_timers() -> None:
    loop = asyncio.new_event_loop()
    try:
        server = AsyncServer(loop, [], Config(), Lifecycle())
        fired: list[int] = []
        for n in range(100):
            server.call_later(0, lambda n=n: fired.append(n))
        loop.run_until_complete(asyncio.sleep(0.05))
        assert len(fired) == 100
        server.call_later(60, lambda: None).cancel()
        waiting = server.call_later(60, lambda: None)
        every = server.call_every(60, lambda: None)
        assert server._timers == {waiting, every}
        server.close_loop()
        assert waiting.cancelled() and every.cancelled()
    finally:
        loop.close()


def test_gevent_keeps_only_live_timers() -> None:
    require_module("gevent")
    import gevent

    from echod.backends.green import GreenServer

    server = GreenServer([], Config(), Lifecycle())
    fired: list[int] = []
    for n in range(100):
        server.call_later(0, lambda n=n: fired.append(n))
    gevent.sleep(0.05)
    assert len(fired) == 100
    server.call_later(60, lambda: None).cancel()
    gevent.sleep(0)
    waiting = server.call_later(60, lambda: None)
    assert server.timers == [waiting.greenlet]  # type: ignore[attr-defined]
    gevent.killall(server.timers)
