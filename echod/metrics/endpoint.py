"""``GET /metrics`` over HTTP/1.x, served from the supervisor's loop.

The supervisor never touches a client's echo socket, so a scrape costs the workers
nothing but the CPU the supervisor spends, and a scraper can only cost the
supervisor bounded memory: at most ``MAX_SCRAPERS`` connections (a new one evicts the
oldest, so a slowloris cannot lock Prometheus out for longer than it keeps
reconnecting), a request head of at most ``HEAD_LIMIT`` bytes, ``DEADLINE`` seconds per
connection, one request per connection (``Connection: close``), and at most one
rendering per format per collection of counters whatever the request rate.

A scrape is answered with counters collected no earlier than ``RENDER_GAP`` before it
came, not a heartbeat's worth stale: when the last collection is older, the endpoint
holds the request and asks for fresh ones (``refresh``: the supervisor signals its
workers and calls back once all have answered, or a second has passed). So collections
start at most once per ``RENDER_GAP``, and a flood of scrapes costs each worker at most
ten refreshes a second.

The endpoint registers its sockets on the supervisor's :class:`~echod.loop.Reactor`, the
one loop of that process; the supervisor calls :meth:`~MetricsEndpoint.expire` from a
timer.
"""

from __future__ import annotations

import contextlib
import logging
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass

from echod.loop import READ, WRITE, Reactor
from echod.metrics.exposition import OPENMETRICS_TYPE, TEXT_TYPE

MAX_SCRAPERS = 16
HEAD_LIMIT = 8192
DEADLINE = 5.0
RENDER_GAP = 0.1
ACCEPTS_PER_EVENT = 32
log = logging.getLogger("echod")

Render = Callable[[bool], str]  # openmetrics? -> the exposition
Refresh = Callable[[Callable[[], None]], None]  # collect counters, then call back


@dataclass(frozen=True)
class Exposition:
    """A request the metrics answer, in the text format or in OpenMetrics."""

    openmetrics: bool


class _Scraper:
    __slots__ = ("deadline", "head", "out", "sock", "wants")

    def __init__(self, sock: socket.socket, deadline: float) -> None:
        self.sock = sock
        self.deadline = deadline
        self.head = bytearray()
        self.out: memoryview | None = None
        self.wants: Exposition | None = None  # read whole, held for fresh counters


