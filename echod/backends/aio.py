"""The echo server as an asyncio protocol, on the stdlib loop or on uvloop.

The transport owns the outbound buffer here, so the protocol mirrors the session's
rules instead of driving :class:`echod.session.EchoSession`: the transport's write
limits are the water marks, ``pause_writing`` pauses reading (flow control), and
returning False from ``eof_received`` makes the transport flush, then close
(half-close).

On the stdlib loop a ``BufferedProtocol`` reads into one shared buffer, because a plain
``Protocol`` costs a ``recv(256 KiB)`` per read: glibc serves that size with mmap and, once the
bytes object is shrunk to what arrived (mremap), frees it below its dynamic mmap
threshold, which therefore never rises: mmap, mremap and munmap on every message.
strace -c shows it, and echod-bench measured 3x the CPU per message in processes whose
start-up happened not to raise the threshold (figures in the commit that added this).
What ``write`` is given is a copy of the bytes read, since a transport keeps a reference
to what it could not send (3.12's selector transport keeps a view).

The life of the listeners and of every connection is the serving core's
(:mod:`echod.backends.serving`): the loop watches each listener with ``add_reader``,
the core accepts (so the cap, the spare-descriptor shedding and accepting again on a
release are the same as on every other backend), and ``connect_accepted_socket`` wraps
each admitted socket in the loop's own transport. asyncio's ``create_server`` would
accept by itself, and on EMFILE only retries a second later.
"""

from __future__ import annotations

import asyncio
import importlib
import importlib.util
import socket
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, cast

from echod.backends.base import RECEIVE_SIZE
from echod.backends.fault_driver import FaultDriver, reset_socket
from echod.backends.serving import ServingCore
from echod.config import Config
from echod.faults import ConnectionFaults
from echod.lifecycle import HANDLED_SIGNALS, Lifecycle
from echod.tls import TlsEndpoint


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
            AsyncServer(loop, listeners, config, lifecycle).serve(self.name)
        finally:
            loop.close()


ASYNCIO = AsyncioBackend("asyncio", "asyncio:new_event_loop")
UVLOOP = AsyncioBackend("uvloop", "uvloop:new_event_loop")


class EchoProtocol(asyncio.Protocol):
    """One connection: everything received is written straight back."""

    __slots__ = ("idle_ticks", "server", "sock", "starting", "tls", "transport")

    def __init__(
        self, server: AsyncServer, sock: socket.socket, tls: TlsEndpoint | None = None
    ) -> None:
        self.server = server
        self.sock = sock
        self.tls = tls
        self.idle_ticks = 0
        self.transport: asyncio.Transport | None = None
        self.starting: asyncio.Task[Any] | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement asyncio.Transport without subclassing it.
        self.transport = cast(asyncio.Transport, transport)
        if self.tls is not None:  # made once the handshake is done
            self.tls.completed(transport.get_extra_info("ssl_object"))
        marks = self.server.marks
        self.transport.set_write_buffer_limits(high=marks.high, low=marks.low)

    def data_received(self, data: bytes) -> None:
        self.idle_ticks = 0
        stats = self.server.stats
        size = len(data)
        stats.bytes_in += size
        stats.bytes_out += size  # handed to the transport, which sends or buffers it
        self.transport.write(data)  # type: ignore[union-attr]  # set by connection_made

    def eof_received(self) -> bool:
        # The transport sends what is buffered, then closes. Over TLS (asyncio's and
        # uvloop's SSL protocol alike) the client's close_notify lands here whatever the
        # version: the transport flushes the echo written so far, then sends its own
        # close_notify; an SSL transport has no write_eof, and returning True is ignored.
        return False

    def pause_writing(self) -> None:
        self.server.stats.flow_paused += 1
        self.transport.pause_reading()  # type: ignore[union-attr]

    def resume_writing(self) -> None:
        self.transport.resume_reading()  # type: ignore[union-attr]

    def connection_lost(self, exc: Exception | None) -> None:
        self.server.release(self)

    def started(self, task: asyncio.Task[Any]) -> None:
        """The transport was made, or never will be: then the connection is over."""
        if task.cancelled() or task.exception() is not None:
            if self.tls is not None and not task.cancelled():
                self.tls.failed(handshake_failure(task.exception()))
            self.sock.close()
            self.server.release(self)

    def has_pending(self) -> bool:
        return self.transport is not None and self.transport.get_write_buffer_size() > 0

    def fileno(self) -> int:
        if self.transport is None:
            return self.sock.fileno()
        sock = self.transport.get_extra_info("socket")
        return -1 if sock is None else int(sock.fileno())

    def close(self) -> None:
        if self.transport is not None:
            self.transport.abort()
        elif self.starting is not None:
            self.starting.cancel()


