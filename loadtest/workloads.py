"""One class per kind of connection, driven by a worker through a narrow ``Link``.

A connection never blocks and never owns a thread: the poller holds, for each
socket, the bound method to call for the socket's next event, and it changes only
when what the connection waits for changes (connecting, reading, reading and
writing).  All of them verify every received byte against ``Pattern``.

Data flows one way: the worker builds a ``Link`` and the connections; a
connection knows nothing of the worker but the ``Link`` (its settings, the
poller, the tally, the phase of the run and three callbacks).  This module
never imports the worker.

What a connection is owed lives here, inline in the hot path rather than in a
separate session object (a call per event costs more than the rule): bytes
released to send are ``target``, bytes echoed and verified are
``received_bytes``; while ``target > received_bytes`` the server owes an echo,
and silence for ``--timeout`` is a stall (``check``).  ``dues`` holds the due
time of every message released and not yet echoed, followed in open loop by the
messages that fell due and wait for room in the pipeline (the backlog).
"""

from __future__ import annotations

import errno
import socket
import ssl
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from time import monotonic
from typing import Any

from echod.net.proxy_protocol import encode_v1, encode_v2
from loadtest.pattern import CHUNK, PERIOD, Pattern
from loadtest.pollers import Poller, RRPoller
from loadtest.sources import BIND_ADDRESS_NO_PORT
from loadtest.stats import (
    CLOSED,
    CONNECT_TIMEOUT,
    LOST,
    MISMATCH,
    TIMEOUT,
    TLS_HANDSHAKE,
    UNSENT,
    Tally,
    error_kind,
)
from loadtest.tls import plain_calls

DOWN, CONNECTING, UP = 0, 1, 2
# Up to this many bytes, the rr hot path reads and sends bytes objects rather than
# memoryviews: both then come from and go to small-object blocks (pymalloc, 512 B).
SMALL = 512
# Open loop: messages one connection may hold due and unsent (about 3 MB of due
# times) before further ones count as ``unsent`` errors straight away.
MAX_BACKLOG = 100_000

# Phases of the run as connections see them: before the clock (held open, silent),
# warmup and window (issuing), drain (no new messages; owed echoes collected).
SETUP, RUNNING, DRAINING = 0, 1, 2


@dataclass(frozen=True)
class Settings:
    """What every connection of a worker shares and never changes."""

    family: int
    address: tuple[Any, ...]
    size: int
    depth: int
    timeout: float
    connect_timeout: float
    # --tls: the client context, the name sent and verified, whether churn resumes.
    tls: ssl.SSLContext | None = None
    server_hostname: str | None = None
    resume: bool = False
    # --proxy-protocol: the PROXY header version sent first on every connection (0:
    # none), carrying ``proxy_address`` or, if None, the connection's own address.
    proxy: int = 0
    proxy_address: str | None = None


class Link:
    """All a connection may use of the worker that drives it.

    ``up`` says a connect finished (frees its slot in the connect limiter),
    ``down(conn, was_connecting)`` that the connection failed (the worker decides
    whether and when to reconnect), ``again`` asks for a new connect at once
    (churn).  ``phase`` is written by the worker only.
    """

    __slots__ = (
        "again",
        "buffer",
        "down",
        "pattern",
        "phase",
        "poller",
        "settings",
        "tally",
        "up",
    )

    def __init__(
        self,
        settings: Settings,
        poller: Poller,
        tally: Tally,
        up: Callable[[Connection], None],
        down: Callable[[Connection, bool], None],
        again: Callable[[Connection], None],
    ) -> None:
        self.settings = settings
        self.poller = poller
        self.tally = tally
        self.pattern = Pattern()
        # One receive buffer for every connection of the worker: reads never allocate.
        self.buffer = memoryview(bytearray(CHUNK))
        self.phase = SETUP
        self.up = up
        self.down = down
        self.again = again


