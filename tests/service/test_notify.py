"""sd_notify(3): what echod tells the service manager, byte for byte."""

from __future__ import annotations

import logging
import os
import socket
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from echod.service.notify import Notifier, watchdog_interval


@pytest.fixture
def manager(tmp_path: Path) -> Iterator[tuple[socket.socket, str]]:
    """A stand-in for systemd's notify socket: a bound AF_UNIX datagram socket."""
    path = str(tmp_path / "notify")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(path)
    sock.settimeout(5)
    yield sock, path
    sock.close()


def received(sock: socket.socket) -> bytes:
    return sock.recv(4096)


def test_each_state_is_one_datagram_of_key_value_lines(manager: tuple[socket.socket, str]) -> None:
    sock, path = manager
    notifier = Notifier.from_env({"NOTIFY_SOCKET": path})
    assert notifier.enabled

    assert notifier.ready()
    assert received(sock) == b"READY=1"
    assert notifier.ready(status="serving on [::]:7")
    assert received(sock) == b"READY=1\nSTATUS=serving on [::]:7"
    assert notifier.status("draining 3 connections")
    assert received(sock) == b"STATUS=draining 3 connections"
    assert notifier.watchdog()
    assert received(sock) == b"WATCHDOG=1"
    assert notifier.stopping()
    assert received(sock) == b"STOPPING=1"
    assert notifier.mainpid(4242)
    assert received(sock) == b"MAINPID=4242"
    assert notifier.send_raw("FDSTORE=0")
    assert received(sock) == b"FDSTORE=0"
    notifier.close()


def test_reloading_carries_the_monotonic_timestamp_and_the_status(
    manager: tuple[socket.socket, str],
) -> None:
    sock, path = manager
    notifier = Notifier.from_env({"NOTIFY_SOCKET": path})
    assert notifier.reloading("reloading; workers=2")
    first, second, third = received(sock).split(b"\n")
    assert first == b"RELOADING=1"
    key, _, usec = second.partition(b"=")
    assert key == b"MONOTONIC_USEC"
    assert abs(int(usec) / 1e6 - time.monotonic()) < 5
    assert third == b"STATUS=reloading; workers=2"


def test_a_newline_in_a_value_cannot_inject_an_assignment(
    manager: tuple[socket.socket, str],
) -> None:
    sock, path = manager
    assert Notifier.from_env({"NOTIFY_SOCKET": path}).status("a\nREADY=1")
    assert received(sock) == b"STATUS=a READY=1"


def test_abstract_namespace_socket() -> None:
    name = f"echod-test-{uuid.uuid4().hex}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind("\0" + name)
        sock.settimeout(5)
        notifier = Notifier.from_env({"NOTIFY_SOCKET": "@" + name})
        assert notifier.ready()
        assert received(sock) == b"READY=1"


@pytest.mark.parametrize("environ", [{}, {"NOTIFY_SOCKET": ""}])
def test_without_a_manager_every_call_is_a_no_op(environ: dict[str, str]) -> None:
    notifier = Notifier.from_env(environ)
    assert not notifier.enabled
    assert not notifier.ready()
    assert not notifier.watchdog()
    assert not notifier.stopping()


def test_a_vanished_manager_is_logged_once_and_never_raises(
    manager: tuple[socket.socket, str], caplog: pytest.LogCaptureFixture
) -> None:
    sock, path = manager
    notifier = Notifier.from_env({"NOTIFY_SOCKET": path})
    assert notifier.ready()
    assert received(sock) == b"READY=1"
    sock.close()
    os.unlink(path)

    with caplog.at_level(logging.WARNING, logger="echod.service.notify"):
        assert not notifier.watchdog()
        assert not notifier.watchdog()
        assert not notifier.stopping()
    assert len(caplog.records) == 1
    assert path in caplog.records[0].getMessage()


def test_a_forked_worker_is_silent(manager: tuple[socket.socket, str]) -> None:
    """NotifyAccess=main: only the supervisor, the process systemd started, speaks."""
    sock, path = manager
    notifier = Notifier.from_env({"NOTIFY_SOCKET": path})
    pid = os.fork()
    if pid == 0:  # the worker
        sent = notifier.enabled or notifier.ready() or notifier.watchdog()
        os._exit(1 if sent else 0)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert notifier.status("supervisor")
    assert received(sock) == b"STATUS=supervisor"


def test_watchdog_interval_is_half_of_watchdog_usec() -> None:
    assert watchdog_interval({"WATCHDOG_USEC": "30000000"}) == 15.0
    assert (
        watchdog_interval({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": str(os.getpid())}) == 15.0
    )


@pytest.mark.parametrize(
    "environ",
    [
        {},
        {"WATCHDOG_USEC": "0"},
        {"WATCHDOG_USEC": "thirty"},
        {"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": str(os.getpid() + 1)},
    ],
    ids=["unset", "zero", "garbage", "other-pid"],
)
def test_no_watchdog_interval_when_not_armed_for_us(environ: dict[str, str]) -> None:
    assert watchdog_interval(environ) is None
