"""The uring backend receiving into a provided buffer ring instead of per-connection
buffers: the hidden backend ``uring-ring``, kept to measure the two against each other
(docs/uring.md, "Provided buffers or per-connection buffers").

A receive names no buffer (``IOSQE_BUFFER_SELECT``): the kernel picks one from the ring
when data arrives, so an idle connection holds none. The send from it posts its
completion, and that completion hands the buffer back as it arms the next receive.
The serving core's completion entry points drive it as they drive ``uring``; only the
buffers differ.

* **Ring size**: :data:`RING_BUFFERS` buffers of one page each, mapped with
  ``MAP_NORESERVE``. The kernel takes buffers in ring order, so traffic soon touches
  every one: the ring's resident memory is its whole size (16 MiB), whatever the
  connection count, and a page per buffer keeps that small (64 KiB buffers grew the
  server 82 MiB under the contract suite's 20 non-reading clients). A connection holds
  a buffer only from its receive's completion to its send's, so the ring runs dry only
  when that many sends wait at once: clients that do not read, or one loop batch of
  more receives than buffers.
* **Dry** (``ENOBUFS``): the connection waits in :attr:`RingServer.waiting` and is armed
  again, one per buffer handed back: no byte is lost (the data stays in the socket) and
  nothing is retried until a buffer is free, so nothing spins.
* **Close**: a held buffer goes back once the cancel completes (a send may still read
  it); a receive that completed with a buffer after its connection was forgotten hands
  it back from its late completion.
"""

from __future__ import annotations

import errno
import logging
import os
import resource
import socket
from collections import deque
from collections.abc import Sequence
from functools import partial

from echod.backends.base import RECEIVE_SIZE
from echod.backends.uring import (
    CANCEL,
    RECEIVE,
    SEND,
    SUBMISSION_ENTRIES,
    Connection,
    UringIO,
    UringServer,
    cq_entries_for,
)
from echod.config import Config
from echod.lifecycle import Lifecycle
from echod.loop import Reactor

log = logging.getLogger("echod")

RING_BUFFERS = 4096
RING_BUFFER_SIZE = 4096
# The ring's size, for the test that runs it dry (a power of two up to 32768).
RING_BUFFERS_VARIABLE = "ECHOD_URING_RING_BUFFERS"
CQE_F_BUFFER = 1  # IORING_CQE_F_BUFFER
CQE_BUFFER_SHIFT = 16
NO_BUFFERS = -errno.ENOBUFS


class RingConnection(Connection):
    """A connection whose buffer, while it holds one, is the ring's ``buffer``."""

    __slots__ = ("buffer", "owner", "waits")

    def __init__(self, sock: socket.socket, server: RingServer, tag: int) -> None:
        super().__init__(sock, server, -1, tag)
        self.owner = server
        self.buffer = -1
        self.waits = False
        self.echo = self._send
        self.receive = self._receive

    def _send(self, offset: int, length: int) -> None:
        self.owner.ring.send_selected(self.fd, self.tag, self.buffer, offset, length)

    def _receive(self) -> None:
        held, self.buffer = self.buffer, -1
        owner = self.owner
        owner.ring.receive_selected(self.fd, self.tag, held)
        if held >= 0 and owner.waiting:
            owner.wake_one()


class RingIO(UringIO):
    def describe(self) -> str:
        return (
            f"io_uring (echod._uring over liburing; SQ {self.ring.sq_entries}, "
            f"CQ {self.ring.cq_entries} entries; multishot accept, receives from a "
            "provided buffer ring)"
        )


class RingServer(UringServer):
    """:class:`UringServer` with its receives served from the ring."""

    def __init__(
        self,
        reactor: Reactor,
        io: UringIO,
        listeners: Sequence[socket.socket],
        config: Config,
        lifecycle: Lifecycle,
        buffers: int,
    ) -> None:
        super().__init__(reactor, io, listeners, config, lifecycle)
        self.buffers = buffers
        self.waiting: deque[RingConnection] = deque()  # found the ring dry
        self.dry = 0  # ENOBUFS completions

    def begin(self, sock: socket.socket) -> Connection:
        conn = RingConnection(sock, self, self.io.tag())
        base = conn.tag << 2
        self.callbacks[base | RECEIVE] = partial(self._received, conn)
        self.callbacks[base | SEND] = partial(self.send_completed, conn)
        conn.receive()
        return conn

    def _received(self, conn: RingConnection, result: int, flags: int) -> None:
        if flags & CQE_F_BUFFER:
            conn.buffer = flags >> CQE_BUFFER_SHIFT
        elif result == NO_BUFFERS:
            # The data stays in the socket; the receive is armed again when a buffer
            # comes back (wake_one), not before: retried now, it would spin.
            self.dry += 1
            if self.dry == 1:
                log.warning(
                    "the buffer ring (%d buffers) ran dry: receives wait for a buffer",
                    self.buffers,
                )
            conn.waits = True
            self.waiting.append(conn)
            return
        self.receive_completed(conn, result, flags)

    def wake_one(self) -> None:
        """A buffer went back: the longest-waiting open connection receives again."""
        while self.waiting:
            conn = self.waiting.popleft()
            if conn.fd >= 0 and conn.waits:
                conn.waits = False
                conn.receive()
                return

    def give_back(self, buffer: int) -> None:
        if buffer >= 0:
            self.ring.receive_selected(-1, 0, buffer)
            self.wake_one()

    def _late(self, user_data: int, result: int, flags: int) -> None:
        if flags & CQE_F_BUFFER:
            self.give_back(flags >> CQE_BUFFER_SHIFT)

    def forget(self, conn: Connection, in_flight: bool) -> None:
        assert isinstance(conn, RingConnection)
        base = conn.tag << 2
        del self.callbacks[base | SEND]
        conn.waits = False
        if in_flight:
            # Until the cancel completes, a receive may still complete with a buffer.
            self.callbacks[base | RECEIVE] = partial(self._late, base | RECEIVE)
            self.callbacks[base | CANCEL] = partial(self._cancelled_holding, conn)
            self.ring.cancel_fd(conn.fd, conn.tag)
        else:
            del self.callbacks[base | RECEIVE]
            held, conn.buffer = conn.buffer, -1
            self.give_back(held)
        conn.sock.close()
        self.release(conn)

    def _cancelled_holding(self, conn: RingConnection, result: int, flags: int) -> None:
        base = conn.tag << 2
        del self.callbacks[base | CANCEL]
        self.callbacks.pop(base | RECEIVE, None)
        held, conn.buffer = conn.buffer, -1
        if result == -errno.EALREADY:  # running in a kernel worker: may still read it
            if held >= 0:
                log.debug("ring buffer %d retired: its cancelled send was running", held)
            return
        self.give_back(held)


def ring_buffers() -> int:
    text = os.environ.get(RING_BUFFERS_VARIABLE)
    return int(text) if text else RING_BUFFERS


class RingBackend:
    name = "uring-ring"

    def serve(
        self, listeners: Sequence[socket.socket], config: Config, lifecycle: Lifecycle
    ) -> None:
        from echod._uring import Ring

        connections = config.max_connections or resource.getrlimit(resource.RLIMIT_NOFILE)[0]
        ring = Ring(SUBMISSION_ENTRIES, cq_entries_for(connections), RECEIVE_SIZE)
        buffers = ring_buffers()
        ring.provide_buffers(buffers, RING_BUFFER_SIZE)
        io = RingIO(ring)
        reactor = Reactor(io)
        RingServer(reactor, io, listeners, config, lifecycle, buffers).serve(self.name)


URING_RING = RingBackend()
