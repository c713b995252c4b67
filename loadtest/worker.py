"""One worker process: one event loop (epoll, or selectors) driving its share of the connections.

The parent hands each worker a ``WorkerPlan``; the worker connects, reports
``ready``, waits for the common start time, runs the warmup and the window,
drains what the server still owes, and sends back a ``WorkerResult``.  Messages
on the queue are tuples whose first item says what they are: ``ready``, ``tick``
(progress), ``interval`` (one second of the window), ``refused`` (the server
closed every connection before echoing a byte), ``result`` or ``crash``.

The worker owns the loop, the timers and the connect limiter; connections
(``workloads.py``) see it only through the ``Link`` it hands them.
"""

from __future__ import annotations

import heapq
import signal
import time
import traceback
from collections import deque
from dataclasses import dataclass
from multiprocessing.queues import Queue
from multiprocessing.sharedctypes import Synchronized
from multiprocessing.synchronize import Event
from time import monotonic, sleep
from typing import Any

import psutil

from loadtest.params import Params
from loadtest.pattern import Pattern
from loadtest.pollers import Poller, best_poller
from loadtest.stats import LOST, UNSENT, Tally, WorkerResult, encode_counts
from loadtest.tls import LOOP_NOTE, client_context
from loadtest.workloads import (
    CONNECTING,
    DRAINING,
    RUNNING,
    UP,
    ChurnConnection,
    Connection,
    EchoConnection,
    Link,
    RateConnection,
    Settings,
    StreamConnection,
)

# Connects in flight at once per worker: more only overflows the server's accept
# backlog, and a dropped SYN is retried after a whole second.
MAX_PENDING_CONNECTS = 256
TICK_INTERVAL = 0.5
# Failures in a row, on every connection and with no echo ever, after which the
# server is taken to refuse the load (it closes or resets whatever connects).
HOPELESS_FAILURES = 3
# Open loop issues at most this many messages per loop turn, so a generator that
# has fallen behind still reads its sockets between bursts.
MAX_ISSUE_PER_TURN = 4096
# Longest nap between polls when the next open-loop message is under 1 ms away:
# an echo arriving meanwhile waits at most this long to be read.
OPEN_LOOP_NAP = 0.0001


@dataclass(frozen=True)
class WorkerPlan:
    index: int
    first_id: int
    connections: int
    active: int
    rate: float
    family: int
    address: tuple[Any, ...]
    # This worker's share of --connect-rate, connections/s (0 = as fast as the
    # connect limiter allows), and local addresses to bind: connection ``i`` uses
    # ``sources[i % len(sources)]``; empty lets the kernel choose.
    connect_rate: float = 0.0
    sources: tuple[str, ...] = ()


