"""CPU, memory and descriptors of one process, from /proc (Linux) as Prometheus'
standard ``process_*`` series report them; elsewhere only what ``resource`` knows."""

from __future__ import annotations

import os
import resource
from dataclasses import dataclass
from pathlib import Path

_TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
_PAGE = resource.getpagesize()


@dataclass(frozen=True)
class ProcessFigures:
    cpu_seconds: float
    resident_bytes: int | None = None
    open_fds: int | None = None
    max_fds: int | None = None
    start_time: float | None = None  # seconds since the epoch


def _boot_time() -> float | None:
    try:
        for line in Path("/proc/stat").read_text().splitlines():
            if line.startswith("btime "):
                return float(line.split()[1])
    except OSError:
        pass
    return None


_BOOT = _boot_time()


def read(pid: int | None = None) -> ProcessFigures | None:
    """Figures of `pid` (this process by default); None when it is gone."""
    where = Path("/proc") / (str(pid) if pid is not None else "self")
    try:
        # The command name may hold spaces and parentheses: split after the last ")".
        stat = (where / "stat").read_text().rsplit(")", 1)[1].split()
        rss_pages = int((where / "statm").read_text().split()[1])
        open_fds = len(os.listdir(where / "fd"))
    except (OSError, IndexError, ValueError):
        if pid is not None and pid != os.getpid():
            return None
        usage = resource.getrusage(resource.RUSAGE_SELF)
        return ProcessFigures(cpu_seconds=usage.ru_utime + usage.ru_stime)
    max_fds = None
    if pid is None or pid == os.getpid():
        soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
        max_fds = soft if soft != resource.RLIM_INFINITY else None
    start = _BOOT + int(stat[19]) / _TICKS if _BOOT is not None else None
    return ProcessFigures(
        cpu_seconds=(int(stat[11]) + int(stat[12])) / _TICKS,
        resident_bytes=rss_pages * _PAGE,
        open_fds=open_fds,
        max_fds=max_fds,
        start_time=start,
    )
