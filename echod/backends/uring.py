"""The completion-based backend: io_uring, through the thin ring in ``echod/_uring.c``.

Readiness backends are told that a socket may be read and then read it; here the
kernel is asked to read, and says when it has. Per echoed read there is one completion
and no system call of its own: the receive completes, the serving core
(:meth:`~echod.backends.serving.ServingCore.receive_completed`) submits a send from the
same buffer linked to the next receive, and the loop's next wait submits both. The
send posts a completion only if it fails or falls short
(:meth:`~echod.backends.serving.ServingCore.send_completed`).

* **Accept**: one multishot accept per listener; EMFILE arrives as a completion and
  ends it, and the serving core sheds the waiting clients as it does on readiness.
  A cancelled accept can still complete with a client: a drain serves it, and ends
  only after each accept's last completion. The kernel wakes one accept per client
  (exclusively), so a wake-up this accept took just before its cancel is nobody
  else's: the drain keeps the listener open until then and takes what is queued.
* **Buffers**: one receive buffer per connection (a slot in an arena that costs memory
  only for the pages its reads touch). A provided buffer ring was measured against it
  (docs/uring.md): a ring buffer is free only once its send's completion says so, a
  second completion through Python per message, and it cost more CPU per message in
  every cell; its memory is the whole ring, since the kernel takes buffers in ring
  order, which is less only when thousands of connections have each been read.
* **Close**: every request on the socket is cancelled, then the descriptor closed; the
  buffer slot is reused only once the cancel has completed.
* **Timers, signals, datagrams**: the :class:`~echod.loop.Reactor` runs on
  this IO manager as on epoll: its wakeup socket, and any UDP listener, are watched
  with a multishot poll on the ring (datagrams are then read with ``recvfrom``).
"""

from __future__ import annotations

import errno
import itertools
import logging
import resource
import select
import socket
from collections.abc import Callable, Sequence
from functools import partial
from typing import TYPE_CHECKING

from echod.backends.base import EXHAUSTED, RECEIVE_SIZE
from echod.backends.on_reactor import ReactorServingCore
from echod.config import Config
from echod.lifecycle import Lifecycle
from echod.loop import Handler, Reactor

if TYPE_CHECKING:
    from echod._uring import Ring

log = logging.getLogger("echod")

# user_data = tag << 2 | op (the ops of echod/_uring.c, and WATCH for polls and accepts).
RECEIVE, SEND, CANCEL, WATCH = 0, 1, 2, 3
CQE_F_MORE = 2  # IORING_CQE_F_MORE: a multishot request goes on
SUBMISSION_ENTRIES = 4096
# The kernel's ceiling for the CQ ring (IORING_MAX_CQ_ENTRIES).
MAX_CQ_ENTRIES = 65536

Completed = Callable[[int, int], None]


def unavailable() -> str | None:
    """Why the uring backend cannot run here, or None: a ring is set up to find out.

    io_uring can be missing from the build (no liburing when echod was installed),
    from the kernel, or refused by ``kernel.io_uring_disabled`` or a seccomp profile
    (Docker's default answers EPERM).
    """
    try:
        from echod._uring import Ring
    except ImportError:
        return "echod was built without liburing (install liburing-dev, then reinstall echod)"
    try:
        Ring(8, 16).close()
    except OSError as exc:
        if exc.errno == errno.ENOSYS:
            return "this kernel has no io_uring"
        if exc.errno == errno.EPERM:
            return f"io_uring is refused here ({_refused_by()})"
        return f"io_uring cannot be set up: {exc.strerror or exc}"
    return None


def _refused_by() -> str:
    try:
        with open("/proc/sys/kernel/io_uring_disabled") as file:
            disabled = file.read().strip()
    except OSError:
        disabled = ""
    if disabled not in ("", "0"):
        return f"kernel.io_uring_disabled = {disabled}"
    return "EPERM: a seccomp filter or io_uring_group"


def cq_entries_for(connections: int) -> int:
    """Room for a completion per connection twice over (its receive or failed send,
    and its cancel), and accepts; the kernel rounds up to a power of two."""
    return min(MAX_CQ_ENTRIES, max(4096, 2 * connections + 1024))


