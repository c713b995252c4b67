"""One serving process: the single process echod runs without a supervisor, or a worker.

Both take the same steps in the same order, here and nowhere else: give up root, build
the :class:`~echod.lifecycle.Lifecycle` the backend reports to, serve the sockets they
were handed. A worker first sheds what it inherited from the supervisor
(:func:`run_worker`, the hand-off, as gunicorn's ``Worker.init_process``) and talks to
it over its :mod:`~echod.service.channel` (:class:`WorkerChannel`) instead of to
systemd.
"""

from __future__ import annotations

import contextlib
import ctypes
import importlib
import logging
import os
import signal
import socket
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from typing import NoReturn

from echod import backends
from echod.backends.base import Backend
from echod.config import Config
from echod.lifecycle import CONTROL_SIGNALS, Lifecycle, Stats
from echod.net.addresses import ListenerError
from echod.net.listener_set import Listeners
from echod.service import ServiceError, channel
from echod.service.channel import Channel, Message
from echod.service.limits import drop_privileges
from echod.tls import check_tls_backend
from echod.udp.serving import check_backend

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
    sockets: Sequence[socket.socket],
    lifecycle: Lifecycle,
) -> None:
    """Drop root, serve until told to stop.

    Raises ListenerError or ServiceError (one line for the operator) before serving.
    Every socket it served is closed when it returns.
    """
    try:
        become_user(backend, config)
        backend.serve(sockets, config, lifecycle)
    finally:
        for sock in sockets:
            sock.close()


def check_serving(backend: Backend, listeners: Listeners, config: Config) -> None:
    """What a single serving process refuses before it serves, the command line's and an
    embedded one's alike: UDP or TLS listeners, or faults, on a backend without them."""
    check_backend(backend.name, listeners.for_slot(None))
    check_tls_backend(backend.name, listeners.serve_tls)
    backends.check_faults(backend.name, config.fault)


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


class WorkerChannel:
    """A worker's end of its channel: the :class:`echod.lifecycle.Notifier` it reports
    to, and the :class:`echod.lifecycle.Control` its requests come from."""

    __slots__ = ("_channel", "_stats", "sock")

    def __init__(self, end: Channel, stats: Stats) -> None:
        self._channel = end
        self._stats = stats
        self.sock = end.sock

    def ready(self, status: str | None = None) -> bool:
        return self._channel.send(Message(channel.READY)) and self.status("")

    def status(self, text: str) -> bool:
        return self.answer(0, self._stats)

    def watchdog(self) -> bool:
        return self._channel.send(Message(channel.ALIVE))

    def stopping(self) -> bool:
        return self._channel.send(Message(channel.STOPPING))

    def receive(self) -> list[Message] | None:
        return self._channel.receive()

    def answer(self, request: int, stats: Stats) -> bool:
        return self._channel.send(Message(channel.STATS, request, stats.encode()))


@dataclass(frozen=True)
class Handoff:
    """Everything a freshly forked worker gets from its supervisor, and nothing more."""

    slot: int  # 1..N, kept across restarts: the id in logs
    channel: Channel  # its end
    sockets: Sequence[socket.socket]  # the listeners it serves
    supervisor_pid: int
    signals: Sequence[int]  # the supervisor's: back to default, unblocked
    inherited_fds: Sequence[int]  # the supervisor's own descriptors, to close
    watchdog_interval: float | None


def run_worker(handoff: Handoff, backend: Backend, config: Config) -> NoReturn:
    """In the child after fork: shed the supervisor's state and serve; never returns."""
    status = EXIT_CRASH
    try:
        signal.set_wakeup_fd(-1)
        # Its own process group: a terminal's Ctrl-C reaches the supervisor alone,
        # which passes it on once, instead of every worker twice.
        os.setpgid(0, 0)
        _die_with(handoff.supervisor_pid)
        for signum in handoff.signals:  # the backend installs its own
            # Ignored, not default, till then: their default action is death.
            signal.signal(signum, signal.SIG_IGN if signum in CONTROL_SIGNALS else signal.SIG_DFL)
        signal.pthread_sigmask(signal.SIG_UNBLOCK, handoff.signals)
        # Plain closes: unregistering from the supervisor's epoll instance, which the
        # child shares, would remove the supervisor's registrations too.
        for fd in handoff.inherited_fds:
            with contextlib.suppress(OSError):
                os.close(fd)
        tag = WorkerTag(handoff.slot)
        for handler in logging.getLogger().handlers:
            handler.addFilter(tag)
        status = _serve_worker(handoff, backend, config)
    except BaseException:
        log.exception("worker failed")
    finally:
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(Exception):
                stream.flush()
        os._exit(status)


def _serve_worker(handoff: Handoff, backend: Backend, config: Config) -> int:
    stats = Stats()
    end = WorkerChannel(handoff.channel, stats)
    lifecycle = Lifecycle(stats, end, handoff.watchdog_interval, control=end)
    try:
        serve(backend, config, handoff.sockets, lifecycle)
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
