"""``echod-bench --udp``: datagrams, each carrying its flow, sequence number and a
verified payload; loss, duplicates, reordering, corruption, latency and datagrams/s.

Each flow is one UDP socket. Closed loop keeps ``--pipeline`` datagrams in flight per
flow; with ``--rate`` datagrams go out on a schedule (open loop) and latency counts
from when each was due. A datagram unanswered after the loss timeout (``--timeout``,
at most one second) counts as lost and frees its window slot; if its answer arrives
later it is counted as late, not lost. Loss is not an error (UDP promises no
delivery, and echod's guards refuse on purpose); corruption and duplicates are.
"""

from __future__ import annotations

import dataclasses
import multiprocessing
import queue as queue_module
import selectors
import socket
import struct
import sys
import time
from dataclasses import dataclass, field
from typing import Any

import psutil

from loadtest.monitor import NoSuchServer, start_sampler
from loadtest.params import Params, default_processes
from loadtest.pattern import PERIOD, Pattern
from loadtest.report import (
    EXIT_CLEAN,
    EXIT_ERRORS,
    EXIT_MISMATCH,
    environment,
    percentiles,
    process_count,
)
from loadtest.results import write
from loadtest.stats import encode_counts, merge, summarize
from loadtest.target import Abort
from loadtest.target import resolve as resolve_target

# flow id, sequence number: what makes every datagram of a run unique.
HEADER = struct.Struct("!IQ")
LARGEST: dict[int, int] = {socket.AF_INET: 65_507, socket.AF_INET6: 65_527}
LOSS_TIMEOUT_CAP = 1.0
# Sends per flow per loop turn in open loop, so a generator behind still reads.
MAX_ISSUE_PER_TURN = 4096


def payload_offset(flow: int, seq: int) -> int:
    """Where datagram ``seq`` of ``flow`` starts in the pattern: neighbours differ."""
    return (flow * 40_503 + seq * 7_919 + 1) % PERIOD


@dataclass
class Counts:
    """One process's (or the merged) counters; plain values so they cross a queue."""

    sent: int = 0
    answered: int = 0
    lost: int = 0
    late: int = 0
    duplicates: int = 0
    reordered: int = 0
    corrupt: int = 0
    send_dropped: int = 0  # our own socket would not take it (ENOBUFS/EAGAIN)
    by_second: list[int] = field(default_factory=list)  # answered in each second of the window
    latency: dict[int, int] = field(default_factory=dict)
    cpu_s: float = 0.0
    window_s: float = 0.0

    def add(self, other: Counts) -> None:
        for name in ("sent", "answered", "lost", "late", "duplicates", "reordered",
                     "corrupt", "send_dropped", "cpu_s"):  # fmt: skip
            setattr(self, name, getattr(self, name) + getattr(other, name))
        self.window_s = max(self.window_s, other.window_s)
        self.by_second += [0] * (len(other.by_second) - len(self.by_second))
        for second, answered in enumerate(other.by_second):
            self.by_second[second] += answered


class Flow:
    """One socket's datagrams: what is in flight, what came back, in what order."""

    __slots__ = ("highest", "id", "lost", "measured_from", "next_seq", "outstanding", "sock")

    def __init__(self, flow_id: int, sock: socket.socket) -> None:
        self.id = flow_id
        self.sock = sock
        self.next_seq = 0
        self.outstanding: dict[int, float] = {}  # seq -> when it was sent (or due)
        self.lost: set[int] = set()
        self.highest = -1
        self.measured_from = 1 << 63  # the first sequence number sent inside the window


