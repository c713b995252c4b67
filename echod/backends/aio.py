"""The echo server as an ``asyncio.Protocol``, on the stdlib loop or on uvloop.

The transport owns the outbound buffer here, so the protocol mirrors the session's
rules instead of driving :class:`echod.session.EchoSession`: the transport's write
limits are the water marks, ``pause_writing`` pauses reading (flow control), and
returning False from ``eof_received`` makes the transport flush, then close
(half-close). A plain ``Protocol`` rather than ``BufferedProtocol``: the selector
transport keeps a reference to what ``write`` could not send, so a shared receive
buffer would have to be copied anyway.
"""

from __future__ import annotations

import asyncio
import importlib
import importlib.util
import logging
import socket
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, cast

from echod.backends.base import (
    ACCEPT_BACKOFF,
    ACCEPT_BATCH,
    EXHAUSTED,
    ServingPolicy,
    SpareDescriptor,
)
from echod.config import Config
from echod.lifecycle import HANDLED_SIGNALS, Lifecycle
from echod.logs import RateLimitedLog
from echod.net.listeners import describe
from echod.udp.serving import DatagramService

log = logging.getLogger("echod")


@dataclass(frozen=True)
class AsyncioBackend:
    """An asyncio-compatible loop, named by the factory that makes it."""

    name: str
    loop_factory: str  # "module:function", imported only when this backend is chosen

    def available(self) -> bool:
        module = self.loop_factory.partition(":")[0]
        return importlib.util.find_spec(module) is not None

    def new_loop(self) -> asyncio.AbstractEventLoop:
        module, _, function = self.loop_factory.partition(":")
        factory: Callable[[], asyncio.AbstractEventLoop] = getattr(
            importlib.import_module(module), function
        )
        return factory()

    def serve(
        self, listeners: Sequence[socket.socket], config: Config, lifecycle: Lifecycle
    ) -> None:
        loop = self.new_loop()
        try:
            loop.run_until_complete(AsyncServer(listeners, config, lifecycle).run(self.name))
        finally:
            loop.close()


ASYNCIO = AsyncioBackend("asyncio", "asyncio:new_event_loop")
UVLOOP = AsyncioBackend("uvloop", "uvloop:new_event_loop")


class EchoProtocol(asyncio.Protocol):
    """One connection: everything received is written straight back."""

    __slots__ = ("idle_ticks", "server", "transport")

    def __init__(self, server: AsyncServer) -> None:
        self.server = server
        self.idle_ticks = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement asyncio.Transport without subclassing it.
        self.transport = cast(asyncio.Transport, transport)
        marks = self.server.marks
        self.transport.set_write_buffer_limits(high=marks.high, low=marks.low)
        self.server.opened(self)

    def data_received(self, data: bytes) -> None:
        self.idle_ticks = 0
        stats = self.server.stats
        size = len(data)
        stats.bytes_in += size
        stats.bytes_out += size  # handed to the transport, which sends or buffers it
        self.transport.write(data)

    def eof_received(self) -> bool:
        return False  # the transport sends what is buffered, then closes

    def pause_writing(self) -> None:
        self.transport.pause_reading()

    def resume_writing(self) -> None:
        self.transport.resume_reading()

    def connection_lost(self, exc: Exception | None) -> None:
        self.server.forget(self)

    def has_pending(self) -> bool:
        return self.transport.get_write_buffer_size() > 0

    def fileno(self) -> int:
        sock = self.transport.get_extra_info("socket")
        return -1 if sock is None else int(sock.fileno())

    def close(self) -> None:
        self.transport.abort()


