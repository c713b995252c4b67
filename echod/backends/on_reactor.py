"""The serving core's loop primitives answered by one reactor.

The reactor backends and the threads backend both run their listeners, timers and
signals on a :class:`~echod.backends.reactor.Reactor` in the main thread; they differ
only in how a connection is served. What they share is here, once.
"""

from __future__ import annotations

import socket
from collections.abc import Callable, Sequence

from echod.backends.reactor import READ, Listening, Reactor, Timer
from echod.backends.serving import Conn, ServingCore
from echod.config import Config
from echod.lifecycle import HANDLED_SIGNALS, Lifecycle


class ReactorServingCore(ServingCore[Conn]):
    """A serving core whose loop is ``reactor``: it watches the listeners, fires the
    timers and delivers the signals; subclasses say how a connection is served."""

    def __init__(
        self,
        reactor: Reactor,
        listeners: Sequence[socket.socket],
        config: Config,
        lifecycle: Lifecycle,
        *,
        limit: int | None = None,
        fd_limit: int | None = None,
    ) -> None:
        super().__init__(listeners, config, lifecycle, limit=limit, fd_limit=fd_limit)
        self.reactor = reactor
        self.listening = Listening(reactor, self.listeners, self.accept_from)

    def handle_signals(self) -> None:
        self.reactor.handle_signals(HANDLED_SIGNALS, self.on_signal)

    def wait(self) -> None:
        self.reactor.run()

    def finish(self) -> None:
        self.reactor.stop()

    def watch_listeners(self) -> None:
        self.listening.start()

    def unwatch_listeners(self) -> None:
        self.listening.stop()

    def watch_readable(self, sock: socket.socket, callback: Callable[[int], None]) -> None:
        self.reactor.add(sock.fileno(), READ, callback)

    def unwatch_readable(self, sock: socket.socket) -> None:
        self.reactor.remove(sock.fileno())

    def call_later(self, delay: float, callback: Callable[[], object]) -> Timer:
        return self.reactor.call_later(delay, callback)

    def call_every(self, interval: float, callback: Callable[[], object]) -> Timer:
        return self.reactor.call_every(interval, callback)

    def io_description(self) -> str:
        return self.reactor.describe()

    def close_loop(self) -> None:
        self.reactor.close()
