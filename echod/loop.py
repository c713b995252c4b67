"""echod's own event loop: readiness callbacks, timers, signals and cross-thread calls.

The loop knows nothing of echo: each registered descriptor carries its :class:`Handler`,
whose ``on_event`` is called with the ready mask. A connection registers itself, so an
idle one costs the loop no object of its own, neither a bound method nor a map entry
(``python -m bench.conn_memory`` shows what each cost); a plain callback is wrapped
once in :class:`Call`. How it waits is an IO manager handed in, one class per mechanism
(as trio keeps ``_io_epoll.py`` apart from ``_io_kqueue.py``):

* :class:`PollFamilyIO` owns its kernel object (``select.epoll``, ``select.poll`` or
  ``select.devpoll``) and its own handler table indexed by descriptor (descriptors are
  small and dense: 8 bytes a slot), so a ready descriptor costs one list index and one
  call. ``selectors``' ``select()`` instead rebuilds a list of ``(key, mask)`` tuples
  in Python on every wait; the owned object measured fewer interpreter instructions per
  echoed message (callgrind, see the commit that added it).
* :class:`SelectorIO` goes through the public ``selectors`` API, for ``select(2)``,
  ``kqueue`` and whatever ``selectors.DefaultSelector`` is; ``SelectorKey.data`` holds
  the handler.

Which one runs is logged when serving starts (:meth:`Reactor.describe`). Callbacks get
the raw event bits of the mechanism and must not depend on them (echod's do not).

Signals wake the loop through :class:`~echod.wakeup.WakeupSocketpair`: Python runs the
handler, the byte it writes makes the wait return, and the loop then runs the queued
signal callbacks outside the handler. Other threads hand the loop work the same way
(:meth:`Reactor.call_soon_threadsafe`).
"""

from __future__ import annotations

import heapq
import itertools
import math
import select
import selectors
import signal
import time
from collections import deque
from collections.abc import Callable, Iterable
from types import FrameType
from typing import Any, Protocol

from echod.wakeup import WakeupSocketpair

Callback = Callable[[int], None]

# Wants as the reactor's callers speak them (equal to selectors.EVENT_READ / EVENT_WRITE).
READ = selectors.EVENT_READ
WRITE = selectors.EVENT_WRITE
# Most events taken from the kernel per wait: enough to amortise the syscall, few enough
# that timers and signals are never starved.
MAX_EVENTS = 1024


class Handler(Protocol):
    """What a registered descriptor carries: ``on_event(mask)`` runs when it is ready."""

    def on_event(self, mask: int, /) -> None: ...


class Call:
    """A plain callback as a :class:`Handler` (listeners, the wakeup, datagrams)."""

    __slots__ = ("on_event",)

    def __init__(self, callback: Callback) -> None:
        self.on_event = callback


class IOManager(Protocol):
    """How a reactor waits: register descriptors with handlers, wait, call them."""

    def register(self, fd: int, events: int, handler: Handler) -> None: ...
    def modify(self, fd: int, events: int, handler: Handler) -> None: ...
    def unregister(self, fd: int) -> None: ...
    def run(self, reactor: Reactor) -> None:
        """Wait and dispatch while ``reactor.running``, running its timers between waits."""

    def describe(self) -> str: ...
    def fds(self) -> list[int]:
        """The descriptors it holds (for a forked child to close)."""

    def close(self) -> None: ...


