"""echod inside another program: :func:`running` (a thread) and :func:`serving` (a loop).

An embedded server is the command line's single serving process without what belongs
to a whole process: no signal handlers (the host owns them, and they work only in the
main thread), no ``RLIMIT_NOFILE`` change, no logging handlers (it logs to the ``echod``
logger), no fork. It is served by the same steps as that process
(:func:`echod.service.worker_process.serve` over sockets from
:func:`echod.net.listener_set.open_listeners`), and it is stopped as a supervisor stops
a worker: a ``DRAIN`` on its :mod:`~echod.service.channel`, answered on the server's own
loop, so no other thread touches its state. Counters cross the same channel
(``COLLECT``), so they are the loop's own, brought up to date on the loop.

The stability promise is in docs/api.md.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import select
import socket
import threading
import time
import traceback
from collections.abc import AsyncIterator, Iterator, Sequence
from dataclasses import fields
from typing import TYPE_CHECKING, Any

from echod import backends
from echod.backends.base import Backend
from echod.config import Config, ConfigError, fault_spec
from echod.faults import Fault
from echod.lifecycle import Lifecycle, Stats
from echod.net.listener_set import Listeners, open_listeners
from echod.net.listeners import describe
from echod.service import channel, worker_process
from echod.service.channel import Channel, Message
from echod.tls import TlsEndpoint

if TYPE_CHECKING:
    from echod.backends.aio import AsyncServer

log = logging.getLogger("echod")

# A drained connection quiet this long is closed: short, so that a test's teardown with
# an idle client costs no second (the daemon waits 1 s).
DRAIN_QUIET = 0.05
GRACEFUL_TIMEOUT = 5.0
START_TIMEOUT = 30.0  # seconds for a server to be ready (a cold uvloop import, a busy CI)
# Settings that belong to a whole process or to a supervisor: an embedded server is
# neither (its logging is the host's, through the ``echod`` logger).
PROCESS_SETTINGS = frozenset(
    {"workers", "listen_mode", "metrics", "user", "group", "log_level", "log_format"}
)
# Ids of the requests sent to embedded servers: an answer repeats its request's id.
_requests = itertools.count(1)


class ServerError(RuntimeError):
    """An embedded server failed: its thread or task raised, or it did not stop in time.

    The server's own exception is the ``__cause__``, and its traceback is in the message.
    """


def build_config(
    listen: Sequence[str],
    backend: str | None,
    faults: Sequence[str | Fault],
    every: int,
    options: dict[str, Any],
) -> Config:
    """The :class:`~echod.config.Config` an embedded server runs with.

    ``options`` are other settings by their option name (``high_water=1024``), as typed
    values; one meant for a whole process is refused. Raises ConfigError.
    """
    known = {field.name for field in fields(Config)} - {"listen", "backend", "host", "port"}
    for name in options:
        if name in PROCESS_SETTINGS:
            raise ConfigError(
                f"{name} is a setting of the echod process; an embedded server has none"
            )
        if name not in known:
            raise ConfigError(f"unknown setting {name!r}")
    if isinstance(listen, str):
        listen = [listen]
    if isinstance(faults, str):
        faults = [faults]
    if every < 1:
        raise ConfigError(f"every must be at least 1, not {every}")
    options.setdefault("graceful_timeout", GRACEFUL_TIMEOUT)
    return Config(
        listen=tuple(listen),
        backend=backend,
        fault=tuple(fault_spec(text) if isinstance(text, str) else text for text in faults),
        fault_every=every,
        **options,
    )


class _Events:
    """The notifier an embedded server reports to: only its readiness matters."""

    def __init__(self) -> None:
        self.is_ready = threading.Event()

    def ready(self, status: str | None = None) -> None:
        self.is_ready.set()

    def status(self, text: str) -> None:
        pass

    def watchdog(self) -> None:
        pass

    def stopping(self) -> None:
        pass


class EchoServer:
    """An echo server serving in this process: where it listens, what it did, ``close``.

    Made by :func:`running` (:class:`ThreadedEchoServer`) or :func:`serving`
    (:class:`AsyncEchoServer`); its loop runs in a thread of its own or as a task on
    the caller's loop.
    """

    def __init__(
        self, backend: Backend, config: Config, listeners: Listeners, drain_quiet: float
    ) -> None:
        self.backend = backend.name
        self.config = config
        self._backend = backend
        self._listeners = listeners
        sockets = listeners.for_slot(None)
        #: Every address served, as ``--listen`` spells it, port 0 resolved.
        self.addresses: tuple[str, ...] = tuple(describe(sock) for sock in sockets)
        #: Socket addresses of the stream listeners (TCP, TLS, Unix), in ``listen`` order.
        self.tcp: tuple[Any, ...] = tuple(
            sock.getsockname() for sock in sockets if sock.type == socket.SOCK_STREAM
        )
        #: Socket addresses of the UDP listeners.
        self.udp: tuple[Any, ...] = tuple(
            sock.getsockname() for sock in sockets if sock.type == socket.SOCK_DGRAM
        )
        self._events = _Events()
        self._ours, theirs = Channel.pair()
        self._stats = Stats()
        self._control = worker_process.WorkerChannel(theirs, self._stats)
        self._lifecycle = Lifecycle(
            self._stats, self._events, control=self._control, signals=False, drain_quiet=drain_quiet
        )
        self._failure: BaseException | None = None
        self._closed = False
        self._thread: threading.Thread | None = None
        self._task: asyncio.Task[None] | None = None

    @property
    def address(self) -> Any:
        """The first stream listener's socket address: ``(host, port)`` for TCP."""
        if not self.tcp:
            raise LookupError("this server has no TCP, TLS or Unix listener")
        return self.tcp[0]

    @property
    def udp_address(self) -> Any:
        """The first UDP listener's ``(host, port)``."""
        if not self.udp:
            raise LookupError("this server has no udp: listener")
        return self.udp[0]

    @property
    def host(self) -> str:
        return str(self.address[0])

    @property
    def port(self) -> int:
        return int(self.address[1])

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def thread(self) -> threading.Thread | None:
        """The thread serving, or None on the caller's loop."""
        return self._thread

    def stats(self, timeout: float = 5.0) -> Stats:
        """A snapshot of the counters, taken on the server's loop (``COLLECT``); once
        the server has stopped, its final counters."""
        if self._task is not None and not self._task.done():
            # The caller's thread is the server's: its counters are consistent as they
            # are (asyncio's are kept up to date per message).
            return _copy(self._stats)
        if self._closed or not self._alive():
            return _copy(self._stats)
        request = next(_requests)
        self._ours.send(Message(channel.COLLECT, request))
        deadline = time.monotonic() + timeout
        while True:
            answer = self._answer(request, deadline)
            if answer is not None:
                return answer
            if not self._alive():
                self._raise_failure()
                return _copy(self._stats)
            if time.monotonic() >= deadline:
                raise ServerError(f"echod server did not answer for its counters in {timeout:g}s")

    def _answer(self, request: int, deadline: float) -> Stats | None:
        wait = min(max(deadline - time.monotonic(), 0.0), 0.1)
        readable, _, _ = select.select([self._ours.sock], [], [], wait)
        if not readable:
            return None
        for message in self._ours.receive() or ():
            if message.kind == channel.STATS and message.id == request:
                return Stats.decode(message.body)
        return None

    # The server's own thread -----------------------------------------------------------
    def _start_thread(self) -> None:
        self._thread = threading.Thread(
            target=self._run, name=f"echod-{self.backend}-{self.addresses[0]}", daemon=True
        )
        self._thread.start()

    def _run(self) -> None:
        try:
            worker_process.serve(
                self._backend, self.config, self._listeners.for_slot(None), self._lifecycle
            )
        except BaseException as exc:  # the host hears of it from start() or close()
            self._failure = exc
            log.error("embedded echod server failed: %s", exc)
        finally:
            self._events.is_ready.set()  # a start() that waits learns it failed

    def _alive(self) -> bool:
        if self._thread is not None:
            return self._thread.is_alive()
        return self._task is not None and not self._task.done()

    def _drain(self) -> None:
        """Ask the server's loop to drain, as a supervisor asks a worker."""
        self._ours.send(Message(channel.DRAIN, next(_requests)))

    def _close_limit(self, timeout: float | None) -> float:
        return self.config.graceful_timeout + 10.0 if timeout is None else timeout

    def _finished(self, limit: float) -> None:
        self._release()
        if self._alive():
            raise ServerError(f"echod server still running {limit:g}s after close()")
        self._raise_failure()

    def _raise_failure(self) -> None:
        failure = self._failure
        if failure is not None:
            self._failure = None  # raised once: a second close is quiet
            text = "".join(traceback.format_exception(failure))
            raise ServerError(f"the echod server failed:\n{text}") from failure

    def _release(self) -> None:
        self._ours.close()
        self._control.sock.close()
        self._listeners.close()

    def __repr__(self) -> str:
        state = "closed" if self._closed else "serving"
        return f"<{type(self).__name__} {self.backend} {' '.join(self.addresses)} {state}>"


