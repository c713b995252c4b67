"""The robustness cases of issue 5, each a function from a target and a scale to an outcome.

A case reads like its claim: it sets the situation up against a live server, measures
from /proc, and ``require``s each bound. Every case fails against the naive server
(``naive_server.py``), which is how the suite shows it can fail at all.
"""

from __future__ import annotations

import contextlib
import os
import selectors
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from tests.robust import schedule
from tests.robust.harness import (
    Abort,
    MiB,
    Outcome,
    Scale,
    Server,
    Target,
    alive,
    children,
    close_all,
    connect_many,
    death,
    describe_latency,
    echo_latency,
    fresh_echo_latency,
    idle_cpu,
    mib,
    percentile,
    raise_nofile,
    round_trip,
)
from tests.support import ROOT, reset, wait_until

# Bounds from the issues (5 and 10); each says why it is that number. A case that cannot
# meet one says so in the table; the bound stays. Each is shown to catch its fault by the
# fault server (faults.py, test_robust.py).
# CPU is read in clock ticks (10 ms): over the short scale's 1 s window 2% is two ticks.
IDLE_CPU = 0.02
EXHAUSTED_CPU = 0.10
HOG_GROWTH = 16 * MiB
# Issue 10 asks it of every backend. The threads back-off bug fixed in cdba79a measured
# 0.56-1.26 s, which the 1.0 s bound this replaces let through when it was under 1 s.
ACCEPT_AGAIN = 0.5
# Churn memory: slack for what pymalloc keeps of freed arenas (measured at most 0.55 MiB
# over 50,000 cycles, asyncio), plus 40 bytes a cycle, so the bound follows the count:
# 3.9 MiB at 50,000 cycles catches a leak of 100 bytes a connection (4.8 MiB), 2.1 MiB at
# the short scale's 3,000 cycles catches 1 KiB a connection.
CHURN_SLACK = 2 * MiB
CHURN_PER_CYCLE = 40
# A client's round trip while others misbehave, at the 90th percentile: the worst
# measured at full scale is single-digit milliseconds (poll at 5,000 idle: p99 7.5 ms),
# so 50 ms leaves room for a noisy shared machine yet sits well below a slowed client
# (the fault server's injected delays are 200-250 ms). p90, not the maximum: one
# preempted sample on a busy machine is not a slowed client; a slowed client is slowed
# on every round trip.
LATENCY_P90 = 0.050
HIGH_WATER = 64 * 1024
# One read past the high-water mark (64 KiB on the reactor, 256 KiB on asyncio's
# transports) per slow reader, plus slack for the interpreter's own growth (uvloop, the
# most, measured +8.1 MiB with 20 readers): 9.6 MiB for the short scale's 5 readers,
# which a server buffering 8 MiB a reader (40 MiB) breaks.
SLOW_GROWTH_EACH = HIGH_WATER + 256 * 1024
SLOW_GROWTH_SLACK = 8 * MiB


@dataclass(frozen=True)
class Case:
    name: str
    claim: str
    run: Callable[[Target, Scale], Outcome]


CASES: list[Case] = []


def case(name: str, claim: str) -> Callable[[Callable[[Target, Scale], Outcome]], Case]:
    def register(run: Callable[[Target, Scale], Outcome]) -> Case:
        entry = Case(name, claim, run)
        CASES.append(entry)
        return entry

    return register


# Where a backend cannot meet a case by design; the table prints the reason beside the
# measured failure. A case in this table that passes is reported as passing.
KNOWN_LIMITS: dict[tuple[str, str], str] = {
    ("c10k", "select"): "select(2) cannot watch descriptors ≥ FD_SETSIZE (1024); echod refuses those connections with a warning",
    ("idle-flood", "select"): "select(2) cannot watch descriptors ≥ FD_SETSIZE (1024); echod refuses those connections with a warning",
}  # fmt: skip


# Failures of echod found by this suite and reported, not yet fixed: the table shows them
# as failures with this note; pytest marks them xfail (not strict) until the fix lands.
OPEN_BUGS: dict[tuple[str, str], str] = {
    ("churn", "threads"): "RSS +23.5 to +34 MiB after 50,000 connect/echo/close cycles (bound 3.9 MiB): with 32 clients at once, 5,000-7,500 connection threads are alive (RSS +250 MiB while it runs), each done with its client but waiting for the GIL to close and end; glibc keeps part of their stacks and arenas afterwards. Reusing threads (a pool) was measured and changed nothing: the pile-up is threads finishing, not starting. Closing the socket without handing the GIL round (ctypes.PyDLL's close) ends the pile-up (RSS +0.5 MiB, 6,952 cycles/s against 5,019) but slows the recovery after 4,096 clients leave at once (0.008-0.88 s against 0.002-0.11 s, 5 interleaved pairs) and the stop after 10,000: not adopted",
}  # fmt: skip

