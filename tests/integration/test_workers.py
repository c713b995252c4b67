"""``--workers N``: a supervisor that never serves, workers that do, and what signals mean."""

from __future__ import annotations

import os
import pwd
import re
import signal
import socket
import subprocess
import sys
import threading
import time

import pytest

from echod import backends
from tests.support import (
    ROOT,
    Echod,
    echod,
    exchange,
    missing,
    require_root,
    require_tool,
    round_trip,
    wait_until,
)

STARTED = re.compile(r"worker (\d) started \(pid (\d+)\)")


def worker_pids(server: Echod) -> dict[int, int]:
    """Slot -> pid of its latest worker, from the supervisor's log."""
    return {int(slot): int(pid) for slot, pid in STARTED.findall(server.log)}


def children(pid: int) -> set[int]:
    with open(f"/proc/{pid}/task/{pid}/children") as f:
        text = f.read()
    return {int(child) for child in text.split()}


@pytest.mark.parametrize("mode", ["shared", "reuseport"])
def test_two_workers_serve_and_the_supervisor_holds_no_client(mode: str) -> None:
    with echod("--port", "0", "--workers", "2", "--listen-mode", mode) as server:
        server.wait_for("ready: 2 workers serving")
        assert set(worker_pids(server).values()) == children(server.pid)
        clients = [server.connect() for _ in range(40)]
        for n, sock in enumerate(clients):
            assert round_trip(sock, b"%d" % n) == b"%d" % n
        # The supervisor's descriptors are listeners, pipes and its own plumbing: no
        # accepted connection (a TCP socket with a peer) is ever among them.
        for fd in os.listdir(f"/proc/{server.pid}/fd"):
            target = os.readlink(f"/proc/{server.pid}/fd/{fd}")
            if target.startswith("socket:"):
                inode = target[8:-1]
                assert inode not in _established_inodes(), f"supervisor holds a client: {target}"
        server.signal(signal.SIGUSR1)
        match = server.wait_for(r"per worker open/total: 1=(\d+)/(\d+) 2=(\d+)/(\d+)")
        open_1, total_1, open_2, total_2 = map(int, match.groups())
        assert (open_1 + open_2, total_1 + total_2) == (40, 40)
        for sock in clients:
            sock.close()
    assert f"listen mode {mode}" in server.log


def _established_inodes() -> set[str]:
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with open(table) as f:
            lines = f.read().splitlines()[1:]
        for line in lines:
            fields = line.split()
            if fields[3] == "01":  # TCP_ESTABLISHED
                inodes.add(fields[9])
    return inodes


def test_sigusr1_logs_each_workers_counters_and_the_sum() -> None:
    with echod("--port", "0", "--workers", "2") as server:
        server.wait_for("ready: 2 workers serving")
        for _ in range(200):
            with server.connect() as sock:
                assert exchange(sock, b"x") == b"x"
        server.signal(signal.SIGUSR1)
        total = server.wait_for(
            r"stats \(all workers\): workers=2 connections open=\d+ total=(\d+)"
        )
        per_worker = re.findall(r"worker (\d): stats: connections open=\d+ total=(\d+)", server.log)
        assert sorted(slot for slot, _ in per_worker) == ["1", "2"]
        counts = [int(count) for _, count in per_worker]
        assert sum(counts) == int(total.group(1)) == 200
        # reuseport spreads by a hash of the client's address: both get a fair share.
        assert min(counts) >= 50, counts


def test_sigterm_drains_both_workers_during_a_16_mib_transfer() -> None:
    payload = os.urandom(1 << 20)
    server = Echod("--port", "0", "--workers", "2")
    with server:
        server.wait_for("ready: 2 workers serving")
        streams = [server.connect() for _ in range(16)]  # 16 MiB in all, over both workers
        for sock in streams:
            assert round_trip(sock, b"!") == b"!"
        server.signal(signal.SIGUSR1)
        spread = server.wait_for(r"per worker open/total: 1=(\d+)/\d+ 2=(\d+)/\d+")
        assert min(map(int, spread.groups())) > 0, "one worker got no stream"
        received = [bytearray() for _ in streams]

        def read(sock: socket.socket, into: bytearray) -> None:
            while data := sock.recv(1 << 20):
                into.extend(data)

        readers = [
            threading.Thread(target=read, args=pair) for pair in zip(streams, received, strict=True)
        ]
        for reader in readers:
            reader.start()
        half = len(payload) // 2
        for sock in streams:
            sock.sendall(payload[:half])
        server.signal(signal.SIGTERM)
        server.wait_for("worker 1: stopping")
        server.wait_for("worker 2: stopping")
        for sock in streams:
            sock.sendall(payload[half:])  # still served while the workers drain
            sock.shutdown(socket.SHUT_WR)
        for reader in readers:
            reader.join(60)
        assert server.proc.wait(30) == 0, server.log
        for sock in streams:
            sock.close()
    assert all(bytes(r) == payload for r in received)
    assert "Traceback" not in server.log