class Worker:
    """The event loop, the connect limiter and the reconnect timers of one process."""

    def __init__(self, params: Params, plan: WorkerPlan, poller: Poller | None = None) -> None:
        self.params = params
        self.plan = plan
        # The C loop cannot speak TLS: a TLS run takes the Python loop.
        self.poller = poller or best_poller("" if params.tls else params.workload)
        self.tally = Tally()
        self.stopping = False
        self.pending_connects = 0
        self.waiting: deque[Connection] = deque()
        self.timers: list[tuple[float, int, Connection]] = []
        self.timer_seq = 0
        settings = Settings(
            family=plan.family,
            address=plan.address,
            size=params.size,
            depth=params.pipeline,
            timeout=params.timeout,
            connect_timeout=params.connect_timeout,
            tls=(
                client_context(
                    params.tls_ca, params.insecure, params.tls_min_version, params.tls_max_version
                )
                if params.tls
                else None
            ),
            server_hostname=(params.tls_sni or params.host) if params.tls else None,
            resume=params.tls_resume,
            proxy=params.proxy_protocol or 0,
            proxy_address=params.proxy_address,
        )
        self.link = Link(
            settings, self.poller, self.tally, self._connected, self._failed, self.request_connect
        )
        kind: type[Connection] = {
            "rr": EchoConnection,
            "rate": RateConnection,
            "stream": StreamConnection,
            "churn": ChurnConnection,
        }[params.workload]
        self.connections: list[Connection] = [
            (kind if i < plan.active else Connection)(self.link, Pattern.base(plan.first_id + i))
            for i in range(plan.connections)
        ]
        if plan.sources:
            for i, conn in enumerate(self.connections):
                conn.source = plan.sources[(plan.first_id + i) % len(plan.sources)]

    # -- connecting -------------------------------------------------------
    def request_connect(self, conn: Connection) -> None:
        if self.pending_connects < MAX_PENDING_CONNECTS:
            self.pending_connects += 1
            conn.connect()
        else:
            self.waiting.append(conn)

    def _connect_done(self) -> None:
        self.pending_connects -= 1
        while self.waiting and self.pending_connects < MAX_PENDING_CONNECTS and not self.stopping:
            self.request_connect(self.waiting.popleft())

    def _connected(self, conn: Connection) -> None:
        self._connect_done()

    def _failed(self, conn: Connection, was_connecting: bool) -> None:
        """A connection failed: retry later, backing off while it keeps failing."""
        if was_connecting:
            self._connect_done()
        if self.stopping:
            return
        delay = min(1.0, 0.005 * 2 ** min(conn.failures, 8))
        self.timer_seq += 1
        heapq.heappush(self.timers, (monotonic() + delay, self.timer_seq, conn))

    def _fire_timers(self, now: float) -> None:
        timers = self.timers
        while timers and timers[0][0] <= now:
            conn = heapq.heappop(timers)[2]
            if conn.sock is None and not self.stopping:
                self.request_connect(conn)

    def _check(self, now: float) -> None:
        for conn in self.connections:
            conn.check(now)

    def _refused(self, carried: int) -> bool:
        """Every connection failed again and again and not one message came back: the
        server closes what connects, and the rest of the run could measure nothing."""
        if not all(conn.failures >= HOPELESS_FAILURES for conn in self.connections):
            return False
        self.poller.collect(self.tally)
        return carried + self.tally.window_messages + self.tally.messages == 0

    def up(self) -> int:
        return sum(1 for conn in self.connections if conn.state == UP)

    # -- phases -----------------------------------------------------------
    def setup(self) -> int:
        """Connect everything before the clock starts (churn connects as its workload)."""
        if self.params.workload == "churn":
            return 0
        count = len(self.connections)
        rate = self.plan.connect_rate
        began = monotonic()
        ramp = count / rate if rate > 0 else 0.0
        deadline = began + ramp + self.params.connect_timeout + count / 2000
        next_check = began + 0.1
        issued = 0
        while True:
            now = monotonic()
            if issued < count:
                # --connect-rate paces the ramp-up; the limiter still bounds connects
                # in flight, so a slow server backs the ramp up instead of the backlog.
                due = count if rate <= 0 else min(count, int((now - began) * rate) + 1)
                while issued < due:
                    self.request_connect(self.connections[issued])
                    issued += 1
            self._fire_timers(now)
            if now >= next_check:
                self._check(now)
                next_check = now + 0.1
                if self.up() == count or self._refused(0):
                    break
            if now >= deadline:
                break
            wait = 0.05 if issued >= count else min(0.05, max(0.0, began + issued / rate - now))
            self.poller.poll(wait)
        return self.up()

    def run(self, start: float, queue: Queue[Any]) -> WorkerResult:
        """Warmup and window, then the drain; the result holds the window's figures."""
        params = self.params
        tally = self.tally
        warm_end = start + params.warmup
        end = warm_end + params.duration
        scan_interval = min(0.1, params.timeout / 4, params.connect_timeout / 4)
        delay = start - monotonic()
        if delay > 0:
            sleep(delay)
        now = monotonic()
        self.link.phase = RUNNING
        for conn in self.connections:
            if params.workload == "churn":
                self.request_connect(conn)
            elif conn.state == UP:
                assert conn.sock is not None
                conn.begin(conn.sock, now)

        me = psutil.Process()
        measuring = False
        window_start = now
        window_start_wall = time.time()
        cpu_start = 0.0
        carried = 0
        second = 0
        next_second = end
        next_scan = now + scan_interval
        next_tick = now + TICK_INTERVAL
        targets = [c for c in self.connections if isinstance(c, RateConnection)]
        open_loop = bool(targets)
        rate = self.plan.rate
        issued = 0
        next_due = start if open_loop else end
        poll = self.poller.poll
        # The C loop counts on its own; folded in before every figure is read.
        collect = self.poller.collect
        timers = self.timers
        wake = now
        while True:
            now = monotonic()
            if now < wake:
                # Only sockets until the next due message, timer, scan, tick or second.
                if open_loop and wake - now < 0.001:
                    # epoll sleeps in whole milliseconds, rounded up: a message due in
                    # 0.3 ms would go out 0.7 ms late and be charged for it.  Near a
                    # due time, poll without blocking and nap in short slices instead.
                    if not poll(0):
                        sleep(min(wake - now, OPEN_LOOP_NAP))
                else:
                    poll(wake - now)
                continue
            if now >= end:
                break
            if open_loop and now >= next_due:
                due = min(int((now - start) * rate) + 1, issued + MAX_ISSUE_PER_TURN)
                count = len(targets)
                while issued < due:
                    targets[issued % count].schedule(start + issued / rate)
                    issued += 1
                next_due = start + issued / rate
            if timers:
                self._fire_timers(now)
            if now >= next_scan:
                self._check(now)
                next_scan = now + scan_interval
                if self._refused(carried):
                    queue.put(("refused", self.plan.index, dict(tally.errors)))
                    break
            if not measuring:
                if now >= warm_end:
                    measuring = True
                    collect(tally)
                    carried = tally.messages
                    tally.reset(connects=params.workload == "churn")
                    window_start = now
                    window_start_wall = time.time()
                    next_second = now + 1.0
                    times = me.cpu_times()
                    cpu_start = times.user + times.system
            elif now >= next_second:
                collect(tally)
                queue.put(("interval", self.plan.index, tally.cut(second)))
                second += 1
                next_second += 1.0
            if now >= next_tick:
                next_tick = now + TICK_INTERVAL
                if params.progress:
                    collect(tally)
                    queue.put(
                        (
                            "tick",
                            self.plan.index,
                            carried + tally.window_messages + tally.messages,
                            sum(tally.errors.values()),
                            now,
                        )
                    )
            wake = min(end, next_due, next_scan, next_tick, next_second)
            if not measuring and warm_end < wake:
                wake = warm_end
            if timers and timers[0][0] < wake:
                wake = timers[0][0]

        now = monotonic()
        collect(tally)
        window_end_wall = time.time()
        times = me.cpu_times()
        cpu_s = times.user + times.system - cpu_start
        established = self.up()
        if not measuring:  # a zero-length window
            tally.reset()
            window_start = now
            window_start_wall = window_end_wall
            cpu_s = 0.0
        queue.put(("interval", self.plan.index, tally.cut(second)))
        window_s = now - window_start
        drained, drain_latency = self.drain(now)
        uncorrected = tally.window_uncorrected if open_loop else tally.window_latency
        return WorkerResult(
            index=self.plan.index,
            connections=len(self.connections),
            established=established,
            messages=tally.window_messages,
            echoed=tally.window_bytes,
            unsent=tally.errors.get(UNSENT, 0),
            window_s=window_s,
            cpu_s=cpu_s,
            latency=encode_counts(tally.window_latency),
            connect=encode_counts(tally.connect),
            errors=dict(tally.errors),
            latency_uncorrected=encode_counts(uncorrected),
            drained=drained,
            drain_latency=encode_counts(drain_latency),
            window_start_wall=window_start_wall,
            window_end_wall=window_end_wall,
            loop=self.poller.name + (LOOP_NOTE if params.tls else ""),
        )

    def drain(self, began: float) -> tuple[int, dict[int, int]]:
        """Issue nothing more; wait up to --timeout for every echo still owed.

        Counts into the (already cut) tally, so the window's figures stay as they
        were; returns the echoes completed here and their latencies.  What is
        still owed at the end is ``lost`` (one per connection); open-loop messages
        that fell due and never went out are ``unsent`` (one per message).
        """
        tally = self.tally
        self.link.phase = DRAINING
        self.poller.stop_issuing()
        self.stopping = True
        self.waiting.clear()
        self.timers.clear()
        for conn in self.connections:
            if conn.state == CONNECTING:  # owes nothing yet; the run is over
                conn.close()
        deadline = began + self.params.timeout
        scan_interval = min(0.1, self.params.timeout / 4)
        next_scan = began
        while True:
            now = monotonic()
            if now >= next_scan:
                self._check(now)
                next_scan = now + scan_interval
                if not any(conn.awaiting() for conn in self.connections if conn.state == UP):
                    break
            if now >= deadline:
                break
            self.poller.poll(max(0.0, min(next_scan, deadline) - now))
        self.poller.collect(tally)
        for conn in self.connections:
            if conn.state == UP and conn.awaiting():
                tally.error(LOST)
            unsent = conn.backlog()
            if unsent:
                tally.error(UNSENT, unsent)
            conn.close()
        return tally.messages, tally.latency


def worker_main(
    params: Params,
    plan: WorkerPlan,
    queue: Queue[Any],
    go: Event,
    start_at: Synchronized[float],
) -> None:
    """Process entry point.  Ctrl-C is the parent's to handle; the worker just ends."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        worker = Worker(params, plan)
        queue.put(("ready", plan.index, worker.setup()))
        if not go.wait(params.connect_timeout + plan.connections / 1000 + 60):
            return
        queue.put(("result", plan.index, worker.run(start_at.value, queue)))
    except Exception:
        queue.put(("crash", plan.index, traceback.format_exc()))
