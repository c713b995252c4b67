"""One worker process: a selectors loop driving its share of the connections.

The parent hands each worker a ``WorkerPlan``; the worker connects, reports
``ready``, waits for the common start time, runs until the end of the window and
sends back a ``WorkerResult``.  Messages on the queue are tuples whose first item
says what they are: ``ready``, ``tick`` (progress), ``result`` or ``crash``.
"""

from __future__ import annotations

import heapq
import selectors
import signal
import traceback
from collections import deque
from dataclasses import dataclass
from multiprocessing.queues import Queue
from multiprocessing.sharedctypes import Synchronized
from multiprocessing.synchronize import Event
from time import monotonic, sleep, time
from typing import Any

import psutil

from loadtest.params import Params
from loadtest.pattern import CHUNK, Pattern
from loadtest.stats import Interval, Tally, WorkerResult, encode_counts
from loadtest.workloads import (
    UP,
    ChurnConnection,
    Connection,
    EchoConnection,
    StreamConnection,
)

# Connects in flight at once per worker: more only overflows the server's accept
# backlog, and a dropped SYN is retried after a whole second.
MAX_PENDING_CONNECTS = 256
TICK_INTERVAL = 0.5
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
    # This worker's share of --connect-rate, connections/s; 0 = as fast as the
    # connect limiter allows.
    connect_rate: float = 0.0
    # Local addresses to bind before connect (--source-address): connection id i
    # uses sources[i % len(sources)]; empty = the kernel chooses.
    sources: tuple[str, ...] = ()


