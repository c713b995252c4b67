"""One class per kind of connection; the worker's selector calls their bound methods.

A connection never blocks and never owns a thread: the selector key's ``data``
is the bound method to call for the socket's next event, and it changes only
when what the connection waits for changes (connecting, reading, reading and
writing).  All of them verify every received byte against ``Pattern``.
"""

from __future__ import annotations

import errno
import socket
from collections import deque
from selectors import EVENT_READ, EVENT_WRITE
from time import monotonic
from typing import TYPE_CHECKING

from loadtest.pattern import CHUNK, PERIOD
from loadtest.sources import BIND_ADDRESS_NO_PORT
from loadtest.stats import CLOSED, CONNECT_TIMEOUT, MISMATCH, TIMEOUT, error_kind

if TYPE_CHECKING:
    from loadtest.worker import Worker

DOWN, CONNECTING, UP = 0, 1, 2
READ_WRITE = EVENT_READ | EVENT_WRITE


class Connection:
    """Connecting, failing, reconnecting and stall detection shared by every workload."""

    __slots__ = (
        "base",
        "connect_started",
        "failures",
        "mark",
        "sock",
        "source",
        "stalled_since",
        "state",
        "worker",
    )

    def __init__(self, worker: Worker, base: int) -> None:
        self.worker = worker
        self.base = base
        self.sock: socket.socket | None = None
        self.state = DOWN
        self.connect_started = 0.0
        self.failures = 0
        self.mark = -1
        self.stalled_since = 0.0
        self.source: str | None = None  # local address to bind (--source-address)

    def connect(self) -> None:
        worker = self.worker
        sock = socket.socket(worker.family, socket.SOCK_STREAM)
        sock.setblocking(False)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.sock = sock
        self.state = CONNECTING
        worker.selector.register(sock, EVENT_WRITE, self.on_connect)
        if self.source is not None:
            try:
                if BIND_ADDRESS_NO_PORT is not None:
                    sock.setsockopt(socket.IPPROTO_IP, BIND_ADDRESS_NO_PORT, 1)
                sock.bind((self.source, 0))
            except OSError as exc:
                self.fail(error_kind(exc.errno or 0))
                return
        self.connect_started = monotonic()
        code = sock.connect_ex(worker.address)
        if code not in (0, errno.EINPROGRESS):
            self.fail(error_kind(code))

    def on_connect(self, _mask: int) -> None:
        sock = self.sock
        assert sock is not None
        code = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        if code:
            self.fail(error_kind(code))
            return
        now = monotonic()
        worker = self.worker
        counts = worker.tally.connect
        us = int((now - self.connect_started) * 1e6)
        counts[us] = counts.get(us, 0) + 1
        self.state = UP
        worker.connected(self)
        if worker.running:
            self.begin(sock, now)
        else:  # set up before the clock starts: held open and watched, sending nothing
            worker.selector.modify(sock, EVENT_READ, self.on_idle_read)

    def begin(self, sock: socket.socket, now: float) -> None:
        """Start the workload on a connection that has just come up."""
        self.worker.selector.modify(sock, EVENT_READ, self.on_idle_read)

    def on_idle_read(self, _mask: int) -> None:
        """An idle connection should hear nothing: data is a fault, EOF a drop."""
        sock = self.sock
        assert sock is not None
        try:
            data = sock.recv(1)
        except BlockingIOError:
            return
        except OSError as exc:
            self.fail(error_kind(exc.errno or 0))
            return
        self.fail(MISMATCH if data else CLOSED)

    def awaiting(self) -> bool:
        """Whether the connection is owed an echo, so that silence means a stall."""
        return False

    def received(self) -> int:
        return 0

    def check(self, now: float) -> None:
        """Called a few times a second: finds stalled connects and stalled echoes."""
        state = self.state
        if state == CONNECTING:
            if now - self.connect_started > self.worker.params.connect_timeout:
                self.fail(CONNECT_TIMEOUT)
        elif state == UP:
            received = self.received()
            if not self.awaiting() or received != self.mark:
                self.mark = received
                self.stalled_since = now
            elif now - self.stalled_since > self.worker.params.timeout:
                self.fail(TIMEOUT)

    def close(self) -> None:
        sock = self.sock
        if sock is not None:
            if self.state != DOWN:
                self.worker.selector.unregister(sock)
            sock.close()
            self.sock = None
        self.state = DOWN
        self.mark = -1

    def fail(self, kind: str) -> None:
        was_connecting = self.state == CONNECTING
        self.worker.tally.error(kind)
        self.close()
        self.failures += 1
        self.worker.lost(self, was_connecting)