class UdpWorker:
    def __init__(
        self,
        params: Params,
        address: tuple[Any, ...],
        family: int,
        first: int,
        flows: int,
        rate: float,
    ) -> None:
        self.params = params
        self.address = address
        self.pattern = Pattern()
        self.selector = selectors.DefaultSelector()
        self.flows = []
        for i in range(flows):
            sock = socket.socket(family, socket.SOCK_DGRAM)
            sock.setblocking(False)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
            sock.connect(address)  # answers from anyone else are not ours
            flow = Flow(first + i, sock)
            self.flows.append(flow)
            self.selector.register(sock, selectors.EVENT_READ, flow)
        self.rate = rate
        self.counts = Counts()
        self.measuring = False
        self.window_start = 0.0
        self.loss_timeout = min(params.timeout, LOSS_TIMEOUT_CAP)

    def send(self, flow: Flow, at: float) -> None:
        seq = flow.next_seq
        flow.next_seq += 1
        size = self.params.size
        offset = payload_offset(flow.id, seq)
        datagram = (
            HEADER.pack(flow.id, seq) + self.pattern.data[offset : offset + size - HEADER.size]
        )
        try:
            flow.sock.send(datagram)
        except OSError:
            if self.measuring:
                self.counts.send_dropped += 1
            return
        flow.outstanding[seq] = at
        if self.measuring:
            self.counts.sent += 1

    def receive(self, flow: Flow, now: float) -> int:
        """Read what waits on ``flow``; returns how many answers freed a window slot."""
        counts = self.counts
        freed = 0
        while True:
            try:
                data = flow.sock.recv(65_536)
            except (BlockingIOError, InterruptedError):
                return freed
            except ConnectionRefusedError:
                continue  # ICMP port unreachable for an earlier datagram: it is lost
            if len(data) != self.params.size or len(data) < HEADER.size:
                counts.corrupt += 1
                continue
            flow_id, seq = HEADER.unpack_from(data)
            offset = payload_offset(flow_id, seq)
            if flow_id != flow.id or not self.pattern.data.startswith(
                memoryview(data)[HEADER.size :], offset
            ):
                counts.corrupt += 1
                continue
            # Only datagrams sent inside the window count; errors count whenever.
            measured = seq >= flow.measured_from
            sent_at = flow.outstanding.pop(seq, None)
            if sent_at is None:
                if seq in flow.lost:
                    flow.lost.discard(seq)
                    counts.late += measured
                    counts.lost -= measured
                elif seq < flow.next_seq:
                    counts.duplicates += 1
                else:
                    counts.corrupt += 1  # a sequence number never sent
                continue
            freed += 1
            if seq < flow.highest:
                counts.reordered += measured
            flow.highest = max(flow.highest, seq)
            if measured:
                counts.answered += 1
                second = int(now - self.window_start)
                if second >= len(counts.by_second):
                    counts.by_second += [0] * (second + 1 - len(counts.by_second))
                counts.by_second[second] += 1
                us = int((now - sent_at) * 1e6)
                counts.latency[us] = counts.latency.get(us, 0) + 1

    def expire(self, now: float) -> int:
        """Datagrams unanswered past the loss timeout: lost; returns how many."""
        expired = 0
        limit = now - self.loss_timeout
        for flow in self.flows:
            for seq in [s for s, at in flow.outstanding.items() if at < limit]:
                del flow.outstanding[seq]
                if len(flow.lost) < 100_000:  # to tell late from duplicate, within bounds
                    flow.lost.add(seq)
                expired += 1
                self.counts.lost += seq >= flow.measured_from
        return expired

    def run(self, start: float) -> Counts:
        params = self.params
        warm_end = start + params.warmup
        end = warm_end + params.duration
        delay = start - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        me = psutil.Process()
        cpu_start = 0.0
        window_start = time.monotonic()
        open_loop = self.rate > 0
        flows = self.flows
        now = time.monotonic()
        if not open_loop:
            for flow in flows:
                for _ in range(params.pipeline):
                    self.send(flow, now)
        issued = 0
        next_expire = now + self.loss_timeout / 4
        while True:
            now = time.monotonic()
            if now >= end:
                break
            if not self.measuring and now >= warm_end:
                self.measuring = True
                for flow in flows:
                    flow.measured_from = flow.next_seq
                window_start = self.window_start = now
                times = me.cpu_times()
                cpu_start = times.user + times.system
            wake = min(end, next_expire)
            if open_loop:
                due = min(int((now - start) * self.rate) + 1, issued + MAX_ISSUE_PER_TURN)
                while issued < due:
                    self.send(flows[issued % len(flows)], start + issued / self.rate)
                    issued += 1
                wake = min(wake, start + issued / self.rate)
            if now >= next_expire:
                expired_by_flow = {f.id: len(f.outstanding) for f in flows}
                self.expire(now)
                next_expire = now + self.loss_timeout / 4
                if not open_loop:
                    for flow in flows:
                        for _ in range(expired_by_flow[flow.id] - len(flow.outstanding)):
                            self.send(flow, now)
            if not self.measuring:
                wake = min(wake, warm_end)
            for key, _ in self.selector.select(max(wake - now, 0.0)):
                flow = key.data
                freed = self.receive(flow, time.monotonic())
                if not open_loop:
                    stamp = time.monotonic()
                    for _ in range(freed):
                        self.send(flow, stamp)
        # Stop sending; answers still on their way get one loss timeout to arrive.
        now = time.monotonic()
        times = me.cpu_times()
        self.counts.cpu_s = times.user + times.system - cpu_start
        self.counts.window_s = now - window_start
        drain_end = now + self.loss_timeout
        while any(f.outstanding for f in flows) and time.monotonic() < drain_end:
            for key, _ in self.selector.select(max(drain_end - time.monotonic(), 0.0)):
                self.receive(key.data, time.monotonic())
        self.expire(float("inf"))
        for flow in flows:
            flow.sock.close()
        self.selector.close()
        return self.counts