# The bounds each open bug breaks, and only those: anything else it breaks (a leaked
# descriptor, a crash, a lost echo) is a new failure, not the known bug.
OPEN_BUG_BREAKS: dict[tuple[str, str], frozenset[str]] = {
    ("churn", "threads"): frozenset({"memory"}),
}

# What the suite caught before it was fixed (case, backend, measured, fix): the record
# that each case can fail on echod itself, not only on the naive server.
FIXED_BUGS: tuple[tuple[str, str, str, str], ...] = (
    ("graceful-stop", "threads, uvloop", "232-872 of 1,000 connections reset mid-drain (threads, 5 of 7 runs); 4 of 100 (uvloop)", "a drain sweep no longer closes a connection whose input waits unread in the kernel (FIONREAD): closing it sent RST"),
    ("fd-exhaustion", "asyncio", "accepted again only 2.6-3.5 s after clients left: the stdlib retries EMFILE after 1 s without shedding", "the loop's exception handler sheds waiting clients with a spare descriptor, as the reactor does, and restarts accepting at once"),
    ("fd-exhaustion", "threads", "0.56-1.26 s: the 1 s back-off ignored freed descriptors", "a closing connection ends the back-off"),
    ("fd-exhaustion", "gevent", "0.80-0.82 s once the bound was 0.5 s: out of descriptors it slept 1 s, blind to freed descriptors", "the serving core's one mechanism on every backend: shed with the spare descriptor, accept again at the next release (1.5 ms in the full run)"),
)  # fmt: skip


# Each bound, and the fault of the fault server (fault_server.py) that must break it and
# no other: test_robust.py runs them at the short scale, make robust reports them.
CAUGHT_BY: tuple[tuple[str, str, str], ...] = (
    ("c10k", "echoed", "cap-1000"),
    ("idle-flood", "idle-cpu", "idle-sweep"),
    ("idle-flood", "fresh-latency", "slow-fresh-client"),
    ("hog", "memory", "buffer-24m"),
    ("fd-exhaustion", "no-spin", "spin-on-emfile"),
    ("fd-exhaustion", "accept-again", "accept-backoff-2s"),
    ("resets", "no-leak", "leak-on-reset"),
    ("resets", "no-traceback", "traceback-on-reset"),
    ("churn", "no-leak", "leak-fd"),
    ("churn", "memory", "leak-memory"),
    ("slow-readers", "memory", "buffer-8m"),
    ("slow-readers", "others-latency", "sleep-while-paused"),
    ("interleavings", "bytes", "drop-unsent"),
    ("worker-kill", "replaced", "no-replace"),
    ("interleavings", "no-traceback", "traceback-on-reset"),
    ("graceful-stop", "every-byte", "close-on-sigterm"),
    ("graceful-stop", "exit-0", "exit-1-after-drain"),
)


def run(entry: Case, target: Target, scale: Scale) -> Outcome:
    """Run one case; a crash of the case itself is a failure with its reason, not a traceback."""
    try:
        return entry.run(target, scale)
    except Abort as exc:
        return Outcome(failures=[str(exc)], broken=[ABORTED])
    except Exception as exc:  # a case must report, never take the run down
        lines = str(exc).strip().splitlines() or [""]
        told = lines[0] if len(lines) == 1 else f"{lines[0]} … {lines[-1]}"
        return Outcome(failures=[f"{type(exc).__name__}: {told}"], broken=[ABORTED])


# The case could not go on (the server died, the case crashed): no bound was judged.
ABORTED = "aborted"


def held_all(server: Server, expected: int, timeout: float = 15.0) -> int:
    """Wait until the server holds ``expected`` descriptors, or their count stops moving."""
    last, still_since = -1, time.monotonic()
    deadline = still_since + timeout
    while time.monotonic() < deadline and alive(server):
        count = server.open_fds()
        if count >= expected:
            return count
        if count != last:
            last, still_since = count, time.monotonic()
        elif time.monotonic() - still_since > 1.0:
            break
        time.sleep(0.05)
    return server.open_fds() if alive(server) else last


def _check_alive(server: Server) -> None:
    if not alive(server):
        raise Abort(death(server))


# ---------------------------------------------------------------------------------------
@case("c10k", "10,000 concurrent connections all echo correctly; RSS per connection reported")
def concurrent_connections(target: Target, scale: Scale) -> Outcome:
    out = Outcome()
    raise_nofile()
    with target.start() as server:
        with server.connect() as warm:
            round_trip(warm, b"warm")
        before = server.rss()
        socks = connect_many(server, scale.concurrent)
        try:
            echoed = echo_each(socks, timeout=30.0)
            growth = server.rss() - before
        finally:
            close_all(socks)
        _check_alive(server)
    out.figure(f"{echoed}/{len(socks)} echoed")
    out.figure(f"RSS {growth / len(socks) / 1024:.1f} KiB/connection (+{mib(growth)})")
    out.require(
        "echoed", echoed == len(socks), f"{len(socks) - echoed} connections got no correct echo"
    )
    return out