def test_a_killed_worker_is_restarted_and_the_others_connections_go_on() -> None:
    with echod("--port", "0", "--workers", "2", "--listen-mode", "shared") as server:
        server.wait_for("ready: 2 workers serving")
        before = worker_pids(server)
        # Find a connection each worker serves: the reports say whose count grew.
        sock = server.connect()
        assert round_trip(sock, b"hello") == b"hello"
        owner = _owner_of(server, sock)
        victim = 2 if owner == 1 else 1
        os.kill(before[victim], signal.SIGKILL)
        server.wait_for(rf"worker {victim} \(pid {before[victim]}\) killed by SIGKILL")
        assert wait_until(lambda: worker_pids(server)[victim] != before[victim])
        server.wait_for(rf"worker {victim}: listening on .*\n(.|\n)*worker {victim}: listening on")
        assert round_trip(sock, b"untouched") == b"untouched"  # served by the survivor
        assert worker_pids(server)[owner] == before[owner]
        for _ in range(20):  # the restarted worker serves too
            with server.connect() as other:
                assert exchange(other, b"new") == b"new"
        sock.close()


def _owner_of(server: Echod, sock: socket.socket) -> int:
    """Which worker holds ``sock``: the one with an open connection in its counters."""
    server.signal(signal.SIGUSR1)
    match = server.wait_for(r"per worker open/total: 1=(\d+)/\d+ 2=(\d+)/\d+")
    return 1 if int(match.group(1)) == 1 else 2


def test_second_sigint_makes_the_workers_close_at_once() -> None:
    server = Echod("--port", "0", "--workers", "2", "--graceful-timeout", "60")
    with server, server.connect() as busy:
        server.wait_for("ready: 2 workers serving")
        stop = threading.Event()

        def chatter() -> None:
            with _suppress_os_error():
                while not stop.is_set():
                    busy.sendall(b"y" * 10)
                    busy.recv(10)

        talker = threading.Thread(target=chatter)
        talker.start()
        time.sleep(0.2)
        server.signal(signal.SIGINT)
        server.wait_for("stopping: 2 worker")
        server.signal(signal.SIGINT)
        try:
            status = server.proc.wait(10)
        except subprocess.TimeoutExpired:
            raise AssertionError(server.log) from None
        assert status == 0
        stop.set()
        talker.join(5)
    assert "second interrupt" in server.log


class _suppress_os_error:
    def __enter__(self) -> None:
        return None

    def __exit__(self, kind: object, exc: object, tb: object) -> bool:
        return isinstance(exc, OSError)


def test_reuseport_with_port_0_gives_every_worker_the_same_port() -> None:
    with echod("--port", "0", "--workers", "3", "--listen-mode", "reuseport") as server:
        server.wait_for("ready: 3 workers serving")
        ports = set(re.findall(r"worker \d: listening on 127.0.0.1:(\d+)", server.log))
        assert ports == {str(server.port)}


@pytest.mark.parametrize("mode", ["shared", "reuseport"])
def test_an_address_in_use_is_one_line_and_exit_1_before_any_fork(mode: str) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = run("--port", str(port), "--workers", "2", "--listen-mode", mode)
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [
        f"echod: error: cannot listen on 127.0.0.1:{port}: address already in use"
    ]


@pytest.mark.parametrize(
    ("args", "text"),
    [
        (["--workers", "0"], "must be at least 1"),
        (["--workers", "many"], "'many' is not a whole number"),
        (["--listen-mode", "fair"], "invalid choice"),
        (["--group", "nogroup"], "--group needs --user"),
    ],
)
def test_bad_worker_settings_are_one_line_and_exit_2(args: list[str], text: str) -> None:
    result = run(*args)
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and text in lines[0], result.stderr