class Connection:
    """Connecting, failing and stall detection shared by every workload; idle as it is."""

    __slots__ = (
        "base",
        "connect_started",
        "failures",
        "link",
        "mark",
        "sock",
        "source",
        "stalled_since",
        "state",
        "tls_session",
    )

    def __init__(self, link: Link, base: int) -> None:
        self.link = link
        self.base = base
        self.sock: socket.socket | None = None
        self.state = DOWN
        self.connect_started = 0.0
        self.failures = 0
        self.mark = -1
        self.stalled_since = 0.0
        self.source: str | None = None  # local address to bind (--source-address)
        self.tls_session: ssl.SSLSession | None = None  # --tls-resume: the last one

    def connect(self) -> None:
        link = self.link
        sock = socket.socket(link.settings.family, socket.SOCK_STREAM)
        sock.setblocking(False)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.sock = sock
        self.state = CONNECTING
        link.poller.register(sock.fileno(), link.poller.WRITE, self.on_connect)
        if self.source is not None:
            try:
                if BIND_ADDRESS_NO_PORT is not None:
                    sock.setsockopt(socket.IPPROTO_IP, BIND_ADDRESS_NO_PORT, 1)
                sock.bind((self.source, 0))
            except OSError as exc:
                self.fail(error_kind(exc.errno or 0))
                return
        self.connect_started = monotonic()
        code = sock.connect_ex(link.settings.address)
        if code not in (0, errno.EINPROGRESS):
            self.fail(error_kind(code))

    def on_connect(self, _mask: int) -> None:
        sock = self.sock
        assert sock is not None
        code = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        if code:
            self.fail(error_kind(code))
            return
        settings = self.link.settings
        if settings.tls is not None:
            self.sock = settings.tls.wrap_socket(
                sock,
                server_hostname=settings.server_hostname,
                do_handshake_on_connect=False,
                session=self.tls_session if settings.resume else None,
            )
            self.on_handshake(0)
            return
        self.up_at(sock)

    def on_handshake(self, _mask: int) -> None:
        """TLS: one handshake step per readiness event; connected once it is done."""
        sock = self.sock
        assert isinstance(sock, ssl.SSLSocket)
        poller = self.link.poller
        try:
            sock.do_handshake()
        except ssl.SSLWantReadError:
            poller.modify(sock.fileno(), poller.READ, self.on_handshake)
            return
        except ssl.SSLWantWriteError:
            poller.modify(sock.fileno(), poller.WRITE, self.on_handshake)
            return
        except ssl.SSLError:
            self.fail(TLS_HANDSHAKE)
            return
        except OSError as exc:
            self.fail(error_kind(exc.errno or 0))
            return
        self.up_at(sock)

    def up_at(self, sock: socket.socket) -> None:
        """Connected (and handshaken): the connect time counts both."""
        now = monotonic()
        link = self.link
        counts = link.tally.connect
        us = int((now - self.connect_started) * 1e6)
        counts[us] = counts.get(us, 0) + 1
        if link.settings.proxy and not self.send_proxy_header(sock):
            return
        self.state = UP
        link.up(self)
        if link.phase == SETUP:  # before the clock starts: held open and watched, silent
            link.poller.modify(sock.fileno(), link.poller.READ, self.on_idle_read)
        else:
            self.begin(sock, now)

    def send_proxy_header(self, sock: socket.socket) -> bool:
        """The PROXY header, in one send (it fits any empty send buffer); False if failed."""
        settings = self.link.settings
        local = sock.getsockname()
        peer = sock.getpeername()
        source = (settings.proxy_address or local[0], local[1])
        destination = (peer[0], peer[1])
        if (":" in source[0]) != (":" in destination[0]):  # one family in a header
            destination = ("::" if ":" in source[0] else "0.0.0.0", peer[1])
        header = (encode_v1 if settings.proxy == 1 else encode_v2)(source, destination)
        try:
            sent = sock.send(header)
        except OSError as exc:
            self.fail(error_kind(exc.errno or errno.EIO))
            return False
        if sent != len(header):
            self.fail(error_kind(errno.EAGAIN))
            return False
        return True

    def begin(self, sock: socket.socket, now: float) -> None:
        """Start the workload on a connection that is up and the clock running."""
        poller = self.link.poller
        poller.modify(sock.fileno(), poller.READ, self.on_idle_read)

    def on_idle_read(self, _mask: int) -> None:
        """An idle connection should hear nothing: data is a fault, EOF a drop."""
        sock = self.sock
        assert sock is not None
        try:
            data = sock.recv(1)
        except (BlockingIOError, ssl.SSLWantReadError, ssl.SSLWantWriteError):
            return  # TLS: a record with no data (a 1.3 session ticket)
        except OSError as exc:
            self.fail(error_kind(exc.errno or 0))
            return
        self.fail(MISMATCH if data else CLOSED)

    def awaiting(self) -> bool:
        """Whether the server owes this connection bytes, so that silence is a stall."""
        return False

    def received(self) -> int:
        return 0

    def backlog(self) -> int:
        """Open loop: messages that fell due and are not yet sent."""
        return 0

    def check(self, now: float) -> None:
        """Called a few times a second in every phase: stalled connects and echoes.

        A stall in the drain is ``lost``: the run is over, nothing will reconnect,
        and the bytes owed never came back.
        """
        state = self.state
        if state == CONNECTING:
            if now - self.connect_started > self.link.settings.connect_timeout:
                self.fail(CONNECT_TIMEOUT)
        elif state == UP:
            received = self.received()
            if not self.awaiting() or received != self.mark:
                self.mark = received
                self.stalled_since = now
            elif now - self.stalled_since > self.link.settings.timeout:
                self.fail(LOST if self.link.phase == DRAINING else TIMEOUT)

    def close(self) -> None:
        sock = self.sock
        if sock is not None:
            if self.state != DOWN:
                self.link.poller.unregister(sock.fileno())
            sock.close()
            self.sock = None
        self.state = DOWN
        self.mark = -1

    def fail(self, kind: str) -> None:
        was_connecting = self.state == CONNECTING
        self.link.tally.error(kind)
        self.close()
        self.failures += 1
        self.link.down(self, was_connecting)


