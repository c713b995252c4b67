"""The backend registry: name, where it lives, what it needs, one line about it.

Backends are imported only when chosen (as uvicorn's loop factories and Twisted's
reactor plugins are), so an optional dependency never loads unless it is asked for.
"""

from __future__ import annotations

import functools
import importlib
import importlib.util
from dataclasses import dataclass

from echod.backends.base import Backend


@dataclass(frozen=True)
class Entry:
    name: str
    target: str  # "module:attribute" of the backend object
    requires: str  # "module" or "module:attribute" that must exist on this platform
    description: str
    install: str = ""  # how to get it when it is an optional extra
    # Serves UDP listeners: a loop that can watch a descriptor (echod.udp.serving).
    # A backend that blocks a thread or greenlet per socket cannot.
    udp: bool = True
    # "module:function" returning why the backend cannot run here, or None: a runtime
    # check for what an import cannot tell (io_uring refused by a sysctl or seccomp).
    probe: str = ""
    # Carries --fault (echod.faults): the serving core's fault driver on its loop.
    faults: bool = False

    def available(self) -> bool:
        return self.present() and self.refusal() is None

    def present(self) -> bool:
        module, _, attribute = self.requires.partition(":")
        if importlib.util.find_spec(module) is None:
            return False
        return not attribute or hasattr(importlib.import_module(module), attribute)

    def refusal(self) -> str | None:
        """Why a present backend cannot run here (from ``probe``), or None."""
        if not self.probe:
            return None
        return _probe(self.probe)


_REACTOR = "echod.backends.selector_backends"
ENTRIES: tuple[Entry, ...] = (
    Entry("epoll", f"{_REACTOR}:EPOLL", "select:epoll", "echod reactor on epoll(7) (Linux)", faults=True),
    Entry("kqueue", f"{_REACTOR}:KQUEUE", "select:kqueue", "echod reactor on kqueue(2) (BSD, macOS)", faults=True),
    Entry("devpoll", f"{_REACTOR}:DEVPOLL", "select:devpoll", "echod reactor on /dev/poll (Solaris)", faults=True),
    Entry("poll", f"{_REACTOR}:POLL", "select:poll", "echod reactor on poll(2)", faults=True),
    Entry("select", f"{_REACTOR}:SELECT", "select:select", "echod reactor on select(2); descriptors below 1024 only", faults=True),
    Entry("selectors", f"{_REACTOR}:DEFAULT", "selectors", "echod reactor on selectors.DefaultSelector", faults=True),
    Entry("asyncio", "echod.backends.aio:ASYNCIO", "asyncio", "asyncio.Protocol on the stdlib event loop", faults=True),
    Entry("uvloop", "echod.backends.aio:UVLOOP", "uvloop", "asyncio.Protocol on uvloop (libuv)", "pip install uvloop", faults=True),
    Entry("threads", "echod.backends.threads:THREADS", "threading", "blocking sockets, one thread per connection", udp=False),
    Entry("gevent", "echod.backends.green:GEVENT", "gevent", "one greenlet per connection on gevent, no monkey-patching", "pip install 'echod[gevent]'", udp=False),
    Entry("uring", "echod.backends.uring:URING", "select:epoll", "completions on io_uring (Linux): multishot accept, send linked to receive", "apt-get install liburing-dev, then reinstall echod", probe="echod.backends.uring:unavailable"),
)  # fmt: skip
BY_NAME = {entry.name: entry for entry in ENTRIES}


@functools.cache
def _probe(target: str) -> str | None:
    module, _, attribute = target.partition(":")
    check = getattr(importlib.import_module(module), attribute)
    reason: str | None = check()
    return reason


class BackendUnavailable(LookupError):
    """The backend asked for is unknown or missing here; the message says what is."""


def available() -> list[str]:
    return [entry.name for entry in ENTRIES if entry.available()]


def serves_udp(name: str) -> bool:
    entry = BY_NAME.get(name)
    return entry is not None and entry.udp


def refused() -> list[tuple[str, str]]:
    """Backends this platform has that cannot run here, with why (for --list-backends)."""
    return [
        (entry.name, reason)
        for entry in ENTRIES
        if entry.present() and (reason := entry.refusal()) is not None
    ]


def carries_faults(name: str) -> bool:
    entry = BY_NAME.get(name)
    return entry is not None and entry.faults


def check_faults(name: str, faults: object) -> None:
    """A backend that cannot carry faults refuses them, in one line (BackendUnavailable)."""
    if faults and not carries_faults(name):
        able = ", ".join(n for n in available() if carries_faults(n))
        raise BackendUnavailable(
            f"backend {name} cannot inject faults (--fault); use one of {able}"
        )


def default_name() -> str:
    """The best reactor selector this platform has (the ENTRIES order ranks them)."""
    return available()[0]


def load(name: str) -> Backend:
    entry = BY_NAME.get(name)
    if entry is None:
        raise BackendUnavailable(
            f"unknown backend {name!r}; available here: {', '.join(available())}"
        )
    reason = entry.refusal() if entry.present() else None
    if reason is not None:
        raise BackendUnavailable(
            f"backend {name!r} cannot run here: {reason}; available here: {', '.join(available())}"
        )
    if not entry.available():
        hint = f" (install it: {entry.install})" if entry.install else ""
        raise BackendUnavailable(
            f"backend {name!r} is not available on this platform{hint}; "
            f"available here: {', '.join(available())}"
        )
    module, _, attribute = entry.target.partition(":")
    backend: Backend = getattr(importlib.import_module(module), attribute)
    return backend