class BufferedEchoProtocol(EchoProtocol, asyncio.BufferedProtocol):
    """The stdlib loop's protocol: reads into the server's one buffer (see the module
    docstring for why). uvloop reads into libuv's buffer and hands over exact-size
    bytes, so it keeps ``data_received``, which measured cheaper there."""

    __slots__ = ()

    def get_buffer(self, sizehint: int) -> memoryview:
        return self.server.view

    def buffer_updated(self, nbytes: int) -> None:
        # A copy: the shared buffer is the next read's (see the module docstring).
        self.data_received(self.server.view[:nbytes].tobytes())


class FaultyEchoProtocol(EchoProtocol):
    """A connection with faults on (``--fault``): reads go through its
    :class:`~echod.backends.fault_driver.FaultDriver`, which writes the echo when it is
    due; reading pauses while either the transport or the driver holds too much."""

    __slots__ = ("driver", "paused_by")

    def __init__(self, server: AsyncServer, sock: socket.socket, faults: ConnectionFaults) -> None:
        super().__init__(server, sock)
        self.driver = FaultDriver(self, faults, server.call_later, server.marks)
        self.paused_by: set[str] = set()

    def data_received(self, data: bytes) -> None:
        self.idle_ticks = 0
        self.server.stats.bytes_in += len(data)
        self.driver.received(data)

    def eof_received(self) -> bool:
        self.driver.end_of_input()
        return True  # half-open until the driver has written what it holds

    def pause_writing(self) -> None:
        self.server.stats.flow_paused += 1
        self._pause("transport")

    def resume_writing(self) -> None:
        self._resume("transport")

    def _pause(self, why: str) -> None:
        if not self.paused_by and self.transport is not None and not self.transport.is_closing():
            self.transport.pause_reading()
        self.paused_by.add(why)

    def _resume(self, why: str) -> None:
        self.paused_by.discard(why)
        if not self.paused_by and self.transport is not None and not self.transport.is_closing():
            self.transport.resume_reading()

    def has_pending(self) -> bool:
        return super().has_pending() or self.driver.pieces.held > 0

    def connection_lost(self, exc: Exception | None) -> None:
        self.driver.cancel()
        super().connection_lost(exc)

    # The driver's Carrier ----------------------------------------------------------------
    def write(self, data: bytes) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.server.stats.bytes_out += len(data)
            self.transport.write(data)

    def pause_reading(self) -> None:
        self._pause("faults")

    def resume_reading(self) -> None:
        self._resume("faults")

    def end_input(self) -> None:
        if self.transport is not None:
            self.transport.close()  # sends what it holds, then closes

    def finish(self) -> None:
        if self.transport is not None and self.transport.can_write_eof():
            self.transport.write_eof()  # sends what it holds, then FIN

    def reset(self) -> None:
        if self.transport is not None:
            sock = self.transport.get_extra_info("socket")
            if sock is not None:
                reset_socket(sock)
            self.transport.abort()


