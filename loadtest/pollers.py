"""Readiness pollers for the worker: epoll driven directly where there is one, selectors elsewhere.

Both run callbacks straight from the readiness list.  ``selectors`` builds a
``(key, mask)`` tuple per ready socket in a Python loop and translates masks;
calling ``epoll.poll`` directly and looking the callback up by descriptor does
neither (measured with callgrind per echoed message: see the commit that
added this module).  Connections only ever see ``READ``, ``WRITE`` and the
three registration methods, so the two differ by data, not by the code above
them.

``RRPoller`` is epoll run from C (``_rrloop.c``): besides the callbacks, it
runs the closed-loop ``rr`` workload itself for the connections attached to it,
and the worker folds its counts into the tally (``collect``) at every boundary.
The other pollers have nothing to fold and nothing to stop.

A callback may close another socket whose event is in the same ready list: every
poller skips a descriptor no longer registered by then.
"""

from __future__ import annotations

import os
import select
import selectors
from collections.abc import Callable
from types import ModuleType

from loadtest.stats import Tally

Callback = Callable[[int], None]
# ``python`` forces the pure-Python loop (tests, comparisons); anything else
# takes the C loop for rr where the extension was built.
LOOP_ENV = "ECHOD_BENCH_LOOP"


class EpollPoller:
    """``select.epoll`` with a descriptor -> callback table."""

    name = "epoll"
    READ = select.EPOLLIN
    WRITE = select.EPOLLOUT

    def __init__(self) -> None:
        self._epoll = select.epoll()
        self._handlers: dict[int, Callback] = {}

    def register(self, fd: int, events: int, callback: Callback) -> None:
        self._epoll.register(fd, events)
        self._handlers[fd] = callback

    def modify(self, fd: int, events: int, callback: Callback) -> None:
        self._epoll.modify(fd, events)
        self._handlers[fd] = callback

    def unregister(self, fd: int) -> None:
        self._epoll.unregister(fd)
        del self._handlers[fd]

    def poll(self, timeout: float) -> int:
        """Wait up to ``timeout`` seconds, run the callback of every ready socket, count them."""
        handlers = self._handlers
        ready = self._epoll.poll(timeout)
        for fd, events in ready:
            try:
                callback = handlers[fd]
            except KeyError:  # closed by an earlier callback of this round
                continue
            callback(events)
        return len(ready)

    def close(self) -> None:
        self._epoll.close()

    def collect(self, tally: Tally) -> None:
        """Nothing to fold: Python connections count straight into the tally."""

    def stop_issuing(self) -> None:
        """Nothing to stop: Python connections read the link's phase."""


class SelectorsPoller:
    """The stdlib's best selector, for systems without epoll (kqueue, poll)."""

    name = "selectors"
    READ = selectors.EVENT_READ
    WRITE = selectors.EVENT_WRITE

    def __init__(self) -> None:
        self._selector = selectors.DefaultSelector()

    def register(self, fd: int, events: int, callback: Callback) -> None:
        self._selector.register(fd, events, callback)

    def modify(self, fd: int, events: int, callback: Callback) -> None:
        self._selector.modify(fd, events, callback)

    def unregister(self, fd: int) -> None:
        self._selector.unregister(fd)

    def poll(self, timeout: float) -> int:
        ready = self._selector.select(timeout)
        registered = self._selector.get_map()
        for key, mask in ready:
            # selectors hands out keys gathered before any callback ran.
            if registered.get(key.fd) is key:
                key.data(mask)
        return len(ready)

    def close(self) -> None:
        self._selector.close()

    def collect(self, tally: Tally) -> None:
        """Nothing to fold: Python connections count straight into the tally."""

    def stop_issuing(self) -> None:
        """Nothing to stop: Python connections read the link's phase."""


class RRPoller:
    """epoll run from C, which also runs ``rr`` for attached connections.

    A connection attached by ``attach`` is read, verified, timed and refilled in
    C until it fails; then C forgets it and calls ``on_fail(code, done)``
    (``code`` 0 for EOF, -1 for a mismatch, else an errno) and the connection
    fails in Python as it would have there.  ``register``/``modify`` hand a
    descriptor back to a Python callback.  ``poll`` keeps polling in C until its
    timeout while only attached connections are ready, and returns as soon as a
    Python callback ran: the worker's loop turns once per timer, not per event.
    """

    name = "c-rr"
    READ = select.EPOLLIN if hasattr(select, "EPOLLIN") else 1
    WRITE = select.EPOLLOUT if hasattr(select, "EPOLLOUT") else 4

    def __init__(self, rrloop: ModuleType) -> None:
        loop = rrloop.Loop()
        self._loop = loop
        self.unregister: Callable[[int], None] = loop.unregister
        self.poll: Callable[[float], int] = loop.poll
        self.attach: Callable[[int, bytes, int, int, int, float, Callable[[int, int], None]], None]
        self.attach = loop.attach
        self.progress: Callable[[int], tuple[int, int]] = loop.progress

    def register(self, fd: int, events: int, callback: Callback) -> None:
        self._loop.register(fd, events, callback)

    def modify(self, fd: int, events: int, callback: Callback) -> None:
        self._loop.modify(fd, events, callback)

    def close(self) -> None:
        self._loop.close()

    def collect(self, tally: Tally) -> None:
        """Fold what C counted since the last call into the tally's current second."""
        messages, echoed, latency = self._loop.take()
        tally.messages += messages
        tally.bytes += echoed
        counts = tally.latency
        for us, count in latency.items():
            counts[us] = counts.get(us, 0) + count

    def stop_issuing(self) -> None:
        """The drain: attached connections release no new messages."""
        self._loop.stop_issuing()


Poller = EpollPoller | SelectorsPoller | RRPoller


def rrloop() -> ModuleType | None:
    """The C extension, unless it was not built or ``ECHOD_BENCH_LOOP=python``."""
    if os.environ.get(LOOP_ENV, "") == "python":
        return None
    try:
        from loadtest import _rrloop
    except ImportError:  # built without a compiler: the Python loop runs
        return None
    return _rrloop


def best_poller(workload: str = "") -> Poller:
    """The C loop for ``rr`` where it is available; otherwise epoll, else selectors."""
    if workload == "rr" and hasattr(select, "epoll"):
        module = rrloop()
        if module is not None:
            return RRPoller(module)
    return EpollPoller() if hasattr(select, "epoll") else SelectorsPoller()