def echo_each(socks: Sequence[socket.socket], timeout: float) -> int:
    """Send every socket its own 16 bytes at once, then count the exact echoes."""
    selector = selectors.DefaultSelector()
    expected: dict[socket.socket, bytes] = {}
    received: dict[socket.socket, bytearray] = {}
    for index, sock in enumerate(socks):
        message = f"conn {index:010d}\n".encode()
        try:
            sock.sendall(message)
        except OSError:
            continue
        sock.setblocking(False)
        expected[sock] = message
        received[sock] = bytearray()
        selector.register(sock, selectors.EVENT_READ)
    correct = 0
    deadline = time.monotonic() + timeout
    while selector.get_map() and time.monotonic() < deadline:
        for key, _ in selector.select(0.5):
            ready = key.fileobj
            assert isinstance(ready, socket.socket)
            try:
                data = ready.recv(64)
            except BlockingIOError:
                continue
            except OSError:
                data = b""
            received[ready] += data
            if not data or len(received[ready]) >= len(expected[ready]):
                selector.unregister(ready)
                correct += received[ready] == expected[ready]
    selector.close()
    return correct


# ---------------------------------------------------------------------------------------
@case(
    "idle-flood",
    "5,000 connections that never send cost < 2% CPU; fresh clients are echoed within 50 ms (p90)",
)
def idle_flood(target: Target, scale: Scale) -> Outcome:
    out = Outcome()
    raise_nofile()
    with target.start() as server:
        calm = fresh_echo_latency(server, scale.samples)
        baseline = server.settled_fds()
        idle = connect_many(server, scale.idle)
        try:
            held = held_all(server, baseline + scale.idle) - baseline
            _check_alive(server)
            time.sleep(scale.settle)
            busy = idle_cpu(server, scale.window)
            try:
                flooded = fresh_echo_latency(server, scale.samples)
            except (OSError, Abort, AssertionError) as exc:
                out.require(
                    "fresh-latency",
                    False,
                    f"a fresh client was not served: {type(exc).__name__}: {exc}",
                )
                flooded = [float("inf")]
        finally:
            close_all(idle)
        _check_alive(server)
    out.figure(f"CPU {busy:.1%} over {scale.window:g} s with {held} of {scale.idle} idle held")
    during = describe_latency(flooded) if flooded[-1] != float("inf") else "not served"
    out.figure(f"fresh echo {during} (no flood: {describe_latency(calm)})")
    out.require(
        "held", held >= scale.idle, f"the server held only {held} of {scale.idle} idle connections"
    )
    out.require(
        "idle-cpu", busy < IDLE_CPU, f"idle connections cost {busy:.1%} CPU (bound {IDLE_CPU:.0%})"
    )
    if flooded[-1] != float("inf"):
        slow = percentile(flooded, 0.9)
        out.require(
            "fresh-latency",
            slow < LATENCY_P90,
            f"fresh clients' p90 {slow * 1e3:.0f} ms (bound {LATENCY_P90 * 1e3:.0f} ms)",
        )
    return out


# ---------------------------------------------------------------------------------------
@case("hog", "a client sending 1 GiB and never reading grows RSS < 16 MiB; others are served")
def hog(target: Target, scale: Scale) -> Outcome:
    out = Outcome()
    with target.start() as server:
        with server.connect() as warm:
            round_trip(warm, b"warm")
        before = server.rss()
        (hog_sock,) = connect_many(server, 1, rcvbuf=4096)
        polite = Polite(server)
        try:
            block = memoryview(os.urandom(64 * 1024))
            (pushed,), peak = push([hog_sock], [Repeat(block, scale.hog_bytes)], 1.0, server.rss)
            served_during = polite.stop()
            with server.connect() as late:
                late.settimeout(10)
                served_after = round_trip(late, os.urandom(300_000))
            _check_alive(server)
        finally:
            reset(hog_sock)
    growth = peak - before
    out.figure(f"pushed {mib(pushed)} of {mib(scale.hog_bytes)} before blocked")
    out.figure(f"RSS +{mib(growth)}; {served_during} polite echoes meanwhile")
    out.require(
        "back-pressure", pushed < scale.hog_bytes, "the server read everything: no back-pressure"
    )
    out.require("memory", growth < HOG_GROWTH, f"RSS grew {mib(growth)} (bound {mib(HOG_GROWTH)})")
    out.require(
        "others-served",
        served_during > 0 and not polite.failures,
        f"polite client: {polite.failures}",
    )
    out.require("after", served_after, "a client after the hog got a different echo")
    return out


