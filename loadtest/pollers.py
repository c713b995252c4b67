"""Readiness pollers for the worker: epoll driven directly where there is one, selectors elsewhere.

Both run callbacks straight from the readiness list.  ``selectors`` builds a
``(key, mask)`` tuple per ready socket in a Python loop and translates masks;
calling ``epoll.poll`` directly and looking the callback up by descriptor does
neither (measured with callgrind per echoed message: see the commit that
added this module).  Connections only ever see ``READ``, ``WRITE`` and the
three registration methods, so the two differ by data, not by the code above
them.

A callback may close another socket whose event is in the same ready list: both
pollers skip a descriptor no longer registered by then.
"""

from __future__ import annotations

import select
import selectors
from collections.abc import Callable

Callback = Callable[[int], None]


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


Poller = EpollPoller | SelectorsPoller


def best_poller() -> Poller:
    return EpollPoller() if hasattr(select, "epoll") else SelectorsPoller()
