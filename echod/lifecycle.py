"""What every backend reports to: counters, readiness, heartbeats and signals.

Backends differ in how they wait for IO, never in what a signal means or what systemd
is told. They call into one :class:`Lifecycle`, so those rules live here once.
"""

from __future__ import annotations

import contextlib
import enum
import logging
import signal
import socket
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from echod.admission import Refusal
from echod.service import channel
from echod.tls_counters import TlsCounters
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
    tls: TlsCounters | None = None  # set by the serving core when there are tls: listeners

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
        if self.tls is not None:  # tls: listeners: the word tls, then theirs (KIND:...=N)
            words += ["tls", *self.tls.encode()]
        return " ".join(words)

    @classmethod
    def decode(cls, text: str) -> Stats:
        """The counters :meth:`encode` wrote; ValueError for anything else."""
        head, tls_marker, tls_words = text.partition(" tls")
        words = head.split()
        sizes = (len(cls.COUNTERS), len(cls.COUNTERS) + UdpCounters.WORDS)
        if len(words) not in sizes or not all(word.isdigit() for word in words):
            raise ValueError(f"not a stats record: {text!r}")
        stats = cls()
        for name, word in zip(cls.COUNTERS, words, strict=False):
            setattr(stats, name, int(word))
        if len(words) > len(cls.COUNTERS):
            stats.udp = UdpCounters.decode(words[len(cls.COUNTERS) :])
        if tls_marker:
            stats.tls = TlsCounters.decode(tls_words.split())
        return stats

    def add(self, other: Stats) -> None:
        for name in self.COUNTERS:
            setattr(self, name, getattr(self, name) + getattr(other, name))
        if other.udp is not None:
            if self.udp is None:
                self.udp = UdpCounters()
            self.udp.add(other.udp)
        if other.tls is not None:
            if self.tls is None:
                self.tls = TlsCounters()
            self.tls.add(other.tls)

    def counts(self) -> dict[str, int]:
        """The counters as one structured log field (``--log-format json``), with the
        text line's ``dropped=`` under the same name."""
        counts = {name: getattr(self, name) for name in self.COUNTERS}
        counts["connections_dropped"] = self.connections_dropped
        return counts

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
        tls = f" {self.tls.summary()}" if self.tls is not None else ""
        return (
            f"connections open={self.connections_open} total={self.connections_total} "
            f"dropped={self.connections_dropped} bytes in={self.bytes_in} "
            f"out={self.bytes_out}{self.refusals()}{udp}{tls} uptime={uptime:.0f}s"
        )


class Notifier(Protocol):
    """The part of sd_notify a backend's lifecycle needs (echod.service.notify.Notifier)."""

    def ready(self, status: str | None = None) -> object: ...
    def status(self, text: str) -> object: ...
    def watchdog(self) -> object: ...
    def stopping(self) -> object: ...


class Command(enum.Enum):
    """What a signal or a supervisor's request asks of a serving loop."""

    DRAIN = "drain"  # stop accepting, let connections finish, exit 0
    EXIT_NOW = "exit-now"  # close everything at once
    REPORT = "report"  # log the counters (and answer with them)
    COLLECT = "collect"  # answer with fresh counters, without logging (a metrics scrape)
    RELOAD = "reload"  # SIGHUP: a supervisor's job
    UPGRADE = "upgrade"  # SIGUSR2: a supervisor's job


# Signals that ask for something other than an end: their default action (death) must
# never be what a serving process does with them.
CONTROL_SIGNALS = (signal.SIGHUP, signal.SIGUSR1, signal.SIGUSR2)
HANDLED_SIGNALS = (signal.SIGTERM, signal.SIGINT, *CONTROL_SIGNALS)
_SIGNAL_COMMANDS: dict[int, Command] = {
    signal.SIGUSR1: Command.REPORT,
    signal.SIGHUP: Command.RELOAD,
    signal.SIGUSR2: Command.UPGRADE,
}
_REQUEST_COMMANDS = {
    channel.COLLECT: Command.COLLECT,
    channel.REPORT: Command.REPORT,
    channel.DRAIN: Command.DRAIN,
}


def ignore_control_signals() -> None:
    """SIGHUP, SIGUSR1 and SIGUSR2 with no loop to answer them: ignored, since their
    default action (death) would cost the connections, the final tally and the exit
    status."""
    for signum in CONTROL_SIGNALS:
        signal.signal(signum, signal.SIG_IGN)


@contextlib.contextmanager
def control_signals_held() -> Iterator[None]:
    """While a loop gives its signal handlers back (asyncio's, uvloop's and gevent's put
    the default action back): control signals wait, blocked in this thread, and are
    dropped once ignored. The reactor's loops restore what they found, which
    ``ignore_control_signals`` before their start made "ignored"; the threads backend's
    other threads never see the default action."""
    signal.pthread_sigmask(signal.SIG_BLOCK, CONTROL_SIGNALS)
    try:
        yield
    finally:
        ignore_control_signals()
        signal.pthread_sigmask(signal.SIG_UNBLOCK, CONTROL_SIGNALS)


class Control(Protocol):
    """A worker's end of its supervisor's channel (echod.service.worker_process)."""

    sock: socket.socket

    def receive(self) -> list[channel.Message] | None: ...
    def answer(self, request: int, stats: Stats) -> object: ...


class Lifecycle:
    """Readiness, heartbeats and signal meaning for one serving process."""

    def __init__(
        self,
        stats: Stats | None = None,
        notifier: Notifier | None = None,
        watchdog_interval: float | None = None,
        control: Control | None = None,
        *,
        signals: bool = True,
        drain_quiet: float | None = None,
    ) -> None:
        self.stats = stats if stats is not None else Stats()
        self.notifier = notifier
        self.control = control  # set in a worker: its supervisor's requests
        # False when embedded (echod.running, echod.serving): the host owns the process's
        # signals, and the server stops through its control channel alone.
        self.signals = signals
        # How long a drained connection must be quiet to be closed (None: the daemon's).
        self.drain_quiet = drain_quiet
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
        if signum in _SIGNAL_COMMANDS:
            return _SIGNAL_COMMANDS[signum]
        if signum == signal.SIGINT:
            self._interrupts += 1
            if self._interrupts > 1:
                return Command.EXIT_NOW
        return Command.DRAIN

    @staticmethod
    def request(message: channel.Message) -> Command | None:
        """What a supervisor's request asks; None for a kind this worker does not know."""
        return _REQUEST_COMMANDS.get(message.kind)

    def report(self, request: int = 0) -> None:
        log.info("stats: %s", self.stats.summary(), extra={"counts": self.stats.counts()})
        self.refresh(request)  # the supervisor adds up its workers' answers

    def refresh(self, request: int = 0) -> None:
        """Fresh counters to whoever listens: the supervisor that asked, or systemd's
        STATUS=, without a log line."""
        if self.control is not None:
            self.control.answer(request, self.stats)
        elif self.notifier:
            self.notifier.status(self.stats.summary())

    def needs_supervisor(self, command: Command) -> None:
        """SIGHUP or SIGUSR2 reached a process that cannot reload or upgrade itself: a
        line that says where to send it, and serving goes on."""
        what = "a reload (SIGHUP)" if command is Command.RELOAD else "an upgrade (SIGUSR2)"
        if self.control is not None:
            log.warning("%s is the supervisor's to do: signal the supervisor, not a worker", what)
        else:
            log.warning(
                "%s needs a supervisor (start echod with --config, --workers or --metrics); "
                "serving on unchanged",
                what,
            )

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