class EchoConnection(Connection):
    """Request/response, closed loop (``rr``) or open loop (``rate``), with pipelining.

    ``dues`` holds, for each message issued and not yet fully echoed, the time it
    was due: in ``rr`` the moment it was released, in ``rate`` its slot in the
    schedule.  Latency counts from there, so a server that falls behind the
    schedule is charged for the wait (coordinated omission corrected, as wrk2).
    """

    __slots__ = (
        "data",
        "depth",
        "done",
        "dues",
        "open_loop",
        "received_bytes",
        "recv_into",
        "released",
        "send",
        "sent",
        "size",
        "target",
        "view",
        "writing",
    )

    def __init__(self, worker: Worker, base: int) -> None:
        super().__init__(worker, base)
        params = worker.params
        self.size = params.size
        self.depth = params.pipeline
        self.open_loop = params.workload == "rate"
        self.data = worker.pattern.data
        self.view = worker.pattern.view
        self.dues: deque[float] = deque()
        self._reset()

    def _reset(self) -> None:
        self.sent = self.target = self.received_bytes = 0
        self.done = self.released = 0
        self.writing = False
        self.dues.clear()

    def begin(self, sock: socket.socket, now: float) -> None:
        self._reset()
        self.send = sock.send
        self.recv_into = sock.recv_into
        self.worker.selector.modify(sock, EVENT_READ, self.on_read)
        self.start(now)

    def start(self, now: float) -> None:
        """Release the first messages: a full pipeline in rr, none until due in rate."""
        if not self.open_loop:
            for _ in range(self.depth):
                self.dues.append(now)
            self.released = self.depth
            self.target = self.depth * self.size
            self.flush()

    def awaiting(self) -> bool:
        return self.released > self.done

    def received(self) -> int:
        return self.received_bytes

    def schedule(self, due: float) -> None:
        """Open loop: one more message is due; send it now unless the pipeline is full."""
        if self.state != UP:
            self.worker.tally.unsent += 1
            return
        self.dues.append(due)
        if self.released - self.done < self.depth:
            self.released += 1
            self.target += self.size
            self.flush()

    def _receive(self) -> int:
        """Read what has arrived and check it against the pattern.

        Returns the stream's received byte count, or -1 once the connection failed.
        More bytes than were sent is a fault however they look; otherwise it is one
        memcmp (see pattern.py for why the slice is contiguous).
        """
        view = self.worker.buffer
        try:
            n = self.recv_into(view)
        except BlockingIOError:
            return self.received_bytes
        except OSError as exc:
            self.fail(error_kind(exc.errno or 0))
            return -1
        if n == 0:
            self.fail(CLOSED)
            return -1
        received = self.received_bytes + n
        if received > self.sent or not self.data.startswith(
            view[:n], (self.base + self.received_bytes) % PERIOD
        ):
            self.fail(MISMATCH)
            return -1
        self.received_bytes = received
        self.worker.tally.bytes += n
        return received

    def on_read(self, _mask: int) -> None:
        received = self._receive()
        if received < 0:
            return
        tally = self.worker.tally
        done = received // self.size
        if done == self.done:
            return
        now = monotonic()
        dues = self.dues
        latency = tally.latency
        completed = done - self.done
        for _ in range(completed):
            us = int((now - dues.popleft()) * 1e6)
            latency[us] = latency.get(us, 0) + 1
        tally.messages += completed
        self.done = done
        self.failures = 0
        if self.open_loop:
            backlog = min(
                self.done + len(dues) - self.released, self.depth - (self.released - done)
            )
            if backlog <= 0:
                return
            self.released += backlog
            self.target += backlog * self.size
        else:
            for _ in range(completed):
                dues.append(now)
            self.released += completed
            self.target += completed * self.size
        self.flush()

    def on_read_write(self, mask: int) -> None:
        if mask & EVENT_READ:
            self.on_read(mask)
        if mask & EVENT_WRITE and self.state == UP:
            self.flush()

    def flush(self) -> None:
        """Send what is released and unsent; ask for EVENT_WRITE only while some is left."""
        sent = self.sent
        target = self.target
        view = self.view
        base = self.base
        while sent < target:
            start = (base + sent) % PERIOD
            n = target - sent
            if n > CHUNK:
                n = CHUNK
            try:
                k = self.send(view[start : start + n])
            except BlockingIOError:
                k = 0
            except OSError as exc:
                self.fail(error_kind(exc.errno or 0))
                return
            sent += k
            if k < n:
                break
        self.sent = sent
        want = sent < target
        if want != self.writing:
            self.writing = want
            assert self.sock is not None
            if want:
                self.worker.selector.modify(self.sock, READ_WRITE, self.on_read_write)
            else:
                self.worker.selector.modify(self.sock, EVENT_READ, self.on_read)


class StreamConnection(EchoConnection):
    """Bulk: keeps ``pipeline * size`` bytes in flight and refills as echoes arrive."""

    __slots__ = ("window",)

    def __init__(self, worker: Worker, base: int) -> None:
        super().__init__(worker, base)
        self.window = self.size * self.depth

    def start(self, now: float) -> None:
        self.target = self.window
        self.flush()

    def awaiting(self) -> bool:
        return self.sent > self.received_bytes

    def on_read(self, _mask: int) -> None:
        received = self._receive()
        if received < 0:
            return
        tally = self.worker.tally
        done = received // self.size
        if done != self.done:
            tally.messages += done - self.done
            self.done = done
            self.failures = 0
        self.target = received + self.window
        self.flush()


class ChurnConnection(EchoConnection):
    """Connect, echo one message, close, and start again at once.

    Latency is the whole transaction from the start of connect to the last echoed
    byte; the connect time alone goes to the connect histogram.
    """

    __slots__ = ()

    def start(self, now: float) -> None:
        self.dues.append(self.connect_started)
        self.released = 1
        self.target = self.size
        self.flush()

    def on_read(self, _mask: int) -> None:
        received = self._receive()
        if received < 0:
            return
        tally = self.worker.tally
        if received < self.size:
            return
        us = int((monotonic() - self.connect_started) * 1e6)
        tally.latency[us] = tally.latency.get(us, 0) + 1
        tally.messages += 1
        self.failures = 0
        self.close()
        self.worker.request_connect(self)