class PollFamilyIO:
    """epoll, poll or /dev/poll, owned directly: no ``selectors`` layer in between."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        # Indexed by descriptor; None where nothing is registered.
        self.handlers: list[Handler | None] = []
        if kind == "epoll":
            self._kernel: Any = select.epoll()
            # READ|WRITE as the kernel spells them; index = wants.
            self._masks = (0, select.EPOLLIN, select.EPOLLOUT, select.EPOLLIN | select.EPOLLOUT)
        else:
            self._kernel = select.poll() if kind == "poll" else select.devpoll()  # type: ignore[attr-defined,unused-ignore]
            self._masks = (0, select.POLLIN, select.POLLOUT, select.POLLIN | select.POLLOUT)

    def register(self, fd: int, events: int, handler: Handler) -> None:
        self._kernel.register(fd, self._masks[events])
        handlers = self.handlers
        if fd >= len(handlers):  # the list's own over-allocation amortises the growth
            handlers.extend([None] * (fd + 1 - len(handlers)))
        handlers[fd] = handler

    def modify(self, fd: int, events: int, handler: Handler) -> None:
        self._kernel.modify(fd, self._masks[events])
        self.handlers[fd] = handler

    def unregister(self, fd: int) -> None:
        if fd >= len(self.handlers) or self.handlers[fd] is None:
            raise KeyError(fd)
        self.handlers[fd] = None
        self._kernel.unregister(fd)

    def run(self, reactor: Reactor) -> None:
        # The per-message path: one kernel call, one list index and one call per ready
        # descriptor, with no Python frame between them (an extra method here measured
        # about 2,000 more interpreter instructions per echoed message under callgrind).
        # The table only grows, and the kernel reports only registered descriptors.
        poll = self._kernel.poll
        handlers = self.handlers
        run_timers = reactor.run_timers
        if self.kind == "epoll":
            while reactor.running:
                timeout = run_timers()
                for fd, events in poll(-1 if timeout is None else timeout, MAX_EVENTS):
                    handler = handlers[fd]
                    if handler is not None:  # unregistered by an earlier handler
                        handler.on_event(events)
            return
        while reactor.running:
            timeout = run_timers()
            # poll(2) and /dev/poll take milliseconds; round up so a timer is never early.
            for fd, events in poll(None if timeout is None else math.ceil(timeout * 1e3)):
                handler = handlers[fd]
                if handler is not None:
                    handler.on_event(events)

    def describe(self) -> str:
        return f"{self.kind} (select.{self.kind} owned by the reactor)"

    def fds(self) -> list[int]:
        return [self._kernel.fileno()] if self.kind != "poll" else []

    def close(self) -> None:
        if self.kind != "poll":  # a poll object holds no descriptor of its own
            self._kernel.close()
        self.handlers.clear()


class SelectorIO:
    """The public ``selectors`` API; each key's ``data`` is its handler."""

    def __init__(self, selector: selectors.BaseSelector) -> None:
        self.selector = selector

    def register(self, fd: int, events: int, handler: Handler) -> None:
        self.selector.register(fd, events, handler)

    def modify(self, fd: int, events: int, handler: Handler) -> None:
        self.selector.modify(fd, events, handler)

    def unregister(self, fd: int) -> None:
        self.selector.unregister(fd)

    def run(self, reactor: Reactor) -> None:
        select = self.selector.select
        run_timers = reactor.run_timers
        while reactor.running:
            for key, mask in select(run_timers()):
                key.data.on_event(mask)

    def describe(self) -> str:
        return f"selectors.{type(self.selector).__name__} (public selectors API)"

    def fds(self) -> list[int]:
        fd = self.selector.fileno() if hasattr(self.selector, "fileno") else -1
        return [fd] if fd >= 0 else []

    def close(self) -> None:
        self.selector.close()


class Timer:
    """A pending call; cancelling leaves it in the heap to be skipped (O(1))."""

    __slots__ = ("callback", "cancelled", "when")

    def __init__(self, when: float, callback: Callable[[], object]) -> None:
        self.when = when
        self.callback = callback
        self.cancelled = False

    def cancel(self) -> None:
        self.cancelled = True


class Listening:
    """Listening sockets on a reactor, watched or not as one group.

    Accepting pauses (a connection cap, out of descriptors) and ends (drain) by turning
    the group off; the sockets stay open until their owner closes them.
    """

    def __init__(
        self,
        reactor: Reactor,
        sockets: Iterable[Any],
        on_acceptable: Callable[[Any], object],
    ) -> None:
        self.reactor = reactor
        self.sockets = list(sockets)
        self.on_acceptable = on_acceptable
        self.active = False

    def start(self) -> None:
        if self.active:
            return
        self.active = True
        for sock in self.sockets:
            self.reactor.add(sock.fileno(), READ, self._callback(sock))

    def stop(self) -> None:
        if not self.active:
            return
        self.active = False
        for sock in self.sockets:
            self.reactor.remove(sock.fileno())

    def _callback(self, sock: Any) -> Callback:
        def on_ready(mask: int) -> None:
            self.on_acceptable(sock)

        return on_ready


