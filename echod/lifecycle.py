"""What every backend reports to: counters, readiness, heartbeats and signals.

Backends differ in how they wait for IO, never in what a signal means or what systemd
is told. They call into one :class:`Lifecycle`, so those rules live here once.
"""

from __future__ import annotations

import contextlib
import enum
import logging
import signal
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from echod.admission import Refusal
from echod.udp.guard import UdpCounters

log = logging.getLogger("echod")

# STATUS= lines and watchdog pings are sent from a timer inside each backend's loop, so
# a stuck loop stops them and systemd restarts the service.
STATUS_INTERVAL = 5.0


def heartbeat_interval(watchdog_interval: float | None) -> float:
    """Seconds between heartbeats: every STATUS_INTERVAL, or faster for systemd's watchdog."""
    return min(STATUS_INTERVAL, watchdog_interval or STATUS_INTERVAL)


# Stats fields of the admission's refusals, one per echod.admission.Refusal value.
REFUSED = tuple(f"refused_{refusal.value}" for refusal in Refusal)


@dataclass(slots=True)
class Stats:
    """Counters of one serving process; cheap enough to bump per message."""

    started: float = field(default_factory=time.monotonic)
    connections_open: int = 0
    connections_total: int = 0
    # Accepted and closed at once, by reason: past select's FD_SETSIZE, or no descriptor
    # or thread to serve it with (shed with the spare descriptor).
    refused_fd_setsize: int = 0
    refused_resources: int = 0
    bytes_in: int = 0
    bytes_out: int = 0
    # accept() failures that were not a new client: the client left first, or the process
    # ran out of descriptors or memory.
    accept_errors_peer_gone: int = 0
    accept_errors_exhausted: int = 0
    idle_closed: int = 0  # closed by --idle-timeout
    # Refused by the admission rules (echod.admission.Refusal), closed with a reset
    # before any byte was read; and connections closed to give their slot away.
    refused_denied: int = 0
    refused_per_source: int = 0
    refused_connect_rate: int = 0
    refused_full: int = 0
    refused_proxy_peer: int = 0
    refused_proxy_header: int = 0
    gave_way: int = 0
    flow_paused: int = 0  # times a client's reading was paused at the high-water mark
    udp: UdpCounters | None = None  # set by the datagram service when there are UDP listeners

    def opened(self) -> None:
        self.connections_open += 1
        self.connections_total += 1

    def closed(self) -> None:
        self.connections_open -= 1

    @property
    def connections_dropped(self) -> int:
        return self.refused_fd_setsize + self.refused_resources

    # The counters a worker's heartbeat carries to its supervisor, in this order: the
    # one codec for Stats crossing a pipe (encode in the worker, decode and add up in
    # the supervisor).
    COUNTERS = (
        "connections_open",
        "connections_total",
        "refused_fd_setsize",
        "refused_resources",
        "bytes_in",
        "bytes_out",
        "accept_errors_peer_gone",
        "accept_errors_exhausted",
        "idle_closed",
        "flow_paused",
        *REFUSED,
        "gave_way",
    )

    def encode(self) -> str:
        words = [str(getattr(self, name)) for name in self.COUNTERS]
        if self.udp is not None:  # UDP listeners: their counters follow
            words += self.udp.encode()
        return " ".join(words)

    @classmethod
    def decode(cls, text: str) -> Stats:
        """The counters :meth:`encode` wrote; ValueError for anything else."""
        words = text.split()
        sizes = (len(cls.COUNTERS), len(cls.COUNTERS) + UdpCounters.WORDS)
        if len(words) not in sizes or not all(word.isdigit() for word in words):
            raise ValueError(f"not a stats record: {text!r}")
        stats = cls()
        for name, word in zip(cls.COUNTERS, words, strict=False):
            setattr(stats, name, int(word))
        if len(words) > len(cls.COUNTERS):
            stats.udp = UdpCounters.decode(words[len(cls.COUNTERS) :])
        return stats

    def add(self, other: Stats) -> None:
        for name in self.COUNTERS:
            setattr(self, name, getattr(self, name) + getattr(other, name))
        if other.udp is not None:
            if self.udp is None:
                self.udp = UdpCounters()
            self.udp.add(other.udp)

    def counts(self) -> dict[str, int]:
        """The counters as one structured log field (``--log-format json``)."""
        return {name: getattr(self, name) for name in self.COUNTERS}

    def refusals(self) -> str:
        """The admission's refusals and fair-share closes, only those that happened."""
        words = [
            f"{name.removeprefix('refused_')}={getattr(self, name)}"
            for name in REFUSED
            if getattr(self, name)
        ]
        if self.gave_way:
            words.append(f"gave_way={self.gave_way}")
        return f" refused {' '.join(words)}" if words else ""

    def summary(self) -> str:
        uptime = time.monotonic() - self.started
        udp = f" {self.udp.summary()}" if self.udp is not None else ""
        return (
            f"connections open={self.connections_open} total={self.connections_total} "
            f"dropped={self.connections_dropped} bytes in={self.bytes_in} "
            f"out={self.bytes_out}{self.refusals()}{udp} uptime={uptime:.0f}s"
        )