class Polite:
    """A well-behaved client doing 4 KiB round trips in a thread until stopped."""

    def __init__(self, server: Server) -> None:
        self.sock = server.connect(timeout=10)
        self.done = threading.Event()
        self.count = 0
        self.failures: list[str] = []
        self.thread = threading.Thread(target=self._talk, daemon=True)
        self.thread.start()

    def _talk(self) -> None:
        try:
            while not self.done.is_set():
                if not round_trip(self.sock, os.urandom(4096)):
                    self.failures.append("different echo")
                    return
                self.count += 1
        except Exception as exc:
            self.failures.append(f"{type(exc).__name__}: {exc}")

    def stop(self) -> int:
        self.done.set()
        self.thread.join(15)
        self.sock.close()
        return self.count


class Repeat:
    """``size`` bytes made of one block over and over, sliced like a memoryview."""

    def __init__(self, block: memoryview, size: int) -> None:
        self.block, self.size = block, size

    def __len__(self) -> int:
        return self.size

    def __getitem__(self, part: slice) -> memoryview:
        start = part.start % len(self.block)
        return self.block[start : start + min(part.stop - part.start, len(self.block) - start)]


def push(
    socks: Sequence[socket.socket],
    data: Sequence[memoryview | Repeat],
    settle: float,
    sample: Callable[[], int],
) -> tuple[list[int], int]:
    """Send each socket its ``data`` without reading, until none has moved for ``settle`` s.

    Returns the bytes each sent and the peak of ``sample()`` (the server's RSS) meanwhile.
    """
    step = 64 * 1024
    sent = [0] * len(socks)
    peak = sample()
    last_progress = last_sample = time.monotonic()
    give_up = last_progress + 60
    with selectors.DefaultSelector() as selector:
        for index, sock in enumerate(socks):
            sock.setblocking(False)
            selector.register(sock, selectors.EVENT_WRITE, index)
        while selector.get_map():
            now = time.monotonic()
            if now - last_progress > settle or now > give_up:
                break
            if now - last_sample > 0.05:
                peak, last_sample = max(peak, sample()), now
            for key, _ in selector.select(0.05):
                index = key.data
                mine = data[index]
                end = min(sent[index] + step, len(mine))
                try:
                    sent[index] += key.fileobj.send(mine[sent[index] : end])  # type: ignore[union-attr]
                except BlockingIOError:
                    continue
                last_progress = time.monotonic()
                if sent[index] >= len(mine):
                    selector.unregister(key.fileobj)
    return sent, max(peak, sample())