class AsyncServer(ServingCore[EchoProtocol]):
    """The serving core on an asyncio-family loop."""

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        listeners: Sequence[socket.socket],
        config: Config,
        lifecycle: Lifecycle,
    ) -> None:
        super().__init__(listeners, config, lifecycle)
        self.loop = loop
        self.marks = config.marks
        # One receive buffer for every connection: each read is copied out before the
        # loop can run another (buffer_updated), as the reactor's shared buffer is.
        self.view = memoryview(bytearray(RECEIVE_SIZE))
        self.uvloop = type(loop).__module__.startswith("uvloop")
        self.protocol = EchoProtocol if self.uvloop else BufferedEchoProtocol
        self.finished: asyncio.Future[None] = loop.create_future()
        # Live timers only, for close_loop to cancel: a one-shot leaves when it fires or
        # is cancelled (out of descriptors, the core sets one a back-off second).
        self._timers: set[Repeating | asyncio.TimerHandle] = set()

    def serve(self, label: str) -> None:
        """The core's phases, run inside the loop.

        uvloop handles signals only while its loop runs: a SIGTERM that arrived between
        ``start`` and ``wait`` was remembered but never acted on (4 of 30 starts hung,
        measured with a SIGTERM sent as soon as "listening on" was logged).
        """
        self.loop.run_until_complete(self._serve(label))

    async def serve_here(self, label: str) -> None:
        """The phases on a loop that already runs (the caller's: ``echod.serving``)."""
        await self._serve(label)

    async def _serve(self, label: str) -> None:
        try:
            if self.uvloop:
                await self._open_libuv_spare()
            self.start(label)
            await self.finished
        finally:
            self.close_listeners()
            for conn in list(self.connections):
                conn.close()
            deadline = time.monotonic() + self.settle_timeout
            while self.connections and time.monotonic() < deadline:
                await asyncio.sleep(0.01)  # the aborted transports report connection_lost
            self.stop()

    async def _open_libuv_spare(self) -> None:
        """Have libuv open its own spare descriptor now, not with the first client.

        libuv keeps a descriptor for its EMFILE trick and opens it with the first stream
        handle; since the core accepts, that would be the first client's, and the
        process would hold one descriptor more after it than before (a leak, to anyone
        counting from READY). A throwaway stream on a socket pair opens it at start.
        """
        ours, theirs = socket.socketpair()
        with ours, theirs:
            ours.setblocking(False)
            transport, _ = await self.loop.connect_accepted_socket(asyncio.Protocol, ours)
            transport.abort()
            await asyncio.sleep(0)

    # What the serving core asks of a backend --------------------------------------------
    def handle_signals(self) -> None:
        for signum in HANDLED_SIGNALS:
            self.loop.add_signal_handler(signum, self.on_signal, signum)

    def wait(self) -> None:
        # Only for a caller running the phases one by one; serve() awaits inside the loop.
        self.loop.run_until_complete(self.finished)

    def finish(self) -> None:
        if not self.finished.done():
            self.finished.set_result(None)

    def begin(self, sock: socket.socket) -> EchoProtocol:
        sock.setblocking(False)
        plan = self.fault_plan
        faults = None if plan is None else plan.next_connection()
        conn = (
            self.protocol(self, sock) if faults is None else FaultyEchoProtocol(self, sock, faults)
        )
        conn.starting = self.loop.create_task(self.loop.connect_accepted_socket(lambda: conn, sock))
        conn.starting.add_done_callback(conn.started)
        return conn

    def begin_tls(self, sock: socket.socket, tls: TlsEndpoint) -> EchoProtocol:
        sock.setblocking(False)
        conn = self.protocol(self, sock, tls)
        conn.starting = self.loop.create_task(
            self.loop.connect_accepted_socket(
                lambda: conn,
                sock,
                ssl=tls.context,
                ssl_handshake_timeout=tls.handshake_timeout or None,
            )
        )
        conn.starting.add_done_callback(conn.started)
        return conn

    def watch_listeners(self) -> None:
        for sock in self.listeners:
            self.loop.add_reader(sock.fileno(), self.accept_from, sock)

    def unwatch_listeners(self) -> None:
        for sock in self.listeners:
            self.loop.remove_reader(sock.fileno())

    def watch_readable(self, sock: socket.socket, callback: Callable[[int], None]) -> None:
        # Datagrams are read straight off the socket, as the reactor does: asyncio's
        # datagram transport would queue answers without bound on EAGAIN.
        self.loop.add_reader(sock, callback, 0)

    def unwatch_readable(self, sock: socket.socket) -> None:
        self.loop.remove_reader(sock)

    def call_later(self, delay: float, callback: Callable[[], object]) -> asyncio.TimerHandle:
        def fire() -> None:
            self._timers.discard(timer)
            callback()

        self._timers = {t for t in self._timers if not t.cancelled()}
        timer = self.loop.call_later(delay, fire)
        self._timers.add(timer)
        return timer

    def call_every(self, interval: float, callback: Callable[[], object]) -> Repeating:
        timer = Repeating(self.loop, interval, callback)
        self._timers.add(timer)
        return timer

    def close_loop(self) -> None:
        for signum in HANDLED_SIGNALS if self.lifecycle.signals else ():
            self.loop.remove_signal_handler(signum)
        for timer in self._timers:
            timer.cancel()


def handshake_failure(exc: BaseException | None) -> BaseException:
    """asyncio and uvloop abort a slow handshake with ConnectionAbortedError, saying so."""
    if isinstance(exc, ConnectionAbortedError) and "taking longer" in str(exc):
        return TimeoutError()
    return exc if exc is not None else ConnectionError()


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

    def cancelled(self) -> bool:
        return self._handle.cancelled()