class Notifier(Protocol):
    """The part of sd_notify a backend's lifecycle needs (echod.service.notify.Notifier)."""

    def ready(self, status: str | None = None) -> object: ...
    def status(self, text: str) -> object: ...
    def watchdog(self) -> object: ...
    def stopping(self) -> object: ...


class Command(enum.Enum):
    """What a signal asks of a serving loop."""

    DRAIN = "drain"  # stop accepting, let connections finish, exit 0
    EXIT_NOW = "exit-now"  # close everything at once
    REPORT = "report"  # log the counters
    REFRESH = "refresh"  # pass fresh counters on without logging (a metrics scrape)


REPORT_SIGNALS = (signal.SIGUSR1, signal.SIGUSR2)
HANDLED_SIGNALS = (signal.SIGTERM, signal.SIGINT, *REPORT_SIGNALS)


def ignore_report_signals() -> None:
    """SIGUSR1 and SIGUSR2 with no loop to answer them: ignored, since their default
    action (death) would cost the final tally and the exit status."""
    for signum in REPORT_SIGNALS:
        signal.signal(signum, signal.SIG_IGN)


@contextlib.contextmanager
def report_signals_held() -> Iterator[None]:
    """While a loop gives its signal handlers back (asyncio's, uvloop's and gevent's put
    the default action back): report signals wait, blocked in this thread, and are
    dropped once ignored. The reactor's loops restore what they found, which
    ``ignore_report_signals`` before their start made "ignored"; the threads backend's
    other threads never see the default action."""
    signal.pthread_sigmask(signal.SIG_BLOCK, REPORT_SIGNALS)
    try:
        yield
    finally:
        ignore_report_signals()
        signal.pthread_sigmask(signal.SIG_UNBLOCK, REPORT_SIGNALS)


class Lifecycle:
    """Readiness, heartbeats and signal meaning for one serving process."""

    def __init__(
        self,
        stats: Stats | None = None,
        notifier: Notifier | None = None,
        watchdog_interval: float | None = None,
    ) -> None:
        self.stats = stats if stats is not None else Stats()
        self.notifier = notifier
        self.draining = False
        self._interrupts = 0
        self.heartbeat_interval = heartbeat_interval(watchdog_interval)

    def ready(self, addresses: Sequence[str], backend: str) -> None:
        """Every listener accepts: only now may systemd be told READY=1."""
        for address in addresses:
            log.info("listening on %s (backend %s)", address, backend)
        if self.notifier:
            self.notifier.ready(status=self.stats.summary())

    def heartbeat(self) -> None:
        if self.notifier:
            self.notifier.watchdog()
            self.notifier.status(self.stats.summary())

    def command(self, signum: int) -> Command:
        """Map a signal to what the loop must do; a second SIGINT forces the exit."""
        if signum == signal.SIGUSR1:
            return Command.REPORT
        if signum == signal.SIGUSR2:
            return Command.REFRESH
        if signum == signal.SIGINT:
            self._interrupts += 1
            if self._interrupts > 1:
                return Command.EXIT_NOW
        return Command.DRAIN

    def report(self) -> None:
        log.info("stats: %s", self.stats.summary(), extra={"counts": self.stats.counts()})
        # The supervisor adds up its workers' counters on the same SIGUSR1.
        self.refresh()

    def refresh(self) -> None:
        """Fresh counters to whoever listens (systemd's STATUS=, or the supervisor, which
        asks before it answers a metrics scrape), without a log line."""
        if self.notifier:
            self.notifier.status(self.stats.summary())

    def start_draining(self, graceful_timeout: float) -> None:
        self.draining = True
        log.info(
            "stopping: %d connection(s) open, waiting up to %gs for them to finish",
            self.stats.connections_open,
            graceful_timeout,
        )
        if self.notifier:
            self.notifier.stopping()

    def stopped(self) -> None:
        log.info("stopped: %s", self.stats.summary(), extra={"counts": self.stats.counts()})
        if self.notifier:
            self.notifier.status(self.stats.summary())  # a supervisor's final tally