class UringIO:
    """A reactor's IO manager on an io_uring: completions dispatched by user_data.

    Readiness callbacks (the reactor's wakeup socket, UDP listeners) are multishot
    polls; everything else registers a completion callback under its own tag.
    """

    def __init__(self, ring: Ring) -> None:
        self.ring = ring
        self.callbacks: dict[int, Completed] = {}
        self._polls: dict[int, int] = {}  # fd → user_data of its poll
        self._tags = itertools.count(1)
        self._overflow = 0
        self._closed = False

    def tag(self) -> int:
        return next(self._tags)

    # Readiness, for the reactor ---------------------------------------------------------
    def register(self, fd: int, events: int, handler: Handler) -> None:
        user_data = self.tag() << 2 | WATCH
        self._polls[fd] = user_data

        def polled(result: int, flags: int) -> None:
            if result >= 0:
                handler.on_event(result)
            if not flags & CQE_F_MORE and self._polls.get(fd) == user_data:
                self.ring.poll_multishot(fd, user_data)  # the kernel ended it: again

        self.callbacks[user_data] = polled
        self.ring.poll_multishot(fd, user_data)

    def modify(self, fd: int, events: int, handler: Handler) -> None:
        self.unregister(fd)
        self.register(fd, events, handler)

    def unregister(self, fd: int) -> None:
        user_data = self._polls.pop(fd)
        del self.callbacks[user_data]
        self.ring.cancel(user_data)

    def run(self, reactor: Reactor) -> None:
        # The per-message path: one wait per batch, then one dict lookup and one call per
        # completion, as PollFamilyIO does per ready descriptor.
        wait = self.ring.wait
        get = self.callbacks.get
        run_timers = reactor.run_timers
        while reactor.running:
            timeout = run_timers()
            for user_data, result, flags in wait(-1.0 if timeout is None else timeout):
                callback = get(user_data)
                if callback is not None:  # a closed connection's late completion
                    callback(result, flags)

    def overflowed(self) -> int:
        """Completions that found the CQ ring full since the last call (kept, not lost)."""
        if self._closed:
            return 0
        total = self.ring.overflow
        new, self._overflow = total - self._overflow, total
        return new

    def fds(self) -> list[int]:
        """None to name: only a supervisor forks from its loop, and it never runs on a ring."""
        return []

    def describe(self) -> str:
        return (
            f"io_uring (echod._uring over liburing; SQ {self.ring.sq_entries}, "
            f"CQ {self.ring.cq_entries} entries; multishot accept, send linked to receive)"
        )

    def close(self) -> None:
        self._closed = True
        self.ring.close()
        self.callbacks.clear()


class Connection:
    """An accepted socket served by completions; the serving core decides what it does."""

    __slots__ = (
        "echo",
        "fd",
        "idle_ticks",
        "in_flight",
        "offset",
        "receive",
        "server",
        "slot",
        "sock",
        "tag",
    )

    def __init__(self, sock: socket.socket, server: UringServer, slot: int, tag: int) -> None:
        self.sock = sock
        self.fd = sock.fileno()
        self.server = server
        self.slot = slot
        self.tag = tag
        self.idle_ticks = 0
        self.in_flight = 0
        self.offset = 0
        ring = server.ring
        # The submissions bound once: the hot path calls C with no Python frame between.
        self.echo: Callable[[int, int], None] = partial(ring.echo, self.fd, slot, tag)
        self.receive: Callable[[], None] = partial(ring.receive, self.fd, slot, tag)

    def has_pending(self) -> bool:
        """An echo not yet known to be sent: the next receive completion would say so;
        until then, a socket that takes no output means its send still waits."""
        return self.in_flight > 0 and not _writable(self.fd)

    def fileno(self) -> int:
        return self.fd

    def close(self) -> None:
        if self.fd >= 0:
            self.server.forget(self, in_flight=True)
            self.fd = -1

    def end(self) -> None:
        if self.fd >= 0:
            self.server.forget(self, in_flight=False)
            self.fd = -1


def _writable(fd: int) -> bool:
    poller = select.poll()
    poller.register(fd, select.POLLOUT)
    return bool(poller.poll(0))


