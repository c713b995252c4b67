"""Datagram sockets served by any loop that can watch a descriptor for reading.

A datagram echo has no connection state, so one callback per socket is the whole
server: the reactor registers it with its selector, asyncio and uvloop with
``add_reader``. Each datagram is answered with one ``sendto`` of exactly what arrived,
to the address it came from; when the socket's send buffer is full the answer is
dropped and counted, never queued and never waited for (the sockets are non-blocking).
"""

from __future__ import annotations

import errno
import logging
import socket
import time
from collections.abc import Callable, Sequence

from echod import backends
from echod.admission import AccessRules, network
from echod.config import Config
from echod.lifecycle import Stats
from echod.net.listeners import describe
from echod.service import ServiceError
from echod.udp.guard import Guard, GuardSettings, RefusalLog, UdpCounters

log = logging.getLogger("echod")

# The largest UDP payload over IPv6 is 65,527 B (65,507 over IPv4): one buffer holds
# any datagram whole, so none is ever truncated.
DATAGRAM_BUFFER = 65_536
# Datagrams read per readiness event, so a flood on one socket cannot starve the others
# (and the TCP connections on the same loop) for long.
DATAGRAM_BATCH = 64

Watch = Callable[[socket.socket, Callable[[int], None]], object]
Unwatch = Callable[[socket.socket], object]


class UnsupportedBackend(ServiceError):
    """A UDP listener given to a backend that does not serve datagrams."""


def is_datagram(sock: socket.socket) -> bool:
    return sock.type == socket.SOCK_DGRAM


def check_backend(name: str, listeners: Sequence[socket.socket]) -> None:
    """One line for the operator if ``name`` cannot serve the UDP listeners given."""
    if not backends.serves_udp(name) and any(is_datagram(sock) for sock in listeners):
        raise UnsupportedBackend(
            f"backend {name} does not serve UDP listeners; use a reactor backend "
            "(epoll, poll, select, ...), asyncio or uvloop"
        )


def settings_from(config: Config) -> GuardSettings:
    return GuardSettings(
        packets_per_second=config.udp_rate[0],
        bytes_per_second=config.udp_rate[1],
        burst_seconds=config.udp_burst,
        budget_bytes_per_second=config.udp_budget,
        sources=config.udp_sources,
        refused_ports=frozenset(config.udp_refuse_ports),
        rules=AccessRules(map(network, config.allow), map(network, config.deny)),
    )


class DatagramEchoer:
    """Reads and answers the datagrams waiting on one socket."""

    __slots__ = ("buffer", "counters", "guard", "refusals", "sock", "view")

    def __init__(
        self, sock: socket.socket, guard: Guard, refusals: RefusalLog, buffer: bytearray
    ) -> None:
        self.sock = sock
        self.guard = guard
        self.counters = guard.counters
        self.refusals = refusals
        self.buffer = buffer
        self.view = memoryview(buffer)

    def on_readable(self, mask: int = 0) -> None:
        sock = self.sock
        recvfrom_into = sock.recvfrom_into
        sendto = sock.sendto
        buffer = self.buffer
        view = self.view
        counters = self.counters
        check = self.guard.check
        now = time.monotonic()
        for _ in range(DATAGRAM_BATCH):
            try:
                size, source = recvfrom_into(buffer)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                # An ICMP error queued for an earlier answer (ECONNREFUSED and kin):
                # it belongs to no datagram waiting now, so read on.
                log.debug("udp: %s", exc)
                continue
            counters.received += 1
            refusal = check(source[0], source[1], size, now)
            if refusal is not None:
                line = self.refusals.line(refusal, source[0], source[1], now)
                if line is not None:
                    log.warning("%s", line)
                continue
            try:
                sendto(view[:size], source)
            except OSError as exc:
                # EAGAIN/ENOBUFS (send buffer full), EMSGSIZE (above a known path MTU
                # with DF), EACCES/ENETUNREACH: the answer is dropped, never retried.
                counters.dropped += 1
                if exc.errno not in (errno.EAGAIN, errno.ENOBUFS):
                    log.debug("udp: answer to %s dropped: %s", source[:2], exc)
                continue
            counters.echoed += 1
            counters.bytes_echoed += size


class DatagramService:
    """Every UDP listener of one serving process, behind one guard and one counter set."""

    def __init__(
        self,
        sockets: Sequence[socket.socket],
        own_ports: Sequence[int],
        config: Config,
        stats: Stats,
    ) -> None:
        self.sockets = list(sockets)
        counters = UdpCounters()
        if self.sockets:
            stats.udp = counters
        own_endpoints = [sock.getsockname()[:2] for sock in self.sockets]
        self.guard = Guard(settings_from(config), own_endpoints, own_ports, counters)
        refusals = RefusalLog()
        buffer = bytearray(
            DATAGRAM_BUFFER
        )  # shared: each datagram is answered before the next read
        self.echoers = [DatagramEchoer(sock, self.guard, refusals, buffer) for sock in self.sockets]
        self._unwatch: Unwatch | None = None

    @classmethod
    def take(
        cls, listeners: Sequence[socket.socket], config: Config, stats: Stats
    ) -> tuple[list[socket.socket], DatagramService]:
        """Split ``listeners`` into the stream ones (returned) and the datagram service."""
        stream = [sock for sock in listeners if not is_datagram(sock)]
        datagram = [sock for sock in listeners if is_datagram(sock)]
        own_ports = [sock.getsockname()[1] for sock in listeners if sock.family != socket.AF_UNIX]
        return stream, cls(datagram, own_ports, config, stats)

    @property
    def addresses(self) -> list[str]:
        return [describe(sock) for sock in self.sockets]

    def start(self, watch: Watch, unwatch: Unwatch) -> None:
        for echoer in self.echoers:
            watch(echoer.sock, echoer.on_readable)
        self._unwatch = unwatch

    def close(self) -> None:
        """Stop answering (a graceful stop has no datagram to finish) and close."""
        unwatch, self._unwatch = self._unwatch, None
        for sock in self.sockets:
            if unwatch is not None and sock.fileno() >= 0:
                unwatch(sock)
            sock.close()