class Worker:
    """The event loop, the connect limiter and the reconnect timers of one process."""

    def __init__(self, params: Params, plan: WorkerPlan) -> None:
        self.params = params
        self.plan = plan
        self.family = plan.family
        self.address = plan.address
        self.selector = selectors.DefaultSelector()
        self.pattern = Pattern()
        self.buffer = memoryview(bytearray(CHUNK))
        self.tally = Tally()
        self.running = False
        self.stopping = False
        self.pending_connects = 0
        self.waiting: deque[Connection] = deque()
        self.timers: list[tuple[float, int, Connection]] = []
        self.timer_seq = 0
        kind: type[Connection] = {
            "rr": EchoConnection,
            "rate": EchoConnection,
            "stream": StreamConnection,
            "churn": ChurnConnection,
        }[params.workload]
        self.connections: list[Connection] = [
            (kind if i < plan.active else Connection)(self, Pattern.base(plan.first_id + i))
            for i in range(plan.connections)
        ]
        if plan.sources:
            for i, conn in enumerate(self.connections):
                conn.source = plan.sources[(plan.first_id + i) % len(plan.sources)]
        # Latency counts of the window's finished seconds; tally.latency holds the
        # current second's, so each second's histogram comes without a copy.
        self.window_latency: dict[int, int] = {}

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

    def connected(self, conn: Connection) -> None:
        self._connect_done()

    def lost(self, conn: Connection, was_connecting: bool) -> None:
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
            if conn.sock is None:
                self.request_connect(conn)

    def _check(self, now: float) -> None:
        for conn in self.connections:
            conn.check(now)

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
                if self.up() == count:
                    break
            if now >= deadline:
                break
            wait = 0.05 if issued >= count else min(0.05, max(0.0, began + issued / rate - now))
            for key, mask in self.selector.select(wait):
                key.data(mask)
        return self.up()

    def interval(self, second: int, mark: tuple[int, int, dict[str, int]]) -> Interval:
        """The second that ends now: counts since ``mark``; its latencies move to the window's."""
        tally = self.tally
        messages, echoed, errors = mark
        counts = tally.latency
        tally.latency = {}
        window = self.window_latency
        for value, count in counts.items():
            window[value] = window.get(value, 0) + count
        return Interval(
            second=second,
            messages=tally.messages - messages,
            bytes=tally.bytes - echoed,
            errors={
                kind: count - errors.get(kind, 0)
                for kind, count in tally.errors.items()
                if count != errors.get(kind, 0)
            },
            latency=encode_counts(counts),
        )

    def run(self, start: float, queue: Queue[Any]) -> WorkerResult:
        params = self.params
        tally = self.tally
        warm_end = start + params.warmup
        end = warm_end + params.duration
        scan_interval = min(0.1, params.timeout / 4, params.connect_timeout / 4)
        delay = start - monotonic()
        if delay > 0:
            sleep(delay)
        now = monotonic()
        self.running = True
        for conn in self.connections:
            if params.workload == "churn":
                self.request_connect(conn)
            elif conn.state == UP:
                assert conn.sock is not None
                conn.begin(conn.sock, now)

        me = psutil.Process()
        measuring = False
        window_start = now
        window_start_wall = 0.0
        second = 0
        next_second = end
        mark: tuple[int, int, dict[str, int]] = (0, 0, {})
        cpu_start = 0.0
        carried = 0
        next_scan = now + scan_interval
        next_tick = now + TICK_INTERVAL
        open_loop = params.workload == "rate"
        targets = [c for c in self.connections if isinstance(c, EchoConnection)]
        rate = self.plan.rate
        issued = 0
        select = self.selector.select
        timers = self.timers
        while True:
            now = monotonic()
            if now >= end:
                break
            wake = end
            if open_loop and targets:
                due = min(int((now - start) * rate) + 1, issued + MAX_ISSUE_PER_TURN)
                count = len(targets)
                while issued < due:
                    targets[issued % count].schedule(start + issued / rate)
                    issued += 1
                wake = min(wake, start + issued / rate)
            if timers:
                self._fire_timers(now)
                if timers:
                    wake = min(wake, timers[0][0])
            if now >= next_scan:
                self._check(now)
                next_scan = now + scan_interval
            if not measuring:
                if now >= warm_end:
                    measuring = True
                    carried = tally.messages
                    tally.reset(connects=params.workload == "churn")
                    window_start = now
                    window_start_wall = time()
                    next_second = now + 1.0
                    mark = (0, 0, dict(tally.errors))
                    times = me.cpu_times()
                    cpu_start = times.user + times.system
                else:
                    wake = min(wake, warm_end)
            if now >= next_second:
                queue.put(("interval", self.plan.index, self.interval(second, mark)))
                second += 1
                next_second += 1.0
                mark = (tally.messages, tally.bytes, dict(tally.errors))
            wake = min(wake, next_second)
            if now >= next_tick:
                next_tick = now + TICK_INTERVAL
                if params.progress:
                    queue.put(
                        (
                            "tick",
                            self.plan.index,
                            carried + tally.messages,
                            sum(tally.errors.values()),
                        )
                    )
            wake = min(wake, next_scan, next_tick)
            if open_loop and wake - now < 0.001:
                # epoll sleeps in whole milliseconds, rounded up: a message due in
                # 0.3 ms would go out 0.7 ms late and be charged for it.  Near a due
                # time, poll without blocking and nap in short slices instead.
                events = select(0)
                if not events:
                    sleep(min(wake - now, OPEN_LOOP_NAP))
                    continue
            else:
                events = select(max(wake - now, 0.0))
            for key, mask in events:
                key.data(mask)

        now = monotonic()
        window_end_wall = time()
        times = me.cpu_times()
        cpu_s = times.user + times.system - cpu_start
        if measuring:  # the last, partial second, always sent
            queue.put(("interval", self.plan.index, self.interval(second, mark)))
        established = self.up()
        self.stopping = True
        for conn in self.connections:
            conn.close()
        if not measuring:  # a zero-length window
            tally.reset()
            window_start = now
            window_start_wall = window_end_wall
            cpu_s = 0.0
        latency = self.window_latency
        for value, count in tally.latency.items():
            latency[value] = latency.get(value, 0) + count
        return WorkerResult(
            index=self.plan.index,
            connections=len(self.connections),
            established=established,
            messages=tally.messages,
            echoed=tally.bytes,
            unsent=tally.unsent,
            window_s=now - window_start,
            cpu_s=cpu_s,
            latency=encode_counts(latency),
            connect=encode_counts(tally.connect),
            errors=dict(tally.errors),
            window_start_wall=window_start_wall,
            window_end_wall=window_end_wall,
        )


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