class UringServer(ReactorServingCore[Connection]):
    """The serving core on a ring: completions in, submissions out."""

    def __init__(
        self,
        reactor: Reactor,
        io: UringIO,
        listeners: Sequence[socket.socket],
        config: Config,
        lifecycle: Lifecycle,
    ) -> None:
        super().__init__(reactor, listeners, config, lifecycle)
        self.io = io
        self.ring = io.ring
        self.callbacks = io.callbacks
        self._free_slots: list[int] = []
        self._slots = 0
        self._accepts: dict[int, socket.socket] = {}  # user_data → listener, while armed
        # Accepts (and their polls) not yet completed for good, and their listeners.
        self._live: dict[int, socket.socket] = {}

    # Listeners --------------------------------------------------------------------------
    def watch_listeners(self) -> None:
        for listener in self.listeners:
            user_data = self.io.tag() << 2 | WATCH
            self._accepts[user_data] = listener
            self._live[user_data] = listener
            self.callbacks[user_data] = partial(self._accepted, listener, user_data)
            self.ring.accept_multishot(listener.fileno(), user_data)

    def unwatch_listeners(self) -> None:
        # The callbacks stay until each accept's last completion: a descriptor the
        # kernel accepted meanwhile still reaches the serving core.
        for user_data in self._accepts:
            self.ring.cancel(user_data)
        self._accepts.clear()

    def _accepted(self, listener: socket.socket, user_data: int, result: int, flags: int) -> None:
        if result != -errno.ECANCELED:  # unwatched
            self.accept_completed(listener, result)
        if flags & CQE_F_MORE:
            return
        # Ended: cancelled, or an error (EMFILE) ended it. Armed again if still wanted.
        if user_data not in self._accepts or self.listeners_closed:
            self._ended(user_data)
        elif -result in EXHAUSTED:
            # An accept takes a descriptor before it looks for a client: armed again
            # now, it would fail at once, and again, a spin. It waits for a client.
            self.callbacks[user_data] = partial(self._client_waits, listener, user_data)
            self.ring.poll_once(listener.fileno(), user_data)
        else:
            self.ring.accept_multishot(listener.fileno(), user_data)

    def _client_waits(
        self, listener: socket.socket, user_data: int, result: int, flags: int
    ) -> None:
        if user_data not in self._accepts or self.listeners_closed:
            self._ended(user_data)
            return
        self.callbacks[user_data] = partial(self._accepted, listener, user_data)
        self.ring.accept_multishot(listener.fileno(), user_data)

    def _ended(self, user_data: int) -> None:
        self.callbacks.pop(user_data, None)
        listener = self._live.pop(user_data, None)
        if listener is not None and self.listeners_closed:
            self._last_look(listener)
        if not self._live:
            self.finish_if_drained()

    def close_listener(self, sock: socket.socket) -> None:
        if sock not in self._live.values():
            sock.close()
        # Else closed once its accept has ended, after a last look at its queue.

    def _last_look(self, listener: socket.socket) -> None:
        """Serve the clients left queued when a cancel ended an accept, then close.

        The kernel wakes one accept per arriving client (io_uring's accept waits are
        exclusive, as ``EPOLLEXCLUSIVE``), the oldest first. A client whose wake-up
        reached this accept just before its cancel stays queued, and the new
        generation's accept on the shared socket is never told: it waits for the next
        client, which on a quiet server may never come (a lone client hung through 1
        of 3 runs of 20 reloads). Once this accept has ended, every new client wakes
        the others; what came before is here to take.
        """
        if listener.fileno() < 0 or listener in self._live.values():
            return  # another accept on it is still to end: the last one looks
        tcp = listener.family != socket.AF_UNIX
        while self.accept_one(listener, tcp):
            pass
        listener.close()

    def accepts_settled(self) -> bool:
        return not self._live

    # Connections ------------------------------------------------------------------------
    def begin(self, sock: socket.socket) -> Connection:
        slot = self._free_slots.pop() if self._free_slots else self._next_slot()
        conn = Connection(sock, self, slot, self.io.tag())
        base = conn.tag << 2
        self.callbacks[base | RECEIVE] = partial(self.receive_completed, conn)
        self.callbacks[base | SEND] = partial(self.send_completed, conn)
        conn.receive()
        return conn

    def _next_slot(self) -> int:
        self._slots += 1
        return self._slots - 1

    def forget(self, conn: Connection, in_flight: bool) -> None:
        base = conn.tag << 2
        del self.callbacks[base | RECEIVE], self.callbacks[base | SEND]
        if in_flight:
            # Cancelled before the descriptor closes (a request holds the socket open
            # and would go on); the slot waits for the cancel to complete.
            self.callbacks[base | CANCEL] = partial(self._cancelled, conn.slot, base | CANCEL)
            self.ring.cancel_fd(conn.fd, conn.tag)
        else:
            self._free_slots.append(conn.slot)
        conn.sock.close()
        self.release(conn)

    def _cancelled(self, slot: int, user_data: int, result: int, flags: int) -> None:
        del self.callbacks[user_data]
        if result == -errno.EALREADY:  # running in a kernel worker: may still touch it
            log.debug("buffer slot %d retired: its cancelled request was running", slot)
            return
        self._free_slots.append(slot)

    # Datagrams: readiness through a multishot poll on the ring --------------------------
    def watch_readable(self, sock: socket.socket, callback: Callable[[int], None]) -> None:
        self.reactor.add(sock.fileno(), 1, callback)

    def unwatch_readable(self, sock: socket.socket) -> None:
        self.reactor.remove(sock.fileno())

    def refresh_stats(self) -> None:
        overflowed = self.io.overflowed()
        if overflowed:
            log.warning(
                "io_uring completion ring overflowed %d time(s) (CQ %d entries for %d "
                "connections): completions waited in the kernel",
                overflowed,
                self.ring.cq_entries,
                len(self.connections),
            )


class UringBackend:
    name = "uring"

    def serve(
        self, listeners: Sequence[socket.socket], config: Config, lifecycle: Lifecycle
    ) -> None:
        from echod._uring import Ring

        connections = config.max_connections or resource.getrlimit(resource.RLIMIT_NOFILE)[0]
        ring = Ring(SUBMISSION_ENTRIES, cq_entries_for(connections), RECEIVE_SIZE)
        io = UringIO(ring)
        reactor = Reactor(io)
        UringServer(reactor, io, listeners, config, lifecycle).serve(self.name)


URING = UringBackend()
