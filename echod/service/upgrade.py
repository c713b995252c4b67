"""Handing the listeners to new code: SIGUSR2, as nginx's binary upgrade and gunicorn's USR2.

The new code runs as a new process, started by the old supervisor with every listener
passed the way systemd passes sockets (``LISTEN_FDS``, ``LISTEN_FDNAMES``,
``LISTEN_PID``), so one path in :mod:`echod.net.activation` takes sockets from systemd
and from an old echod. One more descriptor, named ``echod.upgrade``, is a channel
between the two supervisors: the new one says ``READY`` once all its workers serve;
the old one then drains and, once its last worker is gone, hands over its totals
(``STATS``) and its reload history (``HISTORY``), so counters never go down.

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

HISTORY = "HISTORY"


def start_successor(
    argv: Sequence[str], listeners: Sequence[Named], link: Channel, environ: Mapping[str, str]
) -> int:
    """Fork and exec ``python -m echod ARGV`` with ``listeners`` and ``link`` at fds 3...

    Returns the child's pid; raises OSError if it cannot fork.
    """
    passed = [*listeners, Named(link.sock, UPGRADE_FD_NAME)]
    env = dict(environ)
    env["LISTEN_FDS"] = str(len(passed))
    env["LISTEN_FDNAMES"] = ":".join(named.name for named in passed)
    command = [sys.executable, "-m", "echod", *argv]
    pid = os.fork()
    if pid:
        return pid
    try:  # the child: nothing here may return into the parent's code
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
    except BaseException as exc:
        with contextlib.suppress(Exception):
            os.write(2, f"echod: error: cannot start the new code: {exc}\n".encode())
    os._exit(127)


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