# ---------------------------------------------------------------------------------------
@case(
    "fd-exhaustion",
    "under prlimit --nofile=256: no accept spin (< 10% CPU), open connections echo, accepts again < 0.5 s after clients leave",
)
def fd_exhaustion(target: Target, scale: Scale) -> Outcome:
    out = Outcome()
    limit = scale.nofile
    with target.start(wrapper=("prlimit", f"--nofile={limit}:{limit}")) as server:
        held = connect_many(server, limit // 2)
        flood: list[socket.socket] = []
        try:
            for sock in held:
                sock.settimeout(3)
                if not round_trip(sock, b"before"):
                    raise Abort("a connection opened below the limit got a different echo")
            with contextlib.suppress(OSError):
                for _ in range(limit * 2):  # far past what the server can accept
                    flood.append(socket.create_connection((server.host, server.port), 2))
            time.sleep(scale.settle)
            full = server.open_fds()
            busy = idle_cpu(server, scale.window)
            held_ok = sum(1 for sock in held if _echoes(sock, b"during"))
            close_all(flood)
            left = time.monotonic()
            # Waits past the bound, so a slow recovery is measured, not only refused.
            again = wait_until(lambda: _fresh_client_served(server), timeout=5, interval=0.02)
            recovery = time.monotonic() - left
        finally:
            close_all(flood)
            close_all(held)
        _check_alive(server)
    out.figure(f"CPU {busy:.1%} at {full}/{limit} fds, {len(flood)} clients past the limit")
    out.figure(f"{held_ok}/{len(held)} open connections echoed")
    out.figure(
        f"accepts again {recovery * 1e3:.1f} ms after they left"
        if again
        else "not accepting 5 s after they left"
    )
    out.require(
        "exhausted",
        full >= limit - 16,
        f"never ran out of descriptors ({full}/{limit}): nothing tested",
    )
    out.require("no-spin", busy < EXHAUSTED_CPU, f"spun at {busy:.0%} CPU out of descriptors")
    out.require(
        "open-echo", held_ok == len(held), f"{len(held) - held_ok} open connections stopped echoing"
    )
    out.require(
        "accept-again",
        again and recovery < ACCEPT_AGAIN,
        f"accepted again only after {recovery:.2f} s (bound {ACCEPT_AGAIN:g} s)",
    )
    return out


def _echoes(sock: socket.socket, message: bytes) -> bool:
    try:
        return round_trip(sock, message)
    except (OSError, AssertionError):
        return False


def _fresh_client_served(server: Server) -> bool:
    try:
        with socket.create_connection((server.host, server.port), timeout=0.5) as sock:
            sock.settimeout(0.5)
            return round_trip(sock, b"after")
    except (OSError, AssertionError):
        return False


# ---------------------------------------------------------------------------------------
@case("resets", "1,000 connections reset mid-write: no descriptor leaked, no traceback")
def resets(target: Target, scale: Scale) -> Outcome:
    out = Outcome()
    with target.start() as server:
        baseline = server.settled_fds()
        socks = connect_many(server, scale.resets, rcvbuf=4096)
        payload = os.urandom(128 * 1024)
        for sock in socks:
            sock.setblocking(False)
            with contextlib.suppress(BlockingIOError):
                sock.send(payload)  # far more than the 4 KiB window: the server's echo backs up
        held = held_all(server, baseline + len(socks)) >= baseline + len(socks)
        time.sleep(0.3)
        peak = server.open_fds()
        for sock in socks:
            reset(sock)
        settled = wait_until(lambda: server.open_fds() <= baseline, timeout=10)
        after = server.open_fds()
        _check_alive(server)
        with server.connect() as sock:
            still_serving = round_trip(sock, b"still here")
        traceback = "Traceback" in server.log
    out.figure(f"fds {baseline} → {peak} → {after}")
    out.require("held", held, f"the server never held all {len(socks)} connections")
    out.require("no-leak", settled, f"{after - baseline} descriptors leaked")
    out.require("no-traceback", not traceback, "traceback in the log")
    out.require("serving", still_serving, "a fresh client got a different echo")
    return out


# ---------------------------------------------------------------------------------------
@case("churn", "50,000 connect/echo/close cycles: descriptors and memory back to the baseline")
def churn(target: Target, scale: Scale) -> Outcome:
    out = Outcome()
    with target.start() as server:
        address = (server.host, server.port)
        cycle(address, min(1_000, scale.cycles // 5))  # warm the allocator and free lists
        baseline_fds, baseline_rss = server.settled_fds(), server.rss()
        start = time.monotonic()
        failed = cycle(address, scale.cycles)
        elapsed = time.monotonic() - start
        _check_alive(server)
        fds, rss = server.settled_fds(), server.rss()
    growth, bound = rss - baseline_rss, CHURN_SLACK + CHURN_PER_CYCLE * scale.cycles
    out.figure(f"{scale.cycles} cycles, {failed} failed ({scale.cycles / elapsed:,.0f}/s)")
    out.figure(f"fds {baseline_fds} → {fds}; RSS {growth / 1024:+,.0f} KiB")
    out.require("echoed", failed == 0, f"{failed} cycles did not get their echo")
    out.require("no-leak", fds == baseline_fds, f"{fds - baseline_fds} descriptors leaked")
    out.require("memory", growth < bound, f"RSS grew {mib(growth)} (bound {mib(bound)})")
    return out


def cycle(address: tuple[str, int], cycles: int, concurrency: int = 32) -> int:
    """Connect, echo 24 bytes, close — ``cycles`` times, ``concurrency`` at once; failures."""
    selector = selectors.DefaultSelector()
    started = finished = failed = 0
    deadline = time.monotonic() + 120

    def begin(index: int) -> None:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setblocking(False)
        sock.connect_ex(address)
        selector.register(sock, selectors.EVENT_WRITE, [f"cycle {index:016d}".encode(), b""])

    while finished < cycles and time.monotonic() < deadline:
        while started < cycles and started - finished < concurrency:
            begin(started)
            started += 1
        for key, events in selector.select(1.0):
            sock = key.fileobj
            assert isinstance(sock, socket.socket)
            message, got = key.data
            try:
                if events & selectors.EVENT_WRITE:
                    error = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
                    if error:
                        raise OSError(error, os.strerror(error))
                    sock.send(message)
                    selector.modify(sock, selectors.EVENT_READ, key.data)
                    continue
                data = sock.recv(64)
                got += data
                key.data[1] = got
                if data and len(got) < len(message):
                    continue
                ok = got == message
            except OSError:
                ok = False
            selector.unregister(sock)
            sock.close()
            finished += 1
            failed += not ok
    for key in list(selector.get_map().values()):
        key.fileobj.close()  # type: ignore[union-attr]
    selector.close()
    return failed + (cycles - finished)


# ---------------------------------------------------------------------------------------
@case(
    "slow-readers",
    "clients reading 1 byte/s are held at the high-water mark (RSS bound) and do not slow others (p90 < 50 ms)",
)
def slow_readers(target: Target, scale: Scale) -> Outcome:
    out = Outcome()
    count, cap, stride = scale.slow_readers, 32 * MiB, 1009
    pattern = memoryview(os.urandom(cap + count * stride))
    with target.start() as server:
        other = server.connect(timeout=10)
        other.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        calm = echo_latency(other, 0.0, scale.samples)
        before = server.rss()
        slow = connect_many(server, count, rcvbuf=4096)
        mine = [pattern[i * stride : i * stride + cap] for i in range(count)]
        pushed, peak = push(slow, mine, settle=0.5, sample=server.rss)
        reader = SlowReader(slow, mine)
        try:
            busy = echo_latency(other, scale.window, scale.samples)
            peak = max(peak, server.rss())
            _check_alive(server)
        finally:
            reader.stop()
            other.close()
            for sock in slow:
                reset(sock)
    growth, bound = peak - before, count * SLOW_GROWTH_EACH + SLOW_GROWTH_SLACK
    out.figure(f"{count} slow readers held after {mib(max(pushed))} each; RSS +{mib(growth)}")
    out.figure(f"others {describe_latency(busy)} (without: {describe_latency(calm)})")
    slowed = percentile(busy, 0.9)
    out.require(
        "paused", max(pushed) < cap, "a slow reader pushed everything: the server never paused it"
    )
    out.require("memory", growth < bound, f"RSS grew {mib(growth)} (bound {mib(bound)})")
    out.require("bytes", not reader.failures, f"slow readers: {reader.failures[:3]}")
    out.require(
        "others-latency",
        slowed < LATENCY_P90,
        f"others' p90 {slowed * 1e3:.0f} ms (bound {LATENCY_P90 * 1e3:.0f} ms)",
    )
    return out


class SlowReader:
    """Reads one byte a second from each socket, checking it against what that socket sent."""

    def __init__(self, socks: Sequence[socket.socket], sent: Sequence[memoryview]) -> None:
        self.socks, self.sent = socks, sent
        self.read = [0] * len(socks)
        self.failures: list[str] = []
        self.done = threading.Event()
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()

    def _read(self) -> None:
        while True:
            for index, sock in enumerate(self.socks):
                try:
                    byte = sock.recv(1)
                except BlockingIOError:
                    continue
                except OSError as exc:
                    self.failures.append(f"reader {index}: {exc}")
                    return
                if byte != self.sent[index][self.read[index] : self.read[index] + 1]:
                    self.failures.append(f"reader {index}: wrong byte at {self.read[index]}")
                    return
                self.read[index] += 1
            if self.done.wait(1.0):
                return

    def stop(self) -> None:
        self.done.set()
        self.thread.join(5)
        if min(self.read) == 0:
            self.failures.append("a slow reader got no byte at all")


# ---------------------------------------------------------------------------------------
@case(
    "interleavings",
    "hypothesis: random sends, partial reads, half-closes and resets; survivors get exactly their bytes",
)
def interleavings(target: Target, scale: Scale) -> Outcome:
    out = Outcome()
    with target.start() as server:
        report = schedule.check(
            server, scale.schedules, shrink=not target.naive, patience=scale.patience
        )
        _check_alive(server)
        traceback = "Traceback" in server.log
    out.figure(
        f"{report.schedules} schedules, {report.connections} connections, {mib(report.bytes)} echoed"
    )
    out.require("bytes", not report.failure, report.failure)
    out.require("no-traceback", not traceback, "traceback in the log")
    return out


# ---------------------------------------------------------------------------------------
@case(
    "worker-kill",
    "--workers 2, kill -9 one worker under load: replaced; only its connections are lost",
)
def worker_kill(target: Target, scale: Scale) -> Outcome:
    out = Outcome()
    if (
        not target.naive
        and target.fault is None
        and "--workers"
        not in subprocess.run(
            [sys.executable, "-m", "echod", "--help"], capture_output=True, text=True, cwd=ROOT
        ).stdout
    ):
        out.skipped = "echod --help has no --workers yet"
        return out
    with target.start("--workers", "2") as server:
        server.wait_for(r"ready: 2 workers")
        workers = children(server)
        socks = connect_many(server, 40)
        for sock in socks:
            round_trip(sock, b"accepted")  # served, so a worker holds its socket now
        owner = owners(server.port, socks, workers)
        victim = max(workers, key=lambda pid: list(owner.values()).count(pid))
        if len(set(owner.values())) < 2:
            raise Abort(
                f"all {len(socks)} connections went to one worker; cannot tell the loss apart"
            )
        talkers = [Talker(sock) for sock in socks]
        time.sleep(scale.settle)
        os.kill(victim, signal.SIGKILL)
        killed_at = [t.count for t in talkers]

        def replaced_by_a_new_worker() -> bool:
            now = children(server)
            return len(now) == 2 and victim not in now and bool(set(now) - set(workers))

        replaced = wait_until(replaced_by_a_new_worker, timeout=10 * scale.settle)
        time.sleep(2 * scale.settle)
        for talker in talkers:
            talker.stop()
        close_all(socks)
        fresh = sum(1 for _ in range(20) if _fresh_client_served(server))
        _check_alive(server)
    lost = {i for i, t in enumerate(talkers) if t.failure}
    victims = {i for i, sock in enumerate(socks) if owner[sock] == victim}
    survivors_progressed = all(
        talkers[i].count > killed_at[i] for i in range(len(socks)) if i not in victims
    )
    out.figure(f"{len(victims)}/{len(socks)} on the killed worker; {len(lost)} lost")
    out.figure(f"replaced: {'yes' if replaced else 'no'}; {fresh}/20 fresh clients served after")
    out.require("replaced", replaced, "the supervisor did not replace the killed worker")
    out.require(
        "others-intact",
        lost <= victims,
        f"{len(lost - victims)} connections on the other worker failed",
    )
    out.require(
        "others-progress", survivors_progressed, "connections on the other worker stopped echoing"
    )
    out.require(
        "victims-lost",
        lost == victims,
        f"{len(victims - lost)} connections outlived their killed worker?",
    )
    out.require("fresh", fresh == 20, f"only {fresh}/20 fresh clients served after the restart")
    return out


def owners(
    port: int, socks: Sequence[socket.socket], pids: Sequence[int]
) -> dict[socket.socket, int]:
    """Which worker holds the server side of each client socket, by /proc socket inodes."""
    inode_by_peer: dict[int, int] = {}
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        local_port = int(fields[1].rsplit(":", 1)[1], 16)
        if local_port == port and int(fields[9]):
            inode_by_peer[int(fields[2].rsplit(":", 1)[1], 16)] = int(fields[9])
    holder: dict[int, int] = {}
    for pid in pids:
        for fd in os.listdir(f"/proc/{pid}/fd"):
            with contextlib.suppress(OSError):
                link = os.readlink(f"/proc/{pid}/fd/{fd}")
                if link.startswith("socket:["):
                    holder[int(link[8:-1])] = pid
    return {sock: holder.get(inode_by_peer.get(sock.getsockname()[1], -1), -1) for sock in socks}


class Talker:
    """One connection doing 1 KiB round trips in a thread; the first failure ends it."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.sock.settimeout(5)
        self.count = 0
        self.failure = ""
        self.done = threading.Event()
        self.thread = threading.Thread(target=self._talk, daemon=True)
        self.thread.start()

    def _talk(self) -> None:
        try:
            while not self.done.is_set():
                if not round_trip(self.sock, os.urandom(1024)):
                    self.failure = "different echo"
                    return
                self.count += 1
        except (OSError, AssertionError) as exc:
            self.failure = f"{type(exc).__name__}: {exc}"

    def stop(self) -> None:
        self.done.set()
        self.thread.join(10)


# ---------------------------------------------------------------------------------------
@case(
    "graceful-stop",
    "SIGTERM while 1,000 connections are mid-transfer (8 of them paused by flow control): every byte sent before it is echoed, exit 0",
)
def graceful_stop(target: Target, scale: Scale) -> Outcome:
    out = Outcome()
    with target.start("--graceful-timeout", "20") as server:
        socks = connect_many(server, scale.graceful)
        # The first few send without reading until the server pauses them at the
        # high-water mark, and stay unread across two drain sweeps after the signal: a
        # paused connection is quiet, yet not done.
        transfer = Transfer(socks, paused=PAUSED)
        transfer.run(
            until=lambda: transfer.each_sent(16 * 1024) and transfer.paused_blocked(), limit=15
        )
        in_flight = transfer.in_flight()
        server.signal(signal.SIGTERM)
        transfer.sending = False
        transfer.run(until=lambda: False, limit=DRAIN_QUIET * 1.6)
        transfer.release()
        transfer.run(until=transfer.all_closed, limit=25)
        try:
            status = server.proc.wait(10)
        except subprocess.TimeoutExpired:
            status = None
        close_all(socks)
        traceback = "Traceback" in server.log
    short = [i for i in range(len(socks)) if transfer.received[i] != transfer.sent[i]]
    paused_short = [i for i in short if i < PAUSED]
    out.figure(f"{len(socks)} connections, {mib(in_flight)} in flight at SIGTERM")
    lost = sum(transfer.sent[i] - transfer.received[i] for i in short)
    out.figure(f"{len(socks) - len(short)} got every byte; exit {status}")
    if short:
        out.figure(
            f"{mib(lost)} lost on {len(short)} ({len(paused_short)} of them paused; "
            f"{transfer.resets} reset by the server)"
        )
    out.require(
        "bytes", not transfer.mismatches, f"{transfer.mismatches} connections got wrong bytes"
    )
    out.require(
        "every-byte", not short, f"{len(short)} connections lost bytes sent before the signal"
    )
    out.require("exit-0", status == 0, f"exit status {status}")
    out.require("no-traceback", not traceback, "traceback in the log")
    return out


PAUSED = 8
# Two sweeps of echod's drain (base.DRAIN_QUIET); the suite never imports echod's internals.
DRAIN_QUIET = 1.0


class Transfer:
    """Every socket sends 4 KiB chunks of its own slice of a pattern while reading the echo.

    The first ``paused`` sockets never read until ``release()``: they send until the
    server stops taking their bytes.
    """

    CHUNK = 4096
    WINDOW = 64 * 1024  # unechoed bytes a connection may have outstanding
    PAUSED_CAP = 32 * MiB

    def __init__(self, socks: Sequence[socket.socket], paused: int = 0) -> None:
        self.socks = socks
        # Two copies of one block: a position's byte depends only on it modulo the block,
        # however the stream was cut into sends and reads.
        block = os.urandom(512 * 1024)
        self.pattern = memoryview(block + block)
        self.sent = [0] * len(socks)
        self.received = [0] * len(socks)
        self.closed = [False] * len(socks)
        self.paused = set(range(paused))
        self.last_sent = [time.monotonic()] * len(socks)
        self.mismatches = 0
        self.resets = 0  # connections that ended in an error, not an EOF
        self.sending = True
        self.selector = selectors.DefaultSelector()
        for index, sock in enumerate(socks):
            sock.setblocking(False)
            self.selector.register(sock, self._mask(index), index)

    def _mask(self, index: int) -> int:
        if index in self.paused:
            return selectors.EVENT_WRITE if self.sending else 0
        wants_write = self.sending and self.sent[index] - self.received[index] < self.WINDOW
        return selectors.EVENT_READ | (selectors.EVENT_WRITE if wants_write else 0)

    def _expected(self, index: int, start: int, size: int) -> bytes:
        offset = (index * 7919 + start) % (len(self.pattern) // 2)
        return bytes(self.pattern[offset : offset + size])

    def each_sent(self, size: int) -> bool:
        return min(self.sent) >= size

    def paused_blocked(self) -> bool:
        """Every paused socket has stopped getting bytes out for a while."""
        quiet = time.monotonic() - 0.3
        return all(self.sent[i] and self.last_sent[i] < quiet for i in self.paused)

    def in_flight(self) -> int:
        return sum(self.sent) - sum(self.received)

    def all_closed(self) -> bool:
        return all(self.closed)

    def release(self) -> None:
        """The paused sockets start reading."""
        registered = self.selector.get_map()
        for index in self.paused:
            sock = self.socks[index]
            if sock in registered:
                self.selector.modify(sock, selectors.EVENT_READ, index)
            else:
                self.selector.register(sock, selectors.EVENT_READ, index)
        self.paused = set()

    def run(self, until: Callable[[], bool], limit: float) -> None:
        deadline = time.monotonic() + limit
        while not until() and time.monotonic() < deadline:
            for key, events in self.selector.select(0.05):
                self._step(key, events)

    def _step(self, key: selectors.SelectorKey, events: int) -> None:
        sock, index = key.fileobj, key.data
        assert isinstance(sock, socket.socket)
        if events & selectors.EVENT_READ:
            try:
                data = sock.recv(65536)
            except BlockingIOError:
                data = None
            except OSError:
                self.resets += 1
                data = b""
            if data == b"":
                self.closed[index] = True
                self.selector.unregister(sock)
                return
            if data:
                if data != self._expected(index, self.received[index], len(data)):
                    self.mismatches += 1
                self.received[index] += len(data)
        if events & selectors.EVENT_WRITE and self._mask(index) & selectors.EVENT_WRITE:
            size = self.CHUNK if index not in self.paused else 65536
            if index in self.paused and self.sent[index] >= self.PAUSED_CAP:
                size = 0
            with contextlib.suppress(BlockingIOError):
                sent = sock.send(self._expected(index, self.sent[index], size)) if size else 0
                self.sent[index] += sent
                if sent:
                    self.last_sent[index] = time.monotonic()
        mask = self._mask(index)
        if mask != key.events:
            if mask:
                self.selector.modify(sock, mask, index)
            else:
                self.selector.unregister(sock)
