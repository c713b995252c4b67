"""The supervisor's side of ``--workers``: forks workers, restarts those that die, speaks
to systemd. What a worker does once forked is :mod:`echod.service.worker_process`.

As gunicorn's arbiter does, the supervisor never accepts or reads a client socket; it
only holds listeners for its workers to inherit. Signals are queued through a wakeup
fd (each byte written is a signal number) and handled from the loop by
``handle_<signame>()`` methods, never inside a signal handler.

Workers report over one pipe each, in the lines of
:class:`~echod.service.worker_process.PipeReporter`. The supervisor adds their
:class:`~echod.lifecycle.Stats` up, sends systemd ``READY=1`` once
every worker is ready, and pings the watchdog from its own loop while at least one
worker is alive; a worker whose heartbeats stop is killed and restarted, so one stuck
worker does not get the whole service restarted.

Listen modes, for TCP addresses (Unix and socket-activated sockets are always shared):

``shared``
    One socket bound here and inherited by every worker: one accept queue, so a worker
    that exits loses no queued connection; the kernel wakes whichever worker is waiting.
``reuseport``
    A ``SO_REUSEPORT`` socket bound by each worker after fork; the kernel spreads new
    connections by a hash of their addresses. The supervisor keeps only a reservation
    (:func:`echod.net.listeners.reserve`) that holds the port while workers come and go.
    A worker's queue dies with it (those clients see a reset), the price of per-worker
    queues.
"""

from __future__ import annotations

import contextlib
import logging
import os
import selectors
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from echod.backends.base import Backend
from echod.config import Config
from echod.lifecycle import Stats, heartbeat_interval
from echod.metrics.endpoint import MetricsEndpoint
from echod.metrics.exposition import render
from echod.metrics.figures import scrape
from echod.net.listener_set import Listeners
from echod.service.notify import Notifier
from echod.service.worker_process import Handoff, run_worker
from echod.wakeup import WakeupSocketpair

log = logging.getLogger("echod")

SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGUSR1, signal.SIGUSR2, signal.SIGCHLD)
# Restart back-off after a worker dies: 0.1 s, doubling to at most 10 s; a worker that
# has served this long since its start resets it.
RESTART_FIRST = 0.1
RESTART_CAP = 10.0
STABLE_AFTER = 30.0
# A worker silent for this many heartbeat intervals is stuck (a loop that never returns
# to its timers); a floor keeps a busy two-core box from killing healthy workers.
STALL_INTERVALS = 3
STALL_FLOOR = 1.0
# How long a forked worker may take to report READY before it counts as stuck.
START_TIMEOUT = 30.0
# After graceful_timeout the workers close their connections themselves; this is the
# slack before the supervisor SIGKILLs one that still has not exited.
KILL_MARGIN = 5.0
# How long to wait for every worker's fresh counters (SIGUSR1's log line, a scrape)
# before going on with those that came: a stuck worker delays neither by more.
REPORT_WAIT = 1.0


@dataclass
class Worker:
    """A forked worker as the supervisor sees it."""

    slot: int  # 1..N, kept across restarts: the id in logs and STATUS=
    pid: int
    reports: int  # read end of its pipe
    started: float
    last_seen: float
    ready: bool = False
    killed: bool = False
    asked_to_stop: bool = False  # sent SIGTERM or SIGINT
    draining: bool = False  # said STOPPING: it has handled that signal
    held: list[int] = field(default_factory=list)  # signals to send once it has
    counters: Stats = field(default_factory=Stats)
    partial: bytes = b""


@dataclass(eq=False)
class Round:
    """One collection of fresh counters: the slots yet to answer, and what follows."""

    waiting: set[int]
    due: float
    then: Callable[[], None]


@dataclass
class Slot:
    """What outlives one worker of a slot: its restart back-off and past counters."""

    failures: int = 0
    restart_at: float | None = None
    retired: Stats = field(default_factory=Stats)
    starts: int = 0  # workers forked for it: restarts are starts - 1


def describe_exit(status: int) -> str:
    code = os.waitstatus_to_exitcode(status)
    if code < 0:
        return f"killed by {signal.Signals(-code).name}"
    return f"exited with status {code}"


