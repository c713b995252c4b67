"""Handing the listeners to new code: SIGUSR2, as nginx's binary upgrade and gunicorn's USR2.

The new code runs as a new process, started by the old supervisor with every listener
passed the way systemd passes sockets (``LISTEN_FDS``, ``LISTEN_FDNAMES``,
``LISTEN_PID``), so one path in :mod:`echod.net.activation` takes sockets from systemd
and from an old echod. One more descriptor, named ``echod.upgrade``, is a channel
between the two supervisors: the new one says ``READY`` once all its workers serve;
the old one, still systemd's main process, names it with ``MAINPID=`` (so the units
keep ``NotifyAccess=main``), says ``MAINPID`` back, after which the new one tells
systemd ``READY=1``; the old then drains and, once its last worker is gone, hands over
its totals (``STATS``) and its reload history (``HISTORY``), so counters never go down.

The old process stays alive until the new one is ready, so a new process that fails
(an import error, a bad configuration, a crash, silence past the timeout) is stopped
and the old one keeps serving: the rollback nginx and gunicorn offer.
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Mapping, Sequence

from echod.net.activation import SD_LISTEN_FDS_START, UPGRADE_FD_NAME
from echod.net.listener_set import Named
from echod.service.channel import Channel

HISTORY = "HISTORY"  # old → new: the reload counters and the generation
MAINPID = "MAINPID"  # old → new: systemd has been told the new one is the main process


def start_successor(
    argv: Sequence[str], listeners: Sequence[Named], link: Channel, environ: Mapping[str, str]
) -> int:
    """Start ``python -m echod ARGV`` with ``listeners`` and ``link`` at fds 3...

    Forked twice, so that the new process is not our child: its parent becomes the
    service manager (systemd is every service's subreaper) or init. systemd 252 tracks a
    main process named with ``MAINPID=`` properly, draining it on stop, only if it is
    its own child; we learn that it ended from ``link`` closing. Returns its pid; raises
    OSError if it cannot fork.
    """
    passed = [*listeners, Named(link.sock, UPGRADE_FD_NAME)]
    env = dict(environ)
    env["LISTEN_FDS"] = str(len(passed))
    env["LISTEN_FDNAMES"] = ":".join(named.name for named in passed)
    command = [sys.executable, "-m", "echod", *argv]
    read_end, write_end = os.pipe()
    try:
        middle = os.fork()
    except OSError:
        os.close(read_end)
        os.close(write_end)
        raise
    if middle == 0:  # nothing here may return into the parent's code
        try:
            os.close(read_end)
            pid = os.fork()
            if pid:
                os.write(write_end, str(pid).encode())
            else:
                os.close(write_end)
                _exec(command, passed, env)
        except BaseException as exc:
            with contextlib.suppress(Exception):
                os.write(2, f"echod: error: cannot start the new code: {exc}\n".encode())
        os._exit(0)
    os.close(write_end)
    with contextlib.suppress(ChildProcessError):
        os.waitpid(middle, 0)
    with os.fdopen(read_end, "rb") as answer:
        text = answer.read()
    if not text.isdigit():
        raise OSError(f"the new process was not started (fork: {text!r})")
    return int(text)


def _exec(command: list[str], passed: Sequence[Named], env: dict[str, str]) -> None:
    """In the new process: the sockets at 3..., its own LISTEN_PID, then exec."""
    # Out of the way first, so that putting one at 3 + i never closes another.
    high = [os.dup(named.sock.fileno()) for named in passed]
    for number, fd in enumerate(high, SD_LISTEN_FDS_START):
        os.dup2(fd, number)  # dup2 leaves the copy inheritable
    for fd in high:
        os.close(fd)
    env["LISTEN_PID"] = str(os.getpid())
    if "WATCHDOG_USEC" in env:  # the watchdog is the new main process's to ping
        env["WATCHDOG_PID"] = str(os.getpid())
    os.closerange(SD_LISTEN_FDS_START + len(passed), _max_fd())
    os.execve(command[0], command, env)


def _max_fd() -> int:
    try:
        return max(int(name) for name in os.listdir("/proc/self/fd")) + 1
    except (OSError, ValueError):
        return os.sysconf("SC_OPEN_MAX")


def encode_history(counts: Mapping[tuple[str, str], int], generation: int) -> str:
    """The reload counters and the configuration generation, as the old hands them on."""
    words = [f"generation={generation}"]
    words += [f"{kind}/{result}={n}" for (kind, result), n in sorted(counts.items())]
    return " ".join(words)


def decode_history(text: str) -> tuple[dict[tuple[str, str], int], int]:
    counts: dict[tuple[str, str], int] = {}
    generation = 0
    for word in text.split():
        key, _, value = word.partition("=")
        if not value.isdigit():
            continue
        if key == "generation":
            generation = int(value)
        elif "/" in key:
            kind, _, result = key.partition("/")
            counts[(kind, result)] = int(value)
    return counts, generation