class ThreadedEchoServer(EchoServer):
    """An embedded server whose loop runs in a thread of its own (:func:`running`)."""

    def start(self, timeout: float = START_TIMEOUT) -> None:
        self._start_thread()
        ready = self._events.is_ready.wait(timeout)
        if not ready or not self._alive():
            self.close(timeout=5.0)
            raise ServerError(f"echod server not ready in {timeout:g}s")

    def close(self, timeout: float | None = None) -> None:
        """Drain as SIGTERM does: stop accepting, let open connections finish (up to
        ``graceful_timeout``; quiet ones are closed after ``drain_quiet``), then stop.
        Joins the thread; raises :class:`ServerError` if the server failed."""
        if self._closed:
            self._raise_failure()
            return
        self._closed = True
        limit = self._close_limit(timeout)
        self._drain()
        if self._thread is not None:
            self._thread.join(limit)
        self._finished(limit)

    def __enter__(self) -> ThreadedEchoServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class AsyncEchoServer(EchoServer):
    """An embedded server on the caller's running loop, or in a thread (:func:`serving`)."""

    def __init__(
        self,
        backend: Backend,
        config: Config,
        listeners: Listeners,
        drain_quiet: float,
        loop: asyncio.AbstractEventLoop | None,
    ) -> None:
        super().__init__(backend, config, listeners, drain_quiet)
        self._loop = loop  # None: a thread serves it

    async def start(self, timeout: float = START_TIMEOUT) -> None:
        if self._loop is None:
            self._start_thread()
        else:
            from echod.backends.aio import AsyncServer

            core = AsyncServer(
                self._loop, self._listeners.for_slot(None), self.config, self._lifecycle
            )
            self._task = self._loop.create_task(self._serve_here(core))
        deadline = time.monotonic() + timeout
        while not self._events.is_ready.is_set() and self._alive():
            if time.monotonic() > deadline:
                break
            await asyncio.sleep(0.002)
        if not self._events.is_ready.is_set() or not self._alive():
            await self.close(timeout=5.0)
            raise ServerError(f"echod server not ready in {timeout:g}s")

    async def _serve_here(self, core: AsyncServer) -> None:
        try:
            await core.serve_here(self.backend)
        except BaseException as exc:
            self._failure = exc
            log.error("embedded echod server failed: %s", exc)
        finally:
            for sock in self._listeners.for_slot(None):
                sock.close()

    async def close(self, timeout: float | None = None) -> None:
        """As :meth:`ThreadedEchoServer.close`, without blocking the caller's loop."""
        if self._closed:
            self._raise_failure()
            return
        self._closed = True
        limit = self._close_limit(timeout)
        self._drain()
        if self._task is not None:
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(asyncio.shield(self._task), limit)
        elif self._thread is not None:
            deadline = time.monotonic() + limit
            while self._thread.is_alive() and time.monotonic() < deadline:
                await asyncio.sleep(0.005)
            self._thread.join(0)
        self._finished(limit)

    async def __aenter__(self) -> AsyncEchoServer:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()