def test_workers_auto_is_one_per_usable_cpu() -> None:
    taskset = require_tool("taskset")
    usable = sorted(os.sched_getaffinity(0))
    if len(usable) < 2:
        missing(f"needs two usable CPUs to tell one worker per CPU apart; have {usable}")
    two = (taskset, "-c", f"{usable[0]},{usable[1]}")
    args = ("--port", "0", "--workers", "auto", "--listen-mode", "shared")
    with echod(*args, wrapper=two) as server:
        server.wait_for("ready: 2 workers serving")
        assert "starting 2 workers" in server.log
        assert len(server.children()) == 2
    # One usable CPU: auto means one process serving alone, no supervisor.
    with echod(*args, wrapper=(taskset, "-c", str(usable[0]))) as server:
        assert "starting" not in server.log and server.children() == []
        with server.connect() as sock:
            assert round_trip(sock, b"alone") == b"alone"


def run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "echod", *args],
        capture_output=True,
        text=True,
        timeout=30,
        cwd=ROOT,
        env={**os.environ, **(env or {})},
    )


# --user ---------------------------------------------------------------------------------
def nobody() -> str:
    require_root("--user switches users")
    try:
        pwd.getpwnam("nobody")
    except KeyError:
        missing("no user 'nobody' on this machine")
    return "nobody"


def uid_of(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        status = f.read()
    for line in status.splitlines():
        if line.startswith("Uid:"):
            return int(line.split()[2])  # effective
    raise AssertionError("no Uid line")


@pytest.mark.parametrize("backend", backends.available())
def test_user_drops_root_after_binding_and_keeps_echoing(backend: str) -> None:
    user = nobody()
    nobody_uid = pwd.getpwnam(user).pw_uid
    # Port 7 needs root to bind: only a drop *after* binding can serve it as nobody.
    with socket.socket() as probe:
        try:
            probe.bind(("127.0.0.1", 7))
        except OSError:
            missing("port 7 is taken on this machine")
    with echod("--port", "7", "--user", user, "--backend", backend) as server:
        assert uid_of(server.pid) == nobody_uid
        for _ in range(3):
            with server.connect() as sock:
                assert exchange(sock, b"as nobody" * 1000) == b"as nobody" * 1000


@pytest.mark.parametrize("mode", ["shared", "reuseport"])
def test_user_with_workers(mode: str) -> None:
    user = nobody()
    nobody_uid = pwd.getpwnam(user).pw_uid
    args = ("--port", "0", "--workers", "2", "--listen-mode", mode, "--user", user)
    with echod(*args) as server:
        server.wait_for("ready: 2 workers serving")
        for pid in worker_pids(server).values():
            assert uid_of(pid) == nobody_uid
        # The supervisor binds every listener, each slot's included, before it forks:
        # it drops root first in both modes, and a restarted worker inherits its socket.
        assert uid_of(server.pid) == nobody_uid
        victim = worker_pids(server)[1]
        os.kill(victim, signal.SIGKILL)
        assert wait_until(lambda: worker_pids(server)[1] != victim)
        server.wait_for(r"worker 1: listening(.|\n)*worker 1: listening")
        for _ in range(10):
            with server.connect() as sock:
                assert exchange(sock, b"still") == b"still"


@pytest.mark.parametrize(
    ("args", "text"),
    [
        (["--user", "no-such-user-here"], "--user no-such-user-here: no such user"),
        (["--user", "root", "--group", "no-such-group"], "--group no-such-group: no such group"),
    ],
)
@pytest.mark.parametrize("workers", [["--workers", "1"], ["--workers", "2"]])
def test_an_unknown_user_or_group_is_one_line_and_exit_1(
    args: list[str], text: str, workers: list[str]
) -> None:
    result = run("--port", "0", *workers, *args)
    assert result.returncode == 1, result.stderr
    assert result.stderr.strip().splitlines() == [f"echod: error: {text}"]


def test_user_without_root_is_one_line_and_exit_1() -> None:
    if os.geteuid() == 0:
        user = nobody()
        result = subprocess.run(
            [sys.executable, "-c", _AS_NOBODY, user],
            capture_output=True,
            text=True,
            timeout=30,
            cwd=ROOT,
        )
    else:
        result = run("--port", "0", "--user", "root")
    assert result.returncode == 1, result.stderr
    assert "only root can switch users" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr


# Become nobody first, then ask echod to become root: the message must say why not.
# (The interpreter's library may be unreadable to nobody here, so a first parse, as
# root, makes argparse's lazy imports.)
_AS_NOBODY = """
import encodings.idna, os, pwd, sys
from echod import backends, cli
cli.load_config(["--port", "0", "--user", "root"], {})
backends.load(backends.default_name())
entry = pwd.getpwnam(sys.argv[1])
os.setgid(entry.pw_gid)
os.setuid(entry.pw_uid)
sys.exit(cli.main(["--port", "0", "--user", "root"]))
"""
