"""One serving process: the single process echod runs without ``--workers``, or a worker.

Both take the same steps in the same order, here and nowhere else: bind the sockets
that are the process's own (a worker's SO_REUSEPORT listeners), give up root, build
the :class:`~echod.lifecycle.Lifecycle` the backend reports to, serve. A worker first
sheds what it inherited from the supervisor (:func:`run_worker`, the hand-off, as
gunicorn's ``Worker.init_process``) and reports over a pipe (:class:`PipeReporter`)
instead of to systemd.

The pipe carries lines, each far below PIPE_BUF so written whole: ``READY``, ``ALIVE``
(the worker loop's heartbeat), ``STATS <counters>`` (:meth:`Stats.encode`) and
``STOPPING``.
"""

from __future__ import annotations

import contextlib
import ctypes
import importlib
import logging
import os
import signal
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from typing import NoReturn

from echod.backends.base import Backend
from echod.config import Config
from echod.lifecycle import Lifecycle, Notifier, Stats
from echod.net.listener_set import Listeners
from echod.net.listeners import ListenerError
from echod.service import ServiceError
from echod.service.limits import drop_privileges

log = logging.getLogger("echod")

# A worker that exits with this status could not start (its listener, its backend): the
# supervisor gives up instead of restarting it in a loop, as gunicorn's WORKER_BOOT_ERROR.
EXIT_BOOT = 3
EXIT_CRASH = 70  # EX_SOFTWARE: an exception escaped the backend

# Modules a backend first imports inside serve(), found by diffing sys.modules around
# a serve; the --user tests catch a new one.
LAZY_IMPORTS = {"gevent": ("pprint",)}


def serve(
    backend: Backend,
    config: Config,
    listeners: Listeners,
    stats: Stats,
    notifier: Notifier | None,
    watchdog_interval: float | None,
) -> None:
    """Bind this process's own listeners, drop root, serve until told to stop.

    Raises ListenerError or ServiceError (one line for the operator) before serving.
    Every socket it served is closed when it returns.
    """
    sockets = listeners.bind_own(config.backlog)
    try:
        become_user(backend, config)
        backend.serve(sockets, config, Lifecycle(stats, notifier, watchdog_interval))
    finally:
        for sock in sockets:
            sock.close()


def become_user(backend: Backend, config: Config) -> None:
    """``--user``: give up root, once nothing left needs it (a no-op as that user)."""
    if config.user is None:
        return
    _preload(backend)
    drop_privileges(config.user, config.group)


def _preload(backend: Backend) -> None:
    """Import now what serving would import later.

    An unprivileged process may be unable to read the interpreter's own library (a
    pyenv under a mode-700 /root, say), so a module first imported after the drop
    would fail: load the backend's lazily imported event loop while still root.
    """
    factory = getattr(backend, "loop_factory", None)
    if isinstance(factory, str):
        importlib.import_module(factory.partition(":")[0])
    for module in LAZY_IMPORTS.get(backend.name, ()):
        importlib.import_module(module)


class PipeReporter:
    """A worker's :class:`echod.lifecycle.Notifier`: lines on a pipe to the supervisor.

    The write end is non-blocking: a supervisor too slow to read costs a report, never
    a stalled worker loop.
    """

    __slots__ = ("_fd", "_stats")

    def __init__(self, fd: int, stats: Stats) -> None:
        self._fd = fd
        self._stats = stats

    def _send(self, line: str) -> bool:
        try:
            os.write(self._fd, line.encode() + b"\n")
        except OSError:  # EAGAIN (pipe full) or EPIPE (supervisor gone)
            return False
        return True

    def ready(self, status: str | None = None) -> bool:
        return self._send("READY") and self._send(f"STATS {self._stats.encode()}")

    def status(self, text: str) -> bool:
        return self._send(f"STATS {self._stats.encode()}")

    def watchdog(self) -> bool:
        return self._send("ALIVE")

    def stopping(self) -> bool:
        return self._send("STOPPING")


@dataclass(frozen=True)
class Handoff:
    """Everything a freshly forked worker gets from its supervisor, and nothing more."""

    slot: int  # 1..N, kept across restarts: the id in logs
    report_fd: int  # write end of its pipe
    supervisor_pid: int
    signals: Sequence[signal.Signals]  # the supervisor's: back to default, unblocked
    inherited_fds: Sequence[int]  # the supervisor's own descriptors, to close
    watchdog_interval: float | None


def run_worker(
    handoff: Handoff, backend: Backend, config: Config, listeners: Listeners
) -> NoReturn:
    """In the child after fork: shed the supervisor's state and serve; never returns."""
    status = EXIT_CRASH
    try:
        signal.set_wakeup_fd(-1)
        # Its own process group: a terminal's Ctrl-C reaches the supervisor alone,
        # which passes it on once, instead of every worker twice.
        os.setpgid(0, 0)
        _die_with(handoff.supervisor_pid)
        for signum in handoff.signals:
            signal.signal(signum, signal.SIG_DFL)  # the backend installs its own
        signal.pthread_sigmask(signal.SIG_UNBLOCK, handoff.signals)
        # Plain closes: unregistering from the supervisor's epoll instance, which the
        # child shares, would remove the supervisor's registrations too.
        for fd in handoff.inherited_fds:
            with contextlib.suppress(OSError):
                os.close(fd)
        for sock in listeners.reservations:
            sock.close()
        tag = WorkerTag(handoff.slot)
        for handler in logging.getLogger().handlers:
            handler.addFilter(tag)
        status = _serve_worker(handoff, backend, config, listeners)
    except BaseException:
        log.exception("worker failed")
    finally:
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(Exception):
                stream.flush()
        os._exit(status)


def _serve_worker(handoff: Handoff, backend: Backend, config: Config, listeners: Listeners) -> int:
    stats = Stats()
    reporter = PipeReporter(handoff.report_fd, stats)
    try:
        serve(backend, config, listeners, stats, reporter, handoff.watchdog_interval)
    except (ListenerError, ServiceError) as exc:
        log.error("%s", exc)
        return EXIT_BOOT
    return 0


class WorkerTag(logging.Filter):
    """Prefix a worker's log lines with its slot number, so imbalance and crashes are
    attributable in one interleaved stream."""

    def __init__(self, slot: int) -> None:
        super().__init__()
        self.slot = slot
        self.prefix = f"worker {slot}: "

    def filter(self, record: logging.LogRecord) -> bool:
        if not getattr(record, "worker_tagged", False):
            record.msg = self.prefix + str(record.msg)
            record.worker_tagged = True
            record.worker = self.slot  # a field of its own in --log-format json
        return True


def _die_with(parent: int) -> None:
    """Have the kernel send SIGTERM (a drain) when the supervisor dies, even by SIGKILL,
    so no worker outlives it serving on its own (Linux's PR_SET_PDEATHSIG)."""
    if _libc is not None:
        _libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
    if os.getppid() != parent:  # it died before prctl took effect
        os.kill(os.getpid(), signal.SIGTERM)


PR_SET_PDEATHSIG = 1
_libc: ctypes.CDLL | None = None
if sys.platform == "linux":
    with contextlib.suppress(OSError):
        _libc = ctypes.CDLL(None, use_errno=True)
