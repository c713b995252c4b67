"""psutil sampling of the server under test: CPU and memory of its whole process tree.

A server may fork workers or threads; CPU time is summed over the process and
all its descendants (including the time of children it has already reaped), and
RSS is summed over the live ones.  Figures for a window are interpolated between
samples, so the sampling period does not decide where the window starts.
"""

from __future__ import annotations

import bisect
import itertools
import threading
import time
from dataclasses import dataclass

import psutil

SAMPLE_INTERVAL = 0.1


@dataclass(frozen=True)
class Sample:
    at: float
    cpu_s: float
    rss: int
    processes: int


@dataclass(frozen=True)
class ServerFigures:
    pid: int
    processes: int
    cpu_s: float
    cpu_mean_pct: float
    cpu_peak_pct: float
    rss_start: int
    rss_peak: int


class NoSuchServer(Exception):
    """The ``--server-pid`` names no process we may watch."""


class TreeSampler:
    """Samples a process tree on a daemon thread until stopped."""

    def __init__(self, pid: int, interval: float = SAMPLE_INTERVAL) -> None:
        try:
            self.root = psutil.Process(pid)
            self.root.cpu_times()
        except (psutil.NoSuchProcess, psutil.AccessDenied) as exc:
            raise NoSuchServer(f"cannot watch server pid {pid}: {type(exc).__name__}") from exc
        self.pid = pid
        self.interval = interval
        self.samples: list[Sample] = []
        self._known: dict[int, psutil.Process] = {pid: self.root}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="server-sampler", daemon=True)

    def start(self) -> None:
        self.sample()
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()
        self.sample()

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            self.sample()

    def sample(self) -> None:
        """One reading of the tree; processes that vanish mid-reading are skipped."""
        try:
            children = self.root.children(recursive=True)
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            children = []
        procs = [self.root]
        for child in children:
            procs.append(self._known.setdefault(child.pid, child))
        cpu = 0.0
        rss = 0
        alive = 0
        for proc in procs:
            try:
                with proc.oneshot():
                    times = proc.cpu_times()
                    memory = proc.memory_info()
            except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
                continue
            cpu += times.user + times.system + times.children_user + times.children_system
            rss += memory.rss
            alive += 1
        if alive:
            self.samples.append(Sample(time.monotonic(), cpu, rss, alive))

    def _cpu_at(self, at: float) -> float:
        samples = self.samples
        times = [s.at for s in samples]
        i = bisect.bisect_left(times, at)
        if i <= 0:
            return samples[0].cpu_s
        if i >= len(samples):
            return samples[-1].cpu_s
        before, after = samples[i - 1], samples[i]
        share = (at - before.at) / (after.at - before.at) if after.at > before.at else 1.0
        return before.cpu_s + share * (after.cpu_s - before.cpu_s)

    def figures(self, start: float, end: float) -> ServerFigures | None:
        """CPU and memory over ``[start, end]`` (monotonic seconds), or None if unsampled."""
        if not self.samples or end <= start:
            return None
        cpu = max(0.0, self._cpu_at(end) - self._cpu_at(start))
        inside = [s for s in self.samples if start <= s.at <= end]
        peak = 0.0
        for before, after in itertools.pairwise(inside):
            if after.at > before.at:
                peak = max(peak, (after.cpu_s - before.cpu_s) / (after.at - before.at))
        return ServerFigures(
            pid=self.pid,
            processes=max((s.processes for s in self.samples), default=0),
            cpu_s=cpu,
            cpu_mean_pct=100.0 * cpu / (end - start),
            cpu_peak_pct=100.0 * peak,
            rss_start=self.samples[0].rss,
            rss_peak=max(s.rss for s in self.samples),
        )


def start_sampler(pid: int | None) -> TreeSampler | None:
    """Sample ``pid``'s process tree from now on (``--server-pid``); None without one.

    Raises NoSuchServer, which each caller turns into its own one-line error.
    """
    if pid is None:
        return None
    sampler = TreeSampler(pid)
    sampler.start()
    return sampler