def _worker_main(params: Params, address: tuple[Any, ...], family: int, first: int, flows: int,
                 rate: float, out: Any, start_at: Any, go: Any) -> None:  # fmt: skip
    import signal
    import traceback

    signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        worker = UdpWorker(params, address, family, first, flows, rate)
        out.put(("ready", first))
        if not go.wait(60):
            return
        counts = worker.run(start_at.value)
        latency = encode_counts(counts.latency)
        counts.latency = {}
        out.put(("result", counts, latency))
    except Exception:
        out.put(("crash", traceback.format_exc()))


def resolve(params: Params) -> tuple[int, tuple[Any, ...]]:
    family, address = resolve_target(params, socket.SOCK_DGRAM)
    largest = LARGEST.get(family, 65_507)
    if not HEADER.size <= params.size <= largest:
        raise Abort(
            f"--size {params.size}: a UDP datagram here carries {HEADER.size} to {largest} bytes"
        )
    return family, address


# TCP-only flags of Params: refused with --udp rather than silently ignored.
NOT_FOR_UDP = {
    "json_stream": "--json-stream",
    "start_at": "--start-at",
    "connect_rate": "--connect-rate",
    "source_address": "--source-address",
    "active": "--active",
}


def run(params: Params) -> tuple[dict[str, Any], int]:
    for name, flag in NOT_FOR_UDP.items():
        if getattr(params, name, None):
            raise Abort(f"{flag} applies to TCP workloads, not --udp")
    family, address = resolve(params)
    processes = min(params.processes or default_processes(), params.connections)
    try:
        sampler = start_sampler(params.server_pid)
    except NoSuchServer as exc:
        raise Abort(str(exc)) from exc
    context = multiprocessing.get_context()
    out: Any = context.Queue()
    go = context.Event()
    start_at: Any = context.Value("d", 0.0)
    workers = []
    total = Counts()
    blobs: list[bytes] = []
    try:
        first = 0
        for i in range(processes):
            flows = params.connections // processes + (i < params.connections % processes)
            rate = (params.rate or 0.0) * flows / params.connections
            proc = context.Process(
                target=_worker_main,
                args=(params, address, family, first, flows, rate, out, start_at, go),
                name=f"echod-bench-udp-{i}",
                daemon=True,
            )
            proc.start()
            workers.append(proc)
            first += flows
        _wait(out, processes, "ready", time.monotonic() + 60)
        start = time.monotonic() + 0.05
        start_at.value = start
        go.set()
        end = start + params.warmup + params.duration
        for message in _wait(out, processes, "result", end + params.timeout + 30):
            total.add(message[1])
            blobs.append(message[2])
    finally:
        for proc in workers:
            proc.join(timeout=2)
            if proc.is_alive():
                proc.terminate()
                proc.join()
        if sampler is not None:
            sampler.stop()
    server = sampler.figures(start + params.warmup, end) if sampler else None
    figures = build(params, processes, total, summarize(merge(blobs)), server)
    return figures, int(figures["exit_status"])


def _wait(out: Any, count: int, kind: str, deadline: float) -> list[Any]:
    received: list[Any] = []
    while len(received) < count:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise Abort(f"workers did not report {kind} in time", EXIT_ERRORS)
        try:
            message = out.get(timeout=min(remaining, 0.5))
        except queue_module.Empty:
            continue
        if message[0] == "crash":
            raise Abort(f"a worker failed:\n{message[1]}", EXIT_ERRORS)
        if message[0] == kind:
            received.append(message)
    return received