class EchoConnection(Connection):
    """Request/response, closed loop (``rr``), with pipelining.

    Latency counts from each message's due time, here the moment it was
    released.  ``on_read`` is the generator's hot path: the common case (a read
    that completes messages, the next ones sent whole by one ``send``) is written
    out inline; anything else falls back to ``flush``, which holds the general
    rule.
    """

    __slots__ = (
        "attached",
        "buffer",
        "data",
        "depth",
        "done",
        "dues",
        "received_bytes",
        "recv",
        "recv_into",
        "released",
        "send",
        "sent",
        "sent_at",
        "size",
        "tally",
        "target",
        "view",
        "writing",
    )

    def __init__(self, link: Link, base: int) -> None:
        super().__init__(link, base)
        settings = link.settings
        self.size = settings.size
        self.depth = settings.depth
        self.data = link.pattern.data
        self.view = link.pattern.view
        self.buffer = link.buffer
        self.tally = link.tally
        self.dues: deque[float] = deque()
        self.sent_at: deque[float] = deque()
        # Whether the poller runs this connection in C (RRPoller.attach): its
        # counters then live there, and the ones here stay at zero.
        self.attached = False
        self._restart()

    def _restart(self) -> None:
        """A new stream: counters from zero; an open-loop backlog stays on the clock."""
        self.sent = self.target = self.received_bytes = 0
        self.done = self.released = 0
        self.writing = False
        self.sent_at.clear()

    def begin(self, sock: socket.socket, now: float) -> None:
        self._restart()
        if isinstance(sock, ssl.SSLSocket):
            self.send, self.recv, self.recv_into = plain_calls(sock)
        else:
            self.send = sock.send
            self.recv = sock.recv
            self.recv_into = sock.recv_into
        poller = self.link.poller
        poller.modify(sock.fileno(), poller.READ, self.on_read)
        if type(self) is EchoConnection and isinstance(poller, RRPoller):
            # The same rule as on_read and flush below, run in C (_rrloop.c).
            self.attached = True
            settings = self.link.settings
            poller.attach(
                sock.fileno(),
                self.data,
                self.base,
                settings.size,
                settings.depth,
                now,
                self.on_c_failed,
            )
            return
        self.start(now)

    def on_c_failed(self, code: int, done: int) -> None:
        """The C loop gave this connection up: fail it here as on_read would have."""
        if done:
            self.failures = 0
        self.fail(CLOSED if code == 0 else MISMATCH if code < 0 else error_kind(code))

    def start(self, now: float) -> None:
        """Release the first messages: a full pipeline (none in the drain)."""
        if self.link.phase != DRAINING:
            for _ in range(self.depth):
                self.dues.append(now)
            self.released = self.depth
            self.target = self.depth * self.size
            self.flush()

    def awaiting(self) -> bool:
        if self.attached:
            received, target = self._progress()
            return target > received
        return self.target > self.received_bytes

    def received(self) -> int:
        if self.attached:
            return self._progress()[0]
        return self.received_bytes

    def _progress(self) -> tuple[int, int]:
        """Bytes (received, released) of an attached connection, from C."""
        poller = self.link.poller
        assert isinstance(poller, RRPoller) and self.sock is not None
        return poller.progress(self.sock.fileno())

    def backlog(self) -> int:
        return len(self.dues) - (self.released - self.done)

    def _receive(self) -> int:
        """Read what has arrived and check it against the pattern.

        Returns the stream's received byte count, or -1 once the connection failed.
        More bytes than were sent is a fault however they look; otherwise it is one
        memcmp (see pattern.py for why the slice is contiguous).  ``on_read``
        inlines this same rule.
        """
        view = self.buffer
        try:
            n = self.recv_into(view)
        except BlockingIOError:
            return self.received_bytes
        except OSError as exc:
            self.fail(error_kind(exc.errno or 0))
            return -1
        received = self.received_bytes + n
        if (
            n == 0
            or received > self.sent
            or not self.data.startswith(view[:n], (self.base + self.received_bytes) % PERIOD)
        ):
            self.fail(MISMATCH if n else CLOSED)
            return -1
        self.received_bytes = received
        self.tally.bytes += n
        return received

    def on_read(self, _mask: int) -> None:
        received = self.received_bytes
        owed = self.sent - received
        if 0 < owed <= SMALL:
            # _receive's rule, inlined for small echoes: read at most what is owed
            # into a fresh bytes (a small-object block) and compare it as it is,
            # which costs less than slicing the shared buffer.  Bytes beyond what
            # was sent stay in the socket and fail the next comparison.
            try:
                chunk = self.recv(owed)
            except BlockingIOError:
                return
            except OSError as exc:
                self.fail(error_kind(exc.errno or 0))
                return
            n = len(chunk)
            if not n or not self.data.startswith(chunk, (self.base + received) % PERIOD):
                self.fail(MISMATCH if n else CLOSED)
                return
            received += n
        else:
            received = self._receive()
            if received < 0:
                return
            n = 0  # counted by _receive
        self.received_bytes = received
        tally = self.tally
        tally.bytes += n
        done = received // self.size
        completed = done - self.done
        if not completed:
            return
        now = monotonic()
        dues = self.dues
        latency = tally.latency
        if completed == 1:
            us = int((now - dues.popleft()) * 1e6)
            latency[us] = latency.get(us, 0) + 1
        else:
            for _ in range(completed):
                us = int((now - dues.popleft()) * 1e6)
                latency[us] = latency.get(us, 0) + 1
        tally.messages += completed
        self.done = done
        self.failures = 0
        if self.link.phase == DRAINING:
            return
        if completed == 1:
            dues.append(now)
        else:
            dues.extend([now] * completed)
        self.released += completed
        target = self.target + completed * self.size
        self.target = target
        if not self.writing:
            # flush's rule for the usual case: all that is released goes in one send.
            sent = self.sent
            n = target - sent
            if n <= SMALL:
                start = (self.base + sent) % PERIOD
                try:
                    # A small bytes slice is cheaper to make and to send than a memoryview.
                    k = self.send(self.data[start : start + n])
                except BlockingIOError:
                    k = 0
                except OSError as exc:
                    self.fail(error_kind(exc.errno or 0))
                    return
                self.sent = sent + k
                if k == n:
                    return
        self.flush()

    def on_read_write(self, mask: int) -> None:
        # Anything but plain writability (data, EOF, an error) is for on_read to find.
        write = self.link.poller.WRITE
        if mask != write:
            self.on_read(mask)
        if mask & write and self.state == UP:
            self.flush()

    def flush(self) -> None:
        """Send what is released and unsent; ask for writability only while some is left."""
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
            poller = self.link.poller
            if want:
                poller.modify(self.sock.fileno(), poller.READ | poller.WRITE, self.on_read_write)
            else:
                poller.modify(self.sock.fileno(), poller.READ, self.on_read)

    def close(self) -> None:
        self.attached = False  # unregister (in close) frees the C side
        super().close()

    def fail(self, kind: str) -> None:
        self.forget_in_flight()
        super().fail(kind)

    def forget_in_flight(self) -> None:
        """Messages in flight died with the connection (counted by ``fail``'s kind); an
        open-loop backlog stays due and goes out on the next connection."""
        for _ in range(self.released - self.done):
            self.dues.popleft()
        self.released = self.done


