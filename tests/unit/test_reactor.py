"""The reactor's IO managers and wakeup pair, on real sockets."""

from __future__ import annotations

import os
import select
import selectors
import signal
import socket
import threading
from collections.abc import Iterator

import pytest

from echod.backends import BY_NAME, available, load
from echod.backends.selector_backends import SelectorBackend
from echod.loop import (
    READ,
    WRITE,
    PollFamilyIO,
    Reactor,
    SelectorIO,
    io_manager,
)
from echod.wakeup import WakeupSocketpair

REACTOR_BACKENDS = [
    name for name in available() if BY_NAME[name].target.startswith("echod.backends.selector_")
]


def _backend(name: str) -> SelectorBackend:
    backend = load(name)
    assert isinstance(backend, SelectorBackend)
    return backend


@pytest.fixture(params=REACTOR_BACKENDS)
def reactor(request: pytest.FixtureRequest) -> Iterator[Reactor]:
    running = Reactor(io_manager(_backend(request.param).io))
    yield running
    running.close()


def test_the_poll_family_owns_its_kernel_object_and_the_rest_use_public_selectors() -> None:
    expected = {
        "epoll": PollFamilyIO,
        "poll": PollFamilyIO,
        "devpoll": PollFamilyIO,
        "select": SelectorIO,
        "kqueue": SelectorIO,
        "selectors": SelectorIO,
    }
    for name in REACTOR_BACKENDS:
        io = io_manager(_backend(name).io)
        try:
            assert isinstance(io, expected[name]), name
            if isinstance(io, SelectorIO):
                assert "public selectors API" in io.describe()
            else:
                assert f"select.{name} owned by the reactor" in io.describe()
        finally:
            io.close()


def test_readiness_calls_the_registered_callback_and_stops_after_unregister(
    reactor: Reactor,
) -> None:
    a, b = socket.socketpair()
    with a, b:
        seen: list[str] = []

        def on_readable(mask: int) -> None:
            seen.append(a.recv(10).decode())
            reactor.remove(a.fileno())
            reactor.call_later(0.05, reactor.stop)

        reactor.add(a.fileno(), READ, on_readable)
        b.sendall(b"ping")
        reactor.run()
        assert seen == ["ping"]
        b.sendall(b"again")  # no longer registered: the loop must not call back
        reactor.call_later(0.05, reactor.stop)
        reactor.run()
        assert seen == ["ping"]


def test_change_switches_the_wanted_direction(reactor: Reactor) -> None:
    a, b = socket.socketpair()
    with a, b:
        calls: list[str] = []

        def on_writable(mask: int) -> None:
            calls.append("write")
            reactor.change(a.fileno(), READ, on_readable)

        def on_readable(mask: int) -> None:
            calls.append("read")
            reactor.stop()

        reactor.add(a.fileno(), WRITE, on_writable)
        reactor.call_later(0.05, lambda: b.sendall(b"x"))
        reactor.call_later(5, reactor.stop)
        reactor.run()
        assert calls == ["write", "read"]


def test_another_thread_wakes_the_loop_at_once(reactor: Reactor) -> None:
    ran = threading.Event()

    def from_thread() -> None:
        reactor.call_soon_threadsafe(lambda: (ran.set(), reactor.stop()))

    # A timer far away: only the wakeup can end this run before the test times out.
    reactor.call_later(30, reactor.stop)
    threading.Timer(0.05, from_thread).start()
    reactor.run()
    assert ran.is_set()


def test_a_signal_runs_its_callback_in_the_loop_and_handlers_are_restored() -> None:
    previous = signal.getsignal(signal.SIGUSR1)
    previous_fd = signal.set_wakeup_fd(-1)
    signal.set_wakeup_fd(previous_fd)
    reactor = Reactor(io_manager("DefaultSelector"))
    got: list[int] = []
    reactor.handle_signals([signal.SIGUSR1], lambda signum: (got.append(signum), reactor.stop()))
    reactor.call_later(30, reactor.stop)
    threading.Timer(0.05, os.kill, (os.getpid(), signal.SIGUSR1)).start()
    reactor.run()
    reactor.close()
    assert got == [signal.SIGUSR1]
    assert signal.getsignal(signal.SIGUSR1) == previous
    assert signal.set_wakeup_fd(previous_fd) == previous_fd


def test_wakeup_pair_drains_and_never_blocks_when_full() -> None:
    pair = WakeupSocketpair()
    try:
        for _ in range(100_000):  # far more than the buffer holds
            pair.wakeup()
        assert select.select([pair], [], [], 0)[0]
        pair.drain()
        assert not select.select([pair], [], [], 0)[0]
    finally:
        pair.close()


def test_selector_io_is_the_stdlib_selector() -> None:
    io = io_manager("DefaultSelector")
    try:
        assert isinstance(io, SelectorIO)
        assert isinstance(io.selector, selectors.DefaultSelector)
    finally:
        io.close()