class Supervisor:
    """Forks ``config.workers`` workers and keeps them serving until told to stop."""

    def __init__(
        self,
        config: Config,
        backend: Backend,
        listeners: Listeners,
        notifier: Notifier,
        watchdog_interval: float | None,
    ) -> None:
        self.config = config
        self.backend = backend
        self.listeners = listeners
        self.notifier = notifier
        self.watchdog_interval = watchdog_interval
        self.interval = heartbeat_interval(watchdog_interval)
        self.stall_after = max(STALL_INTERVALS * self.interval, STALL_FLOOR)
        self.slots = {n: Slot() for n in range(1, config.workers + 1)}
        self.workers: dict[int, Worker] = {}  # by pid
        self.selector = selectors.DefaultSelector()
        self.announced = False  # READY=1 sent
        self.stopping = False
        self.interrupts = 0
        self.exit_status = 0
        self.kill_at: float | None = None
        self.next_tick = 0.0
        self.rounds: list[Round] = []  # collections of fresh counters under way
        self.wakeup = WakeupSocketpair()
        self.pid = os.getpid()
        self.metrics: MetricsEndpoint | None = None  # --metrics: served from this loop

    # Running ---------------------------------------------------------------------------
    def run(self) -> int:
        self.selector.register(self.wakeup.fileno(), selectors.EVENT_READ, self._read_signals)
        if self.listeners.metrics is not None:
            self.metrics = MetricsEndpoint(
                self.listeners.metrics, self._render_metrics, self.collect
            )
            self.selector.register(
                self.metrics.fileno(), selectors.EVENT_READ, self.metrics.on_ready
            )
        self.wakeup.wakeup_on_signals()
        old_handlers = {signum: signal.signal(signum, _queued) for signum in SIGNALS}
        log.info(
            "supervisor %d: starting %d workers (backend %s, listen mode %s)",
            os.getpid(),
            len(self.slots),
            self.backend.name,
            "reuseport" if self.listeners.per_worker else "shared",
        )
        try:
            for slot in self.slots:
                self.spawn(slot)
            while self.workers or not self.stopping:
                self._wait()
                self._tick(time.monotonic())
        finally:
            for signum, handler in old_handlers.items():
                signal.signal(signum, handler)
            self.selector.close()
            self.wakeup.close()
            if self.metrics is not None:
                self.metrics.close()
        log.info("stopped: %s", self.summary())
        return self.exit_status

    def _wait(self) -> None:
        now = time.monotonic()
        deadlines = [self.next_tick, self.kill_at]
        deadlines += [slot.restart_at for slot in self.slots.values()]
        deadlines += [r.due for r in self.rounds]
        soonest = min(d for d in deadlines if d is not None)
        for key, _ in self.selector.select(max(0.0, soonest - now)):
            callback: Callable[[], None] = key.data
            callback()

    def _tick(self, now: float) -> None:
        if self.kill_at is not None and now >= self.kill_at:
            self.kill_at = None
            for worker in self.workers.values():
                log.warning("worker %d (pid %d) is still running: SIGKILL", worker.slot, worker.pid)
                _kill(worker.pid, signal.SIGKILL)
        for number, slot in self.slots.items():
            if slot.restart_at is not None and now >= slot.restart_at:
                slot.restart_at = None
                self.spawn(number)
        self._end_rounds(now)
        if self.metrics is not None:
            self.metrics.expire(now)
        if now >= self.next_tick:
            self.next_tick = now + self.interval
            if not self.stopping:
                self._check_heartbeats(now)

    def _check_heartbeats(self, now: float) -> None:
        """Kill stuck workers; ping systemd's watchdog only while some worker is alive."""
        alive = 0
        for worker in self.workers.values():
            silent = now - worker.last_seen
            allowed = self.stall_after if worker.ready else START_TIMEOUT
            if worker.killed:
                continue
            if silent > allowed:
                log.error(
                    "worker %d (pid %d) sent no heartbeat for %.1fs: killing it",
                    worker.slot,
                    worker.pid,
                    silent,
                )
                worker.killed = True
                _kill(worker.pid, signal.SIGKILL)
            elif worker.ready:
                alive += 1
                slot = self.slots[worker.slot]
                if slot.failures and now - worker.started > STABLE_AFTER:
                    slot.failures = 0
        if alive or not self.announced:
            self.notifier.watchdog()
        if self.announced:
            self.notifier.status(self.summary())

    # Workers ---------------------------------------------------------------------------
    def spawn(self, slot: int) -> None:
        read_fd, write_fd = os.pipe()
        os.set_blocking(read_fd, False)
        os.set_blocking(write_fd, False)
        # Blocked across fork so that a signal cannot reach the child while it still runs
        # the supervisor's handlers (which would feed the supervisor's own wakeup fd).
        previous = signal.pthread_sigmask(signal.SIG_BLOCK, SIGNALS)
        try:
            pid = os.fork()
        except OSError as exc:
            signal.pthread_sigmask(signal.SIG_SETMASK, previous)
            os.close(read_fd)
            os.close(write_fd)
            log.error("cannot fork worker %d: %s", slot, exc.strerror)
            self._schedule_restart(slot)
            return
        if pid == 0:
            os.close(read_fd)
            handoff = Handoff(
                slot=slot,
                report_fd=write_fd,
                supervisor_pid=self.pid,
                signals=SIGNALS,
                inherited_fds=[
                    self.selector.fileno(),
                    self.wakeup.wakeup_sock.fileno(),
                    self.wakeup.write_sock.fileno(),
                    *(w.reports for w in self.workers.values()),
                    *(self.metrics.fds() if self.metrics is not None else ()),
                ],
                watchdog_interval=self.watchdog_interval,
            )
            run_worker(handoff, self.backend, self.config, self.listeners)
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)
        os.close(write_fd)
        self.slots[slot].starts += 1
        now = time.monotonic()
        worker = Worker(slot, pid, read_fd, started=now, last_seen=now)
        self.workers[pid] = worker
        self.selector.register(read_fd, selectors.EVENT_READ, lambda: self._read_reports(worker))
        log.info("worker %d started (pid %d)", slot, pid)

    def _schedule_restart(self, number: int) -> None:
        slot = self.slots[number]
        delay = min(RESTART_FIRST * 2**slot.failures, RESTART_CAP)
        slot.failures += 1
        slot.restart_at = time.monotonic() + delay
        log.info("restarting worker %d in %.1fs", number, delay)

    def _read_reports(self, worker: Worker) -> None:
        if self.workers.get(worker.pid) is not worker:
            return  # reaped earlier in this same batch of events: its fd is closed
        try:
            data = os.read(worker.reports, 65536)
        except (BlockingIOError, InterruptedError):
            return
        if not data:  # the worker closed its end: it is exiting; SIGCHLD will follow
            self.selector.unregister(worker.reports)
            return
        worker.last_seen = time.monotonic()
        *lines, worker.partial = (worker.partial + data).split(b"\n")
        for line in lines:
            self._on_report(worker, line.decode(errors="replace").split())

    def _on_report(self, worker: Worker, words: list[str]) -> None:
        if not words:
            return
        kind = words[0]
        if kind == "STATS":
            try:
                worker.counters = Stats.decode(" ".join(words[1:]))
            except ValueError:
                log.warning("worker %d sent a malformed report: %s", worker.slot, " ".join(words))
                return
            self._answered(worker.slot)
        elif kind == "STOPPING":
            worker.draining = True
            for signum in worker.held:
                _kill(worker.pid, signum)
            worker.held = []
        elif kind == "READY":
            worker.ready = True
            if not self.announced and not self.stopping and self._all_ready():
                self.announced = True
                log.info("ready: %d workers serving", len(self.workers))
                self.notifier.send(READY=1, MAINPID=os.getpid(), STATUS=self.summary())

    def _all_ready(self) -> bool:
        ready = {w.slot for w in self.workers.values() if w.ready}
        return ready == set(self.slots)

    def _reap(self) -> None:
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            worker = self.workers.pop(pid, None)
            if worker is not None:
                self._retire(worker, status)

    def _retire(self, worker: Worker, status: int) -> None:
        with contextlib.suppress(KeyError, ValueError):
            self.selector.unregister(worker.reports)
        with contextlib.suppress(OSError):  # its last counters may still be in the pipe
            while data := os.read(worker.reports, 65536):
                *lines, worker.partial = (worker.partial + data).split(b"\n")
                for line in lines:
                    self._on_report(worker, line.decode(errors="replace").split())
        os.close(worker.reports)
        self.slots[worker.slot].retired.add(worker.counters)
        self._answered(worker.slot)
        how = describe_exit(status)
        if self.stopping:
            log.info("worker %d (pid %d) %s", worker.slot, worker.pid, how)
            return
        if not worker.ready and not self.announced:
            # It never served: restarting would only fail again (bad backend, address).
            log.error(
                "worker %d (pid %d) %s before it was ready: stopping", worker.slot, worker.pid, how
            )
            self.exit_status = 1
            self._stop()
            return
        log.error("worker %d (pid %d) %s", worker.slot, worker.pid, how)
        self._schedule_restart(worker.slot)

    # Signals ---------------------------------------------------------------------------
    def _read_signals(self) -> None:
        for signum in self.wakeup.drain():
            name = signal.Signals(signum).name
            handler: Callable[[], None] = getattr(self, f"handle_{name[3:].lower()}")
            handler()

    def handle_chld(self) -> None:
        self._reap()

    def handle_term(self) -> None:
        self._stop(signal.SIGTERM)

    def handle_int(self) -> None:
        # Forwarded one for one, so each worker counts the operator's interrupts as a
        # single process would: the second closes everything at once. (Sending two
        # signals at a time would not do: the kernel merges a pending duplicate.)
        self.interrupts += 1
        if self.interrupts > 1:
            log.warning("second interrupt: workers close their connections now")
        self._stop(signal.SIGINT)

    def handle_usr1(self) -> None:
        """Each worker logs its counters, then the supervisor logs their sum."""
        self.collect(lambda: log.info("stats (all workers): %s", self.summary()), signal.SIGUSR1)

    def handle_usr2(self) -> None:
        """Fresh counters into systemd's STATUS=, without a log line."""
        self.collect(self._tell_status)

    def _tell_status(self) -> None:
        if self.announced:
            self.notifier.status(self.summary())

    # Fresh counters --------------------------------------------------------------------
    def collect(self, then: Callable[[], None], signum: int = signal.SIGUSR2) -> None:
        """Ask every ready worker for fresh counters with ``signum``; call ``then`` once
        all have answered or ``REPORT_WAIT`` has passed, whichever is first."""
        ready = [w for w in self.workers.values() if w.ready]
        if not ready:
            then()
            return
        for worker in ready:  # a heartbeat's counters already in the pipe answer nothing
            self._read_reports(worker)
        self.rounds.append(Round({w.slot for w in ready}, time.monotonic() + REPORT_WAIT, then))
        for worker in ready:  # one still starting has the signal's default action: death
            _kill(worker.pid, signum)

    def _answered(self, slot: int) -> None:
        for round_ in self.rounds:
            round_.waiting.discard(slot)
        self._end_rounds(time.monotonic())

    def _end_rounds(self, now: float) -> None:
        ended = [r for r in self.rounds if not r.waiting or now >= r.due]
        self.rounds = [r for r in self.rounds if r not in ended]
        for round_ in ended:
            round_.then()

    def _stop(self, signum: int = signal.SIGTERM) -> None:
        """Begin stopping (once) and pass ``signum`` on to every worker (each time)."""
        self._signal_workers(signum)
        if self.stopping:
            return
        self.stopping = True
        grace = self.config.graceful_timeout
        log.info("stopping: %d worker(s) drain for up to %gs", len(self.workers), grace)
        self.notifier.stopping()
        self.kill_at = time.monotonic() + grace + KILL_MARGIN
        for slot in self.slots.values():
            slot.restart_at = None
        # Workers close their copies as they drain; once ours is closed too, a new
        # client is refused at once instead of waiting in a queue nobody serves.
        for sock in self.listeners.shared:
            sock.close()

    def _signal_workers(self, signum: int) -> None:
        """Send ``signum`` to every worker; a stop signal only after the previous one
        was handled, since the kernel merges a signal into a pending one of its kind."""
        for worker in self.workers.values():
            if worker.asked_to_stop and not worker.draining:
                worker.held.append(signum)
                continue
            worker.asked_to_stop = True
            _kill(worker.pid, signum)

    def _render_metrics(self, openmetrics: bool) -> str:
        return render(scrape(self), openmetrics)

    def summary(self) -> str:
        total = Stats()
        per_worker = []
        for number, slot in sorted(self.slots.items()):
            total.add(slot.retired)
            current = next((w.counters for w in self.workers.values() if w.slot == number), None)
            if current is not None:
                total.add(current)
                per_worker.append(
                    f"{number}={current.connections_open}/{current.connections_total}"
                )
            else:
                per_worker.append(f"{number}=down")
        return (
            f"workers={len(self.workers)} connections open={total.connections_open} "
            f"total={total.connections_total} dropped={total.connections_dropped} "
            f"bytes in={total.bytes_in} out={total.bytes_out}{total.refusals()}"
            f"{'' if total.udp is None else ' ' + total.udp.summary()}; "
            f"per worker open/total: {' '.join(per_worker)}"
        )


def _queued(signum: int, frame: object) -> None:
    """The C-level handler has already written ``signum`` to the wakeup fd: the queue."""


def _kill(pid: int, signum: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signum)