class AsyncServer(ServingPolicy):
    """Listeners, connections and signals of one asyncio-family loop."""

    def __init__(
        self, listeners: Sequence[socket.socket], config: Config, lifecycle: Lifecycle
    ) -> None:
        self.listeners, self.udp = DatagramService.take(listeners, config, lifecycle.stats)
        self.config = config
        self.lifecycle = lifecycle
        self.stats = lifecycle.stats
        self.marks = config.marks
        self.connections: set[EchoProtocol] = set()
        self.servers: list[asyncio.AbstractServer] = []
        self._timers: list[Repeating | asyncio.TimerHandle] = []
        self._warn = RateLimitedLog(log, interval=10.0)
        self._spare = SpareDescriptor()
        self._shedding = False

    async def run(self, label: str) -> None:
        loop = asyncio.get_running_loop()
        self.loop = loop
        self.finished: asyncio.Future[None] = loop.create_future()
        loop.set_exception_handler(self._on_loop_error)
        for signum in HANDLED_SIGNALS:
            loop.add_signal_handler(signum, self.on_signal, signum)
        try:
            await self._start_accepting()
            self.call_every(self.lifecycle.heartbeat_interval, self.lifecycle.heartbeat)
            self.start_idle_sweeps()
            # Datagrams are read straight off the socket, as the reactor does: asyncio's
            # datagram transport would queue answers without bound on EAGAIN.
            self.udp.start(
                lambda sock, callback: loop.add_reader(sock, callback, 0), loop.remove_reader
            )
            self.lifecycle.ready(
                [describe(sock) for sock in self.listeners] + self.udp.addresses, label
            )
            await self.finished
        finally:
            for signum in HANDLED_SIGNALS:
                loop.remove_signal_handler(signum)
            for timer in self._timers:
                timer.cancel()
            self._stop_accepting()
            for sock in self.listeners:
                sock.close()
            self.udp.close()
            for conn in list(self.connections):
                conn.close()
            self._spare.close()
            await asyncio.sleep(0)  # let the aborted transports report connection_lost
            self.lifecycle.stopped()

    # Accepting -------------------------------------------------------------------------
    async def _start_accepting(self) -> None:
        """Serve a duplicate of each listener, so pausing never closes the real one."""
        if self.servers or self.lifecycle.draining:
            return
        for sock in self.listeners:
            # asyncio uses ``backlog`` both for listen() and as the number of accepts per
            # wakeup, and on EMFILE it goes on looping, logging and scheduling a retry
            # each time: keep that batch small, then restore the kernel's queue length.
            server = await self.loop.create_server(
                lambda: EchoProtocol(self), sock=sock.dup(), backlog=ACCEPT_BATCH
            )
            sock.listen(self.config.backlog)
            # With a forbidden address family, create_server can come back with no
            # sockets at all: never report ready in that state.
            if not server.sockets:
                raise OSError(f"the event loop could not serve {describe(sock)}")
            self.servers.append(server)

    def _stop_accepting(self) -> None:
        for server in self.servers:
            server.close()
        self.servers = []

    def opened(self, conn: EchoProtocol) -> None:
        limit = self.config.max_connections
        if limit and len(self.connections) >= limit:
            # The loop accepts in batches; what a batch took past the cap is closed at
            # once, and accepting stops so later clients wait in the backlog.
            self._stop_accepting()
            self.stats.connections_dropped += 1
            conn.transport.abort()
            return
        self.connections.add(conn)
        self.stats.opened()
        if limit and len(self.connections) >= limit:
            self._stop_accepting()

    def forget(self, conn: EchoProtocol) -> None:
        if conn not in self.connections:
            return
        self.connections.discard(conn)
        self.stats.connections_open -= 1
        if self.lifecycle.draining:
            if not self.connections:
                self.finish()
        elif not self.servers:
            self.loop.create_task(self._start_accepting())

    def _on_loop_error(self, loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        """One rate-limited line for the loop's resource errors; tracebacks for bugs.

        The stdlib loop reports "socket.accept() out of system resource" (EMFILE) with a
        traceback each time, and its retry timer fails harmlessly on a listener we
        closed meanwhile.
        """
        exc = context.get("exception")
        message = context.get("message", "event loop error")
        if isinstance(exc, OSError):
            self._warn.warning(message, "%s: %s", message, exc)
            if exc.errno in EXHAUSTED and not self._shedding:
                # The stdlib only drops the reader and retries in 1 s, leaving clients
                # queued: refuse them now, as the reactor does, and accept again at once.
                self._shedding = True
                loop.call_soon(self._shed)
        elif isinstance(exc, ValueError) and "_start_serving" in repr(context.get("handle")):
            log.debug("%s after its listener closed: %s", message, exc)
        else:
            loop.default_exception_handler(context)

    def _shed(self) -> None:
        self.stats.connections_dropped += self._spare.shed(self.listeners)
        self._shedding = False
        if self._spare.fd is None or self.lifecycle.draining:
            return  # the stdlib's own retry in 1 s stands
        self._stop_accepting()
        self.loop.create_task(self._restart_accepting())

    async def _restart_accepting(self) -> None:
        try:
            await self._start_accepting()
        except OSError as exc:
            self._warn.warning(
                "restart", "cannot accept yet (%s): retrying in %gs", exc, ACCEPT_BACKOFF
            )
            self._stop_accepting()
            self.call_later(
                ACCEPT_BACKOFF, lambda: self.loop.create_task(self._restart_accepting())
            )

    # Primitives of the serving policy --------------------------------------------------
    def live_connections(self) -> list[EchoProtocol]:
        return list(self.connections)

    def close_listeners(self) -> None:
        self._stop_accepting()
        for sock in self.listeners:
            sock.close()
        self.udp.close()

    def finish(self) -> None:
        if not self.finished.done():
            self.finished.set_result(None)

    def call_later(self, delay: float, callback: Callable[[], object]) -> asyncio.TimerHandle:
        timer = self.loop.call_later(delay, callback)
        self._timers.append(timer)
        return timer

    def call_every(self, interval: float, callback: Callable[[], object]) -> Repeating:
        timer = Repeating(self.loop, interval, callback)
        self._timers.append(timer)
        return timer


class Repeating:
    """``call_later`` again and again, with one handle to cancel it."""

    def __init__(
        self, loop: asyncio.AbstractEventLoop, interval: float, callback: Callable[[], Any]
    ) -> None:
        self._loop = loop
        self._interval = interval
        self._callback = callback
        self._handle = loop.call_later(interval, self._tick)

    def _tick(self) -> None:
        self._callback()
        self._handle = self._loop.call_later(self._interval, self._tick)

    def cancel(self) -> None:
        self._handle.cancel()