def prepare(
    listen: Sequence[str],
    backend: str | None,
    faults: Sequence[str | Fault],
    every: int,
    options: dict[str, Any],
) -> tuple[Backend, Config, Listeners]:
    """Settings, backend and bound listeners, checked as the command line checks them."""
    config = build_config(listen, backend, faults, every, options)
    chosen = backends.load(config.backend or backends.default_name())
    tls = TlsEndpoint.from_config(config)
    listeners, _ = open_listeners(config.addresses, config.backlog, tls=tls)
    try:
        worker_process.check_serving(chosen, listeners, config)
    except BaseException:
        listeners.close()
        raise
    return chosen, config, listeners


@contextlib.contextmanager
def running(
    listen: Sequence[str] = ("127.0.0.1:0",),
    *,
    backend: str | None = None,
    faults: Sequence[str | Fault] = (),
    every: int = 1,
    drain_quiet: float = DRAIN_QUIET,
    **options: Any,
) -> Iterator[ThreadedEchoServer]:
    """Serve in a background thread while the ``with`` block runs; drain on leaving it.

    ``listen`` takes ``--listen`` addresses (``"127.0.0.1:0"``, ``"udp:127.0.0.1:0"``,
    ``"unix:/path"``, ``"tls:127.0.0.1:0"`` with ``tls_cert=``); ``backend`` a name
    from ``echod --list-backends`` (default: the best selector here); ``faults`` fault
    specs (docs/api.md), applied to the first of every ``every`` connections; other
    settings by option name (``high_water=1024``, ``graceful_timeout=2.0``).
    Raises ConfigError for a bad setting, ListenerError for an address that cannot be
    bound, BackendUnavailable for a backend not here.
    """
    server = ThreadedEchoServer(*prepare(listen, backend, faults, every, options), drain_quiet)
    server.start()
    try:
        yield server
    finally:
        server.close()


@contextlib.asynccontextmanager
async def serving(
    listen: Sequence[str] = ("127.0.0.1:0",),
    *,
    backend: str | None = None,
    faults: Sequence[str | Fault] = (),
    every: int = 1,
    drain_quiet: float = DRAIN_QUIET,
    **options: Any,
) -> AsyncIterator[AsyncEchoServer]:
    """As :func:`running`, from async code. With no ``backend``, or one naming the
    running loop's kind (``asyncio``, or ``uvloop`` on a uvloop loop), the server
    serves on the running loop itself, with no thread; any other backend serves in a
    thread of its own, and closing it never blocks the loop."""
    loop = asyncio.get_running_loop()
    here = "uvloop" if type(loop).__module__.startswith("uvloop") else "asyncio"
    chosen, config, listeners = prepare(listen, backend or here, faults, every, options)
    on_loop = loop if chosen.name == here else None
    server = AsyncEchoServer(chosen, config, listeners, drain_quiet, on_loop)
    await server.start()
    try:
        yield server
    finally:
        await server.close()


def _copy(stats: Stats) -> Stats:
    copy = Stats.decode(stats.encode())
    copy.started = stats.started
    return copy


__all__ = [
    "AsyncEchoServer",
    "EchoServer",
    "ServerError",
    "ThreadedEchoServer",
    "running",
    "serving",
]