class MetricsEndpoint:
    def __init__(
        self,
        listener: socket.socket,
        render: Render,
        refresh: Refresh,
        loop: Reactor,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.listener = listener
        self.listener.setblocking(False)
        self.loop = loop
        self.render = render
        self.refresh = refresh
        self.clock = clock
        # Held requests: those the collection under way will answer, and the next one's.
        self.collecting: list[_Scraper] | None = None
        self.queued: list[_Scraper] = []
        self._collected_from = float("-inf")  # when the last collection started
        loop.add(listener.fileno(), READ, lambda mask: self._accept())
        self.scrapers: dict[int, _Scraper] = {}  # by fd, oldest first
        self._cache: dict[bool, bytes] = {}  # per format, for one collection
        log.info("metrics on %s", where(listener))

    def _on_ready(self, scraper: _Scraper) -> None:
        if scraper.out is None:
            self._read(scraper)
        else:
            self._write(scraper)

    def expire(self, now: float | None = None) -> None:
        now = self.clock() if now is None else now
        for scraper in [s for s in self.scrapers.values() if s.deadline <= now]:
            self._close(scraper)

    def close(self) -> None:
        for scraper in list(self.scrapers.values()):
            self._close(scraper)
        with contextlib.suppress(KeyError, ValueError, OSError):
            self.loop.remove(self.listener.fileno())
        self.listener.close()

    def fds(self) -> list[int]:
        """Every descriptor it holds, for a forked worker to close plainly (unregistering
        would remove the supervisor's registrations from the epoll set they share)."""
        return [self.listener.fileno(), *self.scrapers]

    # Connections -------------------------------------------------------------------
    def _accept(self) -> None:
        for _ in range(ACCEPTS_PER_EVENT):
            try:
                sock, _ = self.listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError:  # EMFILE and kin: the next event retries; echo is unaffected
                return
            if len(self.scrapers) >= MAX_SCRAPERS:
                self._close(next(iter(self.scrapers.values())))
            sock.setblocking(False)
            scraper = _Scraper(sock, self.clock() + DEADLINE)
            self.scrapers[sock.fileno()] = scraper
            self.loop.add(sock.fileno(), READ, self._callback(scraper))

    def _read(self, scraper: _Scraper) -> None:
        try:
            data = scraper.sock.recv(HEAD_LIMIT + 1 - len(scraper.head))
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            self._close(scraper)
            return
        if not data:
            self._close(scraper)
            return
        scraper.head += data
        end = scraper.head.find(b"\r\n\r\n")
        if end < 0:
            end = scraper.head.find(b"\n\n")
        if end < 0:
            if len(scraper.head) > HEAD_LIMIT:
                self._respond(scraper, "431 Request Header Fields Too Large", "text/plain", b"")
            return
        reply = answer(bytes(scraper.head[:end]))
        if isinstance(reply, Exposition):
            self._scraped(scraper, reply)
        else:
            self._respond(scraper, *reply)

    # Fresh counters ----------------------------------------------------------------
    def _scraped(self, scraper: _Scraper, wants: Exposition) -> None:
        recent = self.clock() - self._collected_from < RENDER_GAP
        if recent and self.collecting is None:
            self._expose(scraper, wants)
            return
        # Held unwatched: a readable (or closed) socket must not wake the loop again.
        scraper.wants = wants
        self.loop.remove(scraper.sock.fileno())
        if self.collecting is None:
            self._collect([scraper])
        elif recent:
            self.collecting.append(scraper)
        else:
            self.queued.append(scraper)

    def _collect(self, held: list[_Scraper]) -> None:
        self.collecting = held
        self._collected_from = self.clock()
        self._cache.clear()
        self.refresh(self._collected)

    def _collected(self) -> None:
        held, self.collecting = self.collecting or [], None
        for scraper in held:
            if scraper.sock.fileno() >= 0:  # not evicted or expired meanwhile
                assert scraper.wants is not None
                self._expose(scraper, scraper.wants)
        if self.queued:
            queued, self.queued = self.queued, []
            self._collect(queued)

    def _expose(self, scraper: _Scraper, wants: Exposition) -> None:
        content_type = OPENMETRICS_TYPE if wants.openmetrics else TEXT_TYPE
        self._respond(scraper, "200 OK", content_type, self._body(wants.openmetrics))

    def _respond(self, scraper: _Scraper, status: str, content_type: str, body: bytes) -> None:
        head = (
            f"HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\n"
            f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
        ).encode()
        scraper.out = memoryview(head + body)
        if scraper.wants is None:
            self.loop.change(scraper.sock.fileno(), WRITE, self._callback(scraper))
        else:
            self.loop.add(scraper.sock.fileno(), WRITE, self._callback(scraper))
        self._write(scraper)

    def _write(self, scraper: _Scraper) -> None:
        assert scraper.out is not None
        try:
            sent = scraper.sock.send(scraper.out)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            self._close(scraper)
            return
        scraper.out = scraper.out[sent:]
        if not scraper.out:
            self._close(scraper)

    def _close(self, scraper: _Scraper) -> None:
        fd = scraper.sock.fileno()
        if fd < 0:
            return
        self.scrapers.pop(fd, None)
        if scraper in self.queued:
            self.queued.remove(scraper)
        with contextlib.suppress(KeyError, ValueError, OSError):  # held: not registered
            self.loop.remove(fd)
        scraper.sock.close()

    def _callback(self, scraper: _Scraper) -> Callable[[int], None]:
        return lambda mask: self._on_ready(scraper)

    def _body(self, openmetrics: bool) -> bytes:
        body = self._cache.get(openmetrics)
        if body is None:
            body = self._cache[openmetrics] = self.render(openmetrics).encode()
        return body


def answer(head: bytes) -> tuple[str, str, bytes] | Exposition:
    """Status, content type and body for one request head, or the exposition it asks
    for (rendered once counters are fresh). No IO: tested alone."""
    lines = head.decode("latin-1").replace("\r\n", "\n").split("\n")
    parts = lines[0].split()
    if len(parts) != 3 or not parts[2].startswith("HTTP/1."):
        return "400 Bad Request", "text/plain", b"bad request\n"
    method, target = parts[0], parts[1]
    path = target.split("?", 1)[0]
    if path != "/metrics":
        return "404 Not Found", "text/plain", b"metrics are at /metrics\n"
    if method != "GET":
        return "405 Method Not Allowed", "text/plain", b"GET /metrics\n"
    accept = ""
    for line in lines[1:]:
        name, _, value = line.partition(":")
        if name.strip().lower() == "accept":
            accept += value.lower()
    return Exposition("application/openmetrics-text" in accept)


def where(listener: socket.socket) -> str:
    name = listener.getsockname()
    if listener.family == socket.AF_UNIX:
        return f"unix:{name}"
    host = f"[{name[0]}]" if listener.family == socket.AF_INET6 else name[0]
    return f"http://{host}:{name[1]}/metrics"