class Reactor:
    """A single-threaded loop: readiness callbacks, timers, signals, cross-thread calls."""

    def __init__(self, io: IOManager) -> None:
        self.io = io
        self._timers: list[tuple[float, int, Timer]] = []
        self._sequence = itertools.count()
        self.running = False
        self._signals: deque[int] = deque()
        self._signal_callback: Callable[[int], None] | None = None
        self._previous_handlers: dict[int, Any] = {}
        self._calls: deque[Callable[[], object]] = deque()
        self._wakeup_pending = False
        self.wakeup = WakeupSocketpair()
        self.io.register(self.wakeup.fileno(), READ, Call(self._on_wakeup))

    def describe(self) -> str:
        """Which IO path this reactor waits on (logged at start)."""
        return self.io.describe()

    def fds(self) -> list[int]:
        """Every descriptor the loop holds, for a forked child to close plainly."""
        return [*self.io.fds(), self.wakeup.wakeup_sock.fileno(), self.wakeup.write_sock.fileno()]

    # Registration ----------------------------------------------------------------------
    def add(self, fd: int, events: int, callback: Callback) -> None:
        self.io.register(fd, events, Call(callback))

    def change(self, fd: int, events: int, callback: Callback) -> None:
        self.io.modify(fd, events, Call(callback))

    def add_handler(self, fd: int, events: int, handler: Handler) -> None:
        """Register ``handler`` itself (a connection): nothing is allocated for it."""
        self.io.register(fd, events, handler)

    def change_handler(self, fd: int, events: int, handler: Handler) -> None:
        self.io.modify(fd, events, handler)

    def remove(self, fd: int) -> None:
        self.io.unregister(fd)

    # Timers ----------------------------------------------------------------------------
    def call_later(self, delay: float, callback: Callable[[], object]) -> Timer:
        timer = Timer(time.monotonic() + delay, callback)
        heapq.heappush(self._timers, (timer.when, next(self._sequence), timer))
        return timer

    def call_every(self, interval: float, callback: Callable[[], object]) -> Timer:
        """Repeat ``callback``; cancelling the returned timer stops the repetition."""
        handle = Timer(0.0, callback)

        def tick() -> None:
            if handle.cancelled:
                return
            callback()
            handle.when = self.call_later(interval, tick).when

        handle.when = self.call_later(interval, tick).when
        return handle

    def run_timers(self) -> float | None:
        """Run due timers; return seconds until the next one (None: no timers)."""
        timers = self._timers
        now = time.monotonic()
        while timers:
            when, _, timer = timers[0]
            if timer.cancelled:
                heapq.heappop(timers)
                continue
            if when > now:
                return when - now
            heapq.heappop(timers)
            timer.callback()
            now = time.monotonic()
        return None

    # Other threads ---------------------------------------------------------------------
    def call_soon_threadsafe(self, callback: Callable[[], object]) -> None:
        """Run ``callback`` in the loop's thread; callable from any thread."""
        self._calls.append(callback)  # deque.append is atomic
        # One wakeup for a burst of calls: when thousands of threads end at once, each
        # write would be one more system call that hands the GIL round.
        if not self._wakeup_pending:
            self._wakeup_pending = True
            self.wakeup.wakeup()

    def run_pending_calls(self) -> None:
        """Run what other threads handed over (also used after the loop has stopped)."""
        self._wakeup_pending = False  # before taking calls: a later one wakes us again
        calls = self._calls
        while calls:
            calls.popleft()()

    # Signals ---------------------------------------------------------------------------
    def handle_signals(self, signums: Iterable[int], callback: Callable[[int], None]) -> None:
        """Call ``callback(signum)`` from the loop (not the handler) for each signal."""
        self._signal_callback = callback
        self.wakeup.wakeup_on_signals()
        for signum in signums:
            self._previous_handlers[signum] = signal.signal(signum, self._on_signal)

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        self._signals.append(signum)

    def _on_wakeup(self, mask: int) -> None:
        self.wakeup.drain()
        self.run_pending_calls()
        while self._signals and self._signal_callback:
            self._signal_callback(self._signals.popleft())

    # Running ---------------------------------------------------------------------------
    def run(self) -> None:
        """Dispatch until :meth:`stop`."""
        self.running = True
        self.io.run(self)

    def stop(self) -> None:
        self.running = False
        # Called from a timer, the loop would otherwise go on to wait, perhaps forever.
        self.wakeup.wakeup()

    def close(self) -> None:
        for signum, handler in self._previous_handlers.items():
            signal.signal(signum, handler)
        self._previous_handlers.clear()
        self.io.unregister(self.wakeup.fileno())
        self.io.close()
        self.wakeup.close()


def io_manager(kind: str) -> IOManager:
    """The IO manager for a reactor backend: an owned kernel object or a selector class.

    ``kind`` is ``epoll``, ``poll`` or ``devpoll`` for the poll family, otherwise the
    name of a ``selectors`` class.
    """
    if kind in ("epoll", "poll", "devpoll"):
        return PollFamilyIO(kind)
    selector: selectors.BaseSelector = getattr(selectors, kind)()
    return SelectorIO(selector)