class RateConnection(EchoConnection):
    """Open loop (``rate``): messages fall due on the worker's schedule.

    Latency counts from each message's slot in the schedule, so a server that
    falls behind is charged for the wait (coordinated omission corrected, as
    wrk2); ``sent_at`` keeps the actual send time for the uncorrected histogram.
    """

    __slots__ = ()

    def start(self, now: float) -> None:
        self._release_backlog(now)

    def schedule(self, due: float) -> None:
        """One more message is due; send it now if the pipeline has room.

        Otherwise (pipeline full, or the connection down or reconnecting) it waits
        in the backlog and goes out as soon as it can, its latency still counted
        from ``due``.
        """
        if len(self.dues) >= MAX_BACKLOG:
            # The generator's own memory stays bounded too: past this, a message
            # due on a connection that cannot take it is reported at once.
            self.tally.error(UNSENT)
            return
        self.dues.append(due)
        if self.state == UP and self.released - self.done < self.depth:
            self.released += 1
            self.target += self.size
            self.sent_at.append(monotonic())
            self.flush()

    def _release_backlog(self, now: float) -> None:
        room = self.depth - (self.released - self.done)
        count = min(len(self.dues) - (self.released - self.done), room)
        if count > 0:
            self.released += count
            self.target += count * self.size
            self.sent_at.extend([now] * count)
            self.flush()

    def on_read(self, _mask: int) -> None:
        received = self._receive()
        if received < 0:
            return
        done = received // self.size
        if done == self.done:
            return
        now = monotonic()
        tally = self.tally
        dues = self.dues
        sent_at = self.sent_at
        latency = tally.latency
        uncorrected = tally.uncorrected
        for _ in range(done - self.done):
            us = int((now - dues.popleft()) * 1e6)
            latency[us] = latency.get(us, 0) + 1
            us = int((now - sent_at.popleft()) * 1e6)
            uncorrected[us] = uncorrected.get(us, 0) + 1
        tally.messages += done - self.done
        self.done = done
        self.failures = 0
        # The drain still sends the backlog: those messages fell due in the window.
        self._release_backlog(now)


