"""The supervisor: forks workers, restarts those that die, reloads, upgrades, speaks to systemd.

What a worker does once forked is :mod:`echod.service.worker_process`. As gunicorn's
arbiter does, the supervisor never accepts or reads a client socket; it holds every
listener (:mod:`echod.net.listener_set`), so a listener outlives any worker: a replaced
worker's accept queue is served by its replacement, and sockets can be handed on to new
code. It runs on echod's own :class:`~echod.loop.Reactor`, the loop the workers use, with
the metrics endpoint registered on it: one loop, one place for its signals.

Signals (``handle_<signame>``, run from the loop, never inside a handler):

``TERM``, ``INT``
    drain: passed on to every worker, the only signals a worker receives.
``HUP``
    reload: re-read the configuration (command line, ``ECHOD_*``, ``--config`` file),
    start a new generation of workers with it, and once every one of them is ready,
    ask the old ones to drain. A configuration that cannot be applied is refused whole,
    and the old keeps serving.
``USR2``
    upgrade: start new code with the listeners (:mod:`echod.service.upgrade`); once it
    is ready, drain and exit. If it fails, it is stopped and the old keeps serving.
``USR1``
    log the counters of every worker and their sum.

Each worker has a :mod:`~echod.service.channel` for everything else: readiness,
heartbeats, counters (asked for by id, for a scrape or SIGUSR1) and "drain".
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import os
import selectors
import signal
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from echod import backends
from echod.backends.base import Backend
from echod.config import Config, ConfigError
from echod.lifecycle import Stats, heartbeat_interval
from echod.loop import READ, Reactor, Timer, io_manager
from echod.metrics import process
from echod.metrics.endpoint import MetricsEndpoint
from echod.metrics.exposition import render
from echod.metrics.figures import ControlFigures, families
from echod.net.addresses import ListenerError
from echod.net.listener_set import Listeners, Named
from echod.service import ServiceError, channel, tally, upgrade
from echod.service.channel import Channel, Message
from echod.service.generation import Change, Reread, Served, prepare
from echod.service.notify import Notifier
from echod.service.tally import Slot, Worker
from echod.service.worker_process import Handoff, run_worker

log = logging.getLogger("echod")

SIGNALS = (
    signal.SIGTERM,
    signal.SIGINT,
    signal.SIGHUP,
    signal.SIGUSR1,
    signal.SIGUSR2,
    signal.SIGCHLD,
)
# Restart back-off after a worker dies: 0.1 s, doubling to at most 10 s; a worker that
# has served this long since its start resets it.
RESTART_FIRST = 0.1
RESTART_CAP = 10.0
STABLE_AFTER = 30.0
# A worker silent for this many heartbeat intervals is stuck (a loop that never returns
# to its timers); a floor keeps a busy two-core box from killing healthy workers.
STALL_INTERVALS = 3
STALL_FLOOR = 1.0
# How long a forked worker, or new code on an upgrade, may take to be ready.
START_TIMEOUT = 30.0
# After graceful_timeout the workers close their connections themselves; this is the
# slack before the supervisor SIGKILLs one that still has not exited.
KILL_MARGIN = 5.0
# How long to wait for every worker's fresh counters (SIGUSR1's log line, a scrape)
# before going on with those that came: a stuck worker delays neither by more.
REPORT_WAIT = 1.0
MIGRATE_SYSCTL = "/proc/sys/net/ipv4/tcp_migrate_req"


@dataclass(eq=False)
class Round:
    """One collection of fresh counters: the workers yet to answer, and what follows."""

    request: int
    waiting: set[int]  # pids
    then: Callable[[], None]
    timer: Timer | None = None


def describe_exit(status: int) -> str:
    code = os.waitstatus_to_exitcode(status)
    if code < 0:
        return f"killed by {signal.Signals(-code).name}"
    return f"exited with status {code}"


class Supervisor:
    """Forks ``config.workers`` workers and keeps them serving until told to stop."""

    def __init__(
        self,
        served: Served,
        notifier: Notifier,
        watchdog_interval: float | None,
        *,
        reread: Reread | None = None,
        argv: Sequence[str] = (),
        predecessor: Channel | None = None,
    ) -> None:
        self.served = served
        self.notifier = notifier
        self.watchdog_interval = watchdog_interval
        self.reread = reread
        self.argv = list(argv)
        self.interval = heartbeat_interval(watchdog_interval)
        self.stall_after = max(STALL_INTERVALS * self.interval, STALL_FLOOR)
        self.slots: dict[int, Slot] = {}
        self.workers: dict[int, Worker] = {}  # by pid
        self.reactor = Reactor(io_manager(_best_selector()))
        self.announced = False  # every worker of the first generation was ready
        self.told_systemd = False  # READY=1 sent
        self.stopping = False
        self.handed_over = False  # an upgrade's successor serves: exit, leave the paths
        self.interrupts = 0
        self.exit_status = 0
        self.requests = itertools.count(1)
        self.rounds: dict[int, Round] = {}  # collections of fresh counters under way
        self.change: Change | None = None
        self.reload_again = False  # SIGHUP during a change: one more once it ends
        self.reloads: Counter[tuple[str, str]] = Counter()  # (kind, result)
        self.predecessor = predecessor  # an upgrade's old supervisor
        self.inherited = Stats()  # its totals, once handed over
        self.generations_before = 0  # configurations its predecessors served
        self.successor: Channel | None = None  # after an upgrade: takes our totals
        self.pid = os.getpid()
        self.metrics: MetricsEndpoint | None = None  # --metrics: served from this loop

    @property
    def config(self) -> Config:
        return self.served.config

    @property
    def backend(self) -> Backend:
        return self.served.backend

    @property
    def listeners(self) -> Listeners:
        return self.served.listeners

    @property
    def generation(self) -> int:
        return self.served.generation

    @property
    def config_generation(self) -> int:
        """Configurations served so far, counting those of the echods this one replaced."""
        return self.generations_before + self.generation

    # Running ---------------------------------------------------------------------------
    def run(self) -> int:
        reactor = self.reactor
        if self.listeners.metrics is not None:
            self.metrics = MetricsEndpoint(
                self.listeners.metrics.sock, self._render_metrics, self.collect, reactor
            )
            reactor.call_every(0.5, self.metrics.expire)
        if self.predecessor is not None:
            self._watch_link(self.predecessor, self._on_predecessor)
        reactor.handle_signals(SIGNALS, self._on_signal)
        reactor.call_every(self.interval, self._check_heartbeats)
        log.info(
            "supervisor %d: starting %d workers (backend %s, listen mode %s)",
            self.pid,
            self.config.workers,
            self.backend.name,
            self._mode(),
        )
        try:
            self._start_generation()
            reactor.run()
        finally:
            if self.metrics is not None:
                self.metrics.close()
            reactor.close()
        log.info("stopped: %s", self.summary())
        return self.exit_status

    def _mode(self) -> str:
        return "reuseport" if self.listeners.per_worker else "shared"

    def _start_generation(self) -> None:
        for number in range(1, self.config.workers + 1):
            self.slots.setdefault(number, Slot())
            self.spawn(number)

    def _check_heartbeats(self) -> None:
        """Kill stuck workers; ping systemd's watchdog only while some worker is alive."""
        now = time.monotonic()
        alive = 0
        for worker in list(self.workers.values()):
            if worker.killed:
                continue
            if worker.kill_at is not None and now >= worker.kill_at:
                log.warning(
                    "worker %d (pid %d) is still draining: SIGKILL", worker.slot, worker.pid
                )
                worker.killed = True
                _kill(worker.pid, signal.SIGKILL)
                continue
            silent = now - worker.last_seen
            allowed = self.stall_after if worker.ready else START_TIMEOUT
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
        if self.told_systemd and not self.stopping:
            self.notifier.status(self.summary())

    # Workers ---------------------------------------------------------------------------
    def spawn(self, slot: int) -> None:
        ours, theirs = Channel.pair()
        served = self.served
        # Blocked across fork so that a signal cannot reach the child while it still runs
        # the supervisor's handlers (which would feed the supervisor's own wakeup fd).
        previous = signal.pthread_sigmask(signal.SIG_BLOCK, SIGNALS)
        try:
            pid = os.fork()
        except OSError as exc:
            signal.pthread_sigmask(signal.SIG_SETMASK, previous)
            ours.close()
            theirs.close()
            log.error("cannot fork worker %d: %s", slot, exc.strerror)
            self._schedule_restart(slot)
            return
        if pid == 0:
            sockets = served.listeners.for_slot(slot if served.listeners.per_worker else None)
            serving = {sock.fileno() for sock in sockets}
            handoff = Handoff(
                slot=slot,
                channel=theirs,
                sockets=sockets,
                supervisor_pid=self.pid,
                signals=SIGNALS,
                inherited_fds=[fd for fd in self._own_fds(ours) if fd not in serving],
                watchdog_interval=self.watchdog_interval,
            )
            run_worker(handoff, served.backend, served.config)
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)
        theirs.close()
        self.slots[slot].starts += 1
        now = time.monotonic()
        worker = Worker(slot, pid, ours, served.generation, started=now, last_seen=now)
        self.workers[pid] = worker
        self._watch_link(ours, lambda messages: self._on_messages(worker, messages))
        log.info("worker %d started (pid %d) for generation %d", slot, pid, served.generation)

    def _own_fds(self, new_channel: Channel) -> list[int]:
        """Every descriptor of the supervisor's, for a new worker to close plainly
        (unregistering would remove the supervisor's registrations from the epoll set
        they share)."""
        fds = [*self.reactor.fds(), new_channel.fileno()]
        fds += [w.channel.fileno() for w in self.workers.values()]
        fds += [named.sock.fileno() for named in self._all_listeners()]
        fds += self.metrics.fds() if self.metrics is not None else []
        links = [self.predecessor, self.successor, self.change.link if self.change else None]
        fds += [link.fileno() for link in links if link is not None]
        return [fd for fd in fds if fd >= 0]

    def _all_listeners(self) -> list[Named]:
        seen = list(self.listeners)
        if self.change is not None:
            seen += [*self.change.previous.listeners, *self.change.unused]
        return seen

    def _watch_link(
        self, link: Channel, on_messages: Callable[[list[Message] | None], None]
    ) -> None:
        def readable(mask: int) -> None:
            messages = link.receive()
            if messages is None:
                with contextlib.suppress(KeyError, ValueError, OSError):
                    self.reactor.remove(link.fileno())
            on_messages(messages)

        self.reactor.add(link.fileno(), READ, readable)

    def _schedule_restart(self, number: int) -> None:
        slot = self.slots[number]
        delay = min(RESTART_FIRST * 2**slot.failures, RESTART_CAP)
        slot.failures += 1
        slot.restart = self.reactor.call_later(delay, lambda: self._restart(number))
        log.info("restarting worker %d in %.1fs", number, delay)

    def _restart(self, number: int) -> None:
        self.slots[number].restart = None
        if not self.stopping and number <= self.config.workers:
            self.spawn(number)

    def _on_messages(self, worker: Worker, messages: list[Message] | None) -> None:
        if messages is None:  # it closed its end: it is exiting; SIGCHLD will follow
            return
        worker.last_seen = time.monotonic()
        for message in messages:
            self._on_message(worker, message)

    def _on_message(self, worker: Worker, message: Message) -> None:
        if message.kind == channel.STATS:
            try:
                worker.counters = Stats.decode(message.body)
            except ValueError:
                log.warning("worker %d sent malformed counters: %s", worker.slot, message.body)
                return
            if message.id:
                self._answered(message.id, worker.pid)
        elif message.kind == channel.STOPPING:
            worker.draining = True
            for signum in worker.held:
                _kill(worker.pid, signum)
            worker.held = []
        elif message.kind == channel.READY:
            worker.ready = True
            self._check_ready()

    def _current_ready(self) -> bool:
        ready = {
            w.slot for w in self.workers.values() if w.ready and w.generation == self.generation
        }
        return ready == set(range(1, self.config.workers + 1))

    def _check_ready(self) -> None:
        if self.stopping or not self._current_ready():
            return
        if not self.announced:
            self.announced = True
            log.info("ready: %d workers serving", len(self.workers))
            # After an upgrade, systemd hears us only once the old supervisor, still
            # the main process, has named us with MAINPID= (NotifyAccess=main).
            if self.predecessor is None or not self.predecessor.send(Message(channel.READY)):
                self._tell_systemd_ready()
        elif self.change is not None and self.change.kind == "reload":
            self._reloaded()

    def _tell_systemd_ready(self) -> None:
        if not self.told_systemd:
            self.told_systemd = True
            self.notifier.send(READY=1, MAINPID=self.pid, STATUS=self.summary())
            self._store_listeners()

    def _reap(self) -> None:
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                break
            if pid == 0:
                break
            worker = self.workers.pop(pid, None)
            if worker is not None:
                self._retire(worker, status)
        if self.stopping and not self.workers:
            self._finish()

    def _retire(self, worker: Worker, status: int) -> None:
        with contextlib.suppress(KeyError, ValueError, OSError):
            self.reactor.remove(worker.channel.fileno())
        self._on_messages(worker, worker.channel.receive())  # its last counters
        worker.channel.close()
        self.slots[worker.slot].retired.add(worker.counters)
        for request in [r for r, round_ in self.rounds.items() if worker.pid in round_.waiting]:
            self._answered(request, worker.pid)
        how = describe_exit(status)
        current = worker.generation == self.generation
        if self.stopping or not current or worker.slot > self.config.workers:
            log.info("worker %d (pid %d) %s", worker.slot, worker.pid, how)
            return
        if not worker.ready and self.change is not None and self.change.kind == "reload":
            self._reload_failed(
                f"worker {worker.slot} (pid {worker.pid}) {how} before it was ready"
            )
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

    def _drain_old(self) -> None:
        """Ask every worker of an earlier generation to drain."""
        kill_at = time.monotonic() + self.config.graceful_timeout + KILL_MARGIN
        for worker in self.workers.values():
            if worker.generation < self.generation and worker.kill_at is None:
                worker.kill_at = kill_at
                if not worker.channel.send(Message(channel.DRAIN, next(self.requests))):
                    _kill(worker.pid, signal.SIGTERM)  # its channel is full: the same drain

    def _close_unused(self, unused: Sequence[Named]) -> None:
        """Listeners the new generation does not serve, closed before the old workers
        stop accepting on them: each is gone once its last old worker closes its copy
        (after a last accept, see ``ServingCore.drain``), so no new client queues where
        nobody will accept."""
        slots = [named for named in unused if named.name.startswith("echod.reuseport.")]
        if slots and _read_sysctl(MIGRATE_SYSCTL) != "1":
            log.warning(
                "closing %d reuseport socket(s) of removed worker slots: a connection that "
                "reaches one in the moment it closes is reset (net.ipv4.tcp_migrate_req=1 "
                "moves it to another socket instead)",
                len(slots),
            )
        for named in unused:
            named.sock.close()

    # Signals ---------------------------------------------------------------------------
    def _on_signal(self, signum: int) -> None:
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
        self.collect(lambda: log.info("stats (all workers): %s", self.summary()), report=True)

    def handle_hup(self) -> None:
        self.reload()

    def handle_usr2(self) -> None:
        self.upgrade()

    # Reload ----------------------------------------------------------------------------
    def reload(self) -> None:
        """Re-read the configuration and serve it with a new generation of workers."""
        if self.stopping or self.handed_over:
            return
        if self.change is not None:
            self.reload_again = True  # coalesced: one more once this one ends
            log.info("reload requested during a %s: it follows", self.change.kind)
            return
        started = time.monotonic()
        try:
            served, unused, bound = prepare(self.reread, self.served)
        except (ConfigError, backends.BackendUnavailable, ListenerError, ServiceError) as exc:
            self.reloads["reload", "refused"] += 1
            log.error("reload refused, serving on with generation %d: %s", self.generation, exc)
            self.notifier.status(f"reload refused: {exc}")
            return
        self.change = Change("reload", started, self.served, unused, bound)
        self.notifier.reloading(self.summary())
        self.change.timer = self.reactor.call_later(
            START_TIMEOUT, lambda: self._reload_failed(f"not ready within {START_TIMEOUT:g}s")
        )
        self.served = served
        log.info(
            "reloading: generation %d, %d workers (backend %s, listen mode %s)",
            served.generation,
            served.config.workers,
            served.backend.name,
            self._mode(),
        )
        self._start_generation()

    def _reloaded(self) -> None:
        change = self.change
        assert change is not None
        self._end_change(change)
        took = time.monotonic() - change.started
        self._close_unused(change.unused)
        self._drain_old()
        self.reloads["reload", "ok"] += 1
        log.info(
            "reload done: generation %d, %d workers ready in %.3fs",
            self.generation,
            self.config.workers,
            took,
        )
        self.notifier.send(READY=1, STATUS=self.summary())
        self._after_change()

    def _reload_failed(self, why: str) -> None:
        change = self.change
        if change is None or change.kind != "reload":
            return
        self._end_change(change)
        failed = self.generation
        self.served = change.previous
        self.listeners.layer()  # a worker restarted from now on serves the old certificates
        for worker in self.workers.values():
            if worker.generation == failed:
                _kill(worker.pid, signal.SIGTERM)
                worker.asked_to_stop = True
        for named in change.bound:
            named.sock.close()
        self.reloads["reload", "failed"] += 1
        log.error("reload failed, serving on with generation %d: %s", self.generation, why)
        self.notifier.send(READY=1, STATUS=f"reload failed: {why}")
        self._after_change()

    def _end_change(self, change: Change) -> None:
        if change.timer is not None:
            change.timer.cancel()
        self.change = None

    def _after_change(self) -> None:
        if self.reload_again and not self.stopping:
            self.reload_again = False
            self.reload()

    # Upgrade ---------------------------------------------------------------------------
    def upgrade(self) -> None:
        """Start new code with every listener; hand over once it is ready."""
        if self.stopping or self.handed_over:
            return
        if self.change is not None:
            log.warning("upgrade refused: a %s is under way", self.change.kind)
            self.reloads["upgrade", "refused"] += 1
            return
        ours, theirs = Channel.pair()
        try:
            pid = upgrade.start_successor(self.argv, list(self.listeners), theirs, os.environ)
        except OSError as exc:
            ours.close()
            theirs.close()
            self.reloads["upgrade", "failed"] += 1
            log.error("upgrade failed, serving on: cannot start the new code: %s", exc.strerror)
            return
        theirs.close()
        change = Change("upgrade", time.monotonic(), self.served, successor=pid, link=ours)
        change.timer = self.reactor.call_later(
            START_TIMEOUT, lambda: self._upgrade_failed(f"not ready within {START_TIMEOUT:g}s")
        )
        self.change = change
        self.notifier.reloading(self.summary())
        self._watch_link(ours, self._on_successor)
        log.info("upgrading: new echod started (pid %d)", pid)

    def _on_successor(self, messages: list[Message] | None) -> None:
        change = self.change
        if change is None or change.kind != "upgrade":
            return
        if any(message.kind == channel.READY for message in messages or ()):
            self._handed_over(change)
        elif messages is None:  # it is not our child: its channel's end is its exit
            self._upgrade_failed(
                f"the new echod (pid {change.successor}) exited before it was ready"
            )

    def _handed_over(self, change: Change) -> None:
        """The new code serves: drain, then hand the totals over and exit."""
        self._end_change(change)
        self.successor = change.link
        self.handed_over = True
        assert change.successor is not None and change.link is not None
        self.notifier.mainpid(change.successor)
        change.link.send(Message(upgrade.MAINPID))
        self.reloads["upgrade", "ok"] += 1
        log.info(
            "upgrade done: the new echod (pid %d) serves, ready in %.3fs; draining",
            change.successor,
            time.monotonic() - change.started,
        )
        self._stop(signal.SIGTERM)

    def _upgrade_failed(self, why: str) -> None:
        change = self.change
        if change is None or change.kind != "upgrade" or self.handed_over:
            return
        self._end_change(change)
        if change.successor is not None:
            _kill(change.successor, signal.SIGTERM)
        if change.link is not None:
            with contextlib.suppress(KeyError, ValueError, OSError):
                self.reactor.remove(change.link.fileno())
            change.link.close()
        self.reloads["upgrade", "failed"] += 1
        log.error("upgrade failed, serving on: %s", why)
        self.notifier.send(READY=1, STATUS=f"upgrade failed: {why}")
        self._after_change()

    def _on_predecessor(self, messages: list[Message] | None) -> None:
        """The old supervisor's word that we are the main process now; then its totals
        and history, once its last worker is gone."""
        for message in messages or ():
            if message.kind == upgrade.MAINPID:
                self._tell_systemd_ready()
            elif message.kind == channel.STATS:
                with contextlib.suppress(ValueError):
                    self.inherited.add(Stats.decode(message.body))
            elif message.kind == upgrade.HISTORY:
                counts, generation = upgrade.decode_history(message.body)
                self.reloads.update(counts)
                self.generations_before = generation
        if messages is None and self.predecessor is not None:
            self.predecessor.close()
            self.predecessor = None
            if self.announced:
                self._tell_systemd_ready()  # if it died before naming us: say it ourselves

    # Fresh counters --------------------------------------------------------------------
    def collect(self, then: Callable[[], None], report: bool = False) -> None:
        """Ask every ready worker for fresh counters; call ``then`` once all have
        answered or ``REPORT_WAIT`` has passed, whichever is first."""
        ready = [w for w in self.workers.values() if w.ready]
        if not ready:
            then()
            return
        request = next(self.requests)
        round_ = Round(request, {w.pid for w in ready}, then)
        self.rounds[request] = round_
        round_.timer = self.reactor.call_later(REPORT_WAIT, lambda: self._end_round(request))
        kind = channel.REPORT if report else channel.COLLECT
        for worker in ready:
            if not worker.channel.send(Message(kind, request)):
                round_.waiting.discard(worker.pid)
        if not round_.waiting:
            self._end_round(request)

    def _answered(self, request: int, pid: int) -> None:
        round_ = self.rounds.get(request)
        if round_ is not None:
            round_.waiting.discard(pid)
            if not round_.waiting:
                self._end_round(request)

    def _end_round(self, request: int) -> None:
        round_ = self.rounds.pop(request, None)
        if round_ is not None:
            if round_.timer is not None:
                round_.timer.cancel()
            round_.then()

    # Stopping --------------------------------------------------------------------------
    def _stop(self, signum: int = signal.SIGTERM) -> None:
        """Begin stopping (once) and pass ``signum`` on to every worker (each time)."""
        self._signal_workers(signum)
        if self.stopping:
            return
        self.stopping = True
        change = self.change
        if change is not None and change.kind == "reload":
            self._end_change(change)
        elif change is not None and not self.handed_over:
            self._upgrade_failed("stopping")
        grace = self.config.graceful_timeout
        log.info("stopping: %d worker(s) drain for up to %gs", len(self.workers), grace)
        if not self.handed_over:  # the successor is what systemd now tracks
            self.notifier.stopping()
        self.reactor.call_later(grace + KILL_MARGIN, self._kill_all)
        for slot in self.slots.values():
            if slot.restart is not None:
                slot.restart.cancel()
        # Workers close their copies as they drain; once ours is closed too, a new
        # client is refused at once instead of waiting in a queue nobody serves (with
        # systemd's file descriptor store or a successor holding a copy, it waits there).
        for named in self._all_listeners():
            if named is not self.listeners.metrics:
                named.sock.close()
        if not self.workers:
            self._finish()

    def _kill_all(self) -> None:
        for worker in self.workers.values():
            log.warning("worker %d (pid %d) is still running: SIGKILL", worker.slot, worker.pid)
            _kill(worker.pid, signal.SIGKILL)

    def _finish(self) -> None:
        if self.successor is not None:
            self.successor.send(Message(channel.STATS, 0, self._total().encode()))
            history = upgrade.encode_history(self.reloads, self.config_generation)
            self.successor.send(Message(upgrade.HISTORY, 0, history))
            self.successor.close()
            self.successor = None
        self.reactor.stop()

    def _signal_workers(self, signum: int) -> None:
        """Send ``signum`` to every worker; a stop signal only after the previous one
        was handled, since the kernel merges a signal into a pending one of its kind."""
        for worker in self.workers.values():
            if worker.asked_to_stop and not worker.draining:
                worker.held.append(signum)
                continue
            worker.asked_to_stop = True
            _kill(worker.pid, signum)

    # systemd's file descriptor store -------------------------------------------------
    def _store_listeners(self) -> None:
        """Hand systemd a copy of every listener we bound, so that ``systemctl restart``
        refuses nobody: the next start inherits them (``FileDescriptorStoreMax=``)."""
        if not self.notifier.enabled or self.listeners.from_systemd:
            return
        for named in self.listeners:
            self.notifier.store_fd(named.sock.fileno(), named.name)

    # Figures ---------------------------------------------------------------------------
    def _total(self) -> Stats:
        return tally.total(self.inherited, self.slots, self.workers.values())

    def summary(self) -> str:
        state = f"{self.change.kind}ing; " if self.change is not None else ""
        return tally.summary(
            self._total(), self.workers.values(), self.config.workers, self.generation, state
        )

    def _render_metrics(self, openmetrics: bool) -> str:
        slots = tally.slot_figures(self.slots, self.workers.values(), self.generation)
        workers = {s.slot: process.read(s.pid) for s in slots if s.pid is not None}
        running = Counter(self.generations_before + w.generation for w in self.workers.values())
        control = ControlFigures(
            dict(self.reloads), self.config_generation, dict(running), self.inherited
        )
        known = {slot: figures for slot, figures in workers.items() if figures is not None}
        tls = self.listeners.tls
        expiry = tls.expiry if tls is not None else None
        figures = families(slots, self.backend.name, process.read(), known, control, expiry)
        return render(figures, openmetrics)


def _best_selector() -> str:
    return "epoll" if hasattr(selectors, "EpollSelector") else "DefaultSelector"


def _read_sysctl(path: str) -> str | None:
    try:
        with open(path) as file:
            return file.read().strip()
    except OSError:
        return None


def _kill(pid: int, signum: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signum)