def build(params: Params, processes: int, total: Counts, latency: dict[str, Any],
          server: Any) -> dict[str, Any]:  # fmt: skip
    window = total.window_s
    settled = total.answered + total.lost
    status = EXIT_MISMATCH if total.corrupt or total.duplicates else EXIT_CLEAN
    figures: dict[str, Any] = {
        "params": params.as_dict(),
        "environment": environment(),
        "processes": processes,
        "flows": params.connections,
        "window_s": round(window, 3),
        "sent": total.sent,
        "answered": total.answered,
        "lost": total.lost,
        "loss_pct": round(100.0 * total.lost / settled, 3) if settled else 0.0,
        "late": total.late,
        "duplicates": total.duplicates,
        "reordered": total.reordered,
        "corrupt": total.corrupt,
        "send_dropped": total.send_dropped,
        "datagrams_per_s": round(total.answered / window, 1) if window > 0 else 0.0,
        "latency_us": latency,
        "client_cpu_pct": round(100.0 * total.cpu_s / window, 1) if window > 0 else 0.0,
        "answered_by_second": total.by_second[: int(window)],
        "server": None if server is None else dataclasses.asdict(server),
        "warnings": [w for w in [rate_limit_warning(total)] if w],
        "exit_status": status,
    }
    return figures


# A limiter answers the same number every second whatever is offered; overload
# answers less as the generator pushes harder and spends its own CPU doing so.
STEADY = 0.15  # steady seconds within this share of their median
IDLE_GENERATOR = 0.5  # of a core


def rate_limit_warning(total: Counts) -> str | None:
    """Say when the losses look like a rate limit (echod's --udp-rate per source) rather
    than what the server can carry, so the figure is not read as the server's speed."""
    settled = total.answered + total.lost
    full = total.by_second[1 : int(total.window_s)]  # after the first: a burst may pass
    if not settled or total.lost < 0.005 * settled or not full or total.window_s <= 0:
        return None
    median = sorted(full)[len(full) // 2]
    if median == 0 or any(abs(n - median) > STEADY * median for n in full):
        return None
    if total.cpu_s / total.window_s > IDLE_GENERATOR:
        return None
    return (
        f"{100 * total.lost / settled:.1f} % lost while answers came at a steady "
        f"{median:,}/s and the generator was mostly idle: the pattern of a rate limit, "
        "not of a busy server. echod answers each source address at most --udp-rate "
        "(default 100/s after a 2 s burst) and --udp-budget in all; run it with "
        "--udp-rate 0/0 --udp-budget 0 to measure the server instead"
    )


def table(figures: dict[str, Any]) -> str:
    """The report, laid out as the TCP one: a heading line, one figure a line."""
    p = figures["params"]
    server = figures["server"]
    lines = [
        f"echod-bench {figures['environment']['generator_version']}: udp against "
        f"{p['host']}:{p['port']}, {figures['flows']} flows, size {p['size']} B, "
        f"pipeline {p['pipeline']}, {process_count(figures['processes'])}",
        f"  window         {figures['window_s']:.2f} s after {p['warmup']:g} s warmup",
        f"  datagrams/s    {figures['datagrams_per_s']:,.0f} answered",
        f"  datagrams      sent {figures['sent']:,}, answered {figures['answered']:,}, "
        f"lost {figures['lost']:,} ({figures['loss_pct']:.2f} %), late {figures['late']:,}",
        f"  latency µs     {percentiles(figures['latency_us'])}",
        f"  errors         corrupt {figures['corrupt']:,}, duplicates {figures['duplicates']:,}"
        f" (reordered {figures['reordered']:,}, not an error)",
    ]
    if server:
        lines.append(
            f"  server         CPU mean {server['cpu_mean_pct']:.0f}%, {server['cpu_s']:.2f} s; "
            f"RSS peak {server['rss_peak'] / 2**20:.1f} MiB"
        )
    lines.append(f"  generator CPU  {figures['client_cpu_pct']:.0f}% of one core")
    lines.extend(f"WARNING: {w}" for w in figures.get("warnings", []))
    return "\n".join(lines)


def main(params: Params) -> int:
    """The ``--udp`` run: one clear line on bad input, the table, the JSON file."""
    try:
        figures, status = run(params)
    except Abort as exc:
        print(f"echod-bench: {exc}", file=sys.stderr)
        return exc.status
    out = sys.stderr if params.json == "-" else sys.stdout
    print(table(figures), file=out)
    if params.json:
        write(params.json, figures)
    return status