class StreamConnection(EchoConnection):
    """Bulk: keeps ``pipeline * size`` bytes in flight and refills as echoes arrive."""

    __slots__ = ("window",)

    def __init__(self, link: Link, base: int) -> None:
        super().__init__(link, base)
        self.window = self.size * self.depth

    def start(self, now: float) -> None:
        if self.link.phase != DRAINING:
            self.target = self.window
            self.flush()

    def backlog(self) -> int:
        return 0

    def on_read(self, _mask: int) -> None:
        received = self._receive()
        if received < 0:
            return
        done = received // self.size
        if done != self.done:
            self.tally.messages += done - self.done
            self.done = done
            self.failures = 0
        if self.link.phase != DRAINING:
            self.target = received + self.window
            self.flush()

    def forget_in_flight(self) -> None:
        """Bytes, not messages, are in flight: no due times to forget."""


class ChurnConnection(EchoConnection):
    """Connect, echo one message, close, and start again at once.

    Latency is the whole transaction from the start of connect to the last echoed
    byte; the connect time alone goes to the connect histogram.
    """

    __slots__ = ()

    def start(self, now: float) -> None:
        if self.link.phase == DRAINING:
            self.close()
            return
        self.dues.append(self.connect_started)
        self.released = 1
        self.target = self.size
        self.flush()

    def backlog(self) -> int:
        return 0

    def on_read(self, _mask: int) -> None:
        received = self._receive()
        if received < 0:
            return
        if received < self.size:
            return
        tally = self.tally
        us = int((monotonic() - self.connect_started) * 1e6)
        tally.latency[us] = tally.latency.get(us, 0) + 1
        tally.messages += 1
        self.failures = 0
        self.dues.clear()
        if isinstance(self.sock, ssl.SSLSocket):  # TLS 1.3 tickets came before the echo
            self.tls_session = self.sock.session
        self.close()
        if self.link.phase != DRAINING:
            self.link.again(self)

    def forget_in_flight(self) -> None:
        """The one transaction died with its connection; the next starts afresh."""
        self.dues.clear()
        self.released = self.done
