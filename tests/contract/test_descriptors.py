"""Out of descriptors, a server accepts again as soon as its clients give them back.

The server runs under ``prlimit`` with ``limit`` descriptors; the test opens more
clients than that, so the server holds every descriptor it has and refuses the rest.
Then every client leaves at once, and a new client must be echoed within
``RECOVERY_BOUND``. A server that only retries after a timed back-off (1 s, as echod's
threads and gevent backends once did) fails here; one that accepts again when a
descriptor is freed passes with a wide margin.
"""

from __future__ import annotations

import resource
import socket
import time

import pytest

from tests.support import Echod, require_tool

# The bound: recovery is driven by the freed descriptors, not by a timer.
RECOVERY_BOUND = 0.5
LIMITS = (256, 4096)
# The longest back-off a server might take instead of shedding (echod's, when even its
# spare descriptor is gone).
ACCEPT_BACKOFF = 1.0
# Known to miss the bound, and why: an open defect, not a passing case. Measured
# 2026-12-02 on this 2-core machine, 8 runs each: 0.002-0.49 s alone, 0.61 s in a CI
# run; a shorter GIL switch interval (0.5 ms) made it worse (up to 1.57 s), and so did
# closing the sockets in the main thread (7.7-8.0 s).
OPEN_BUGS = {
    ("threads", 4096): "4,000 threads ending at once queue for the GIL ahead of the main "
    "thread's accept and the new client's thread"
}
# How far a known miss may go and still be that miss: below ACCEPT_BACKOFF's 1 s, so
# the return of a timed back-off fails instead of passing as the open bug.
OPEN_BUG_CAP = 0.9
# Descriptors a server holds besides its clients: stdio, listener, loop, wakeup, spares.
OVERHEAD = 16


def _room_for(clients: int) -> None:
    """Let this test process hold ``clients`` sockets plus what pytest already has."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = clients + 256
    if soft < wanted:
        if hard != resource.RLIM_INFINITY and hard < wanted:
            pytest.fail(f"the test needs {wanted} descriptors; the hard limit is {hard}")
        resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))


def _echo(sock: socket.socket, message: bytes) -> bytes:
    sock.sendall(message)
    received = b""
    while len(received) < len(message):
        chunk = sock.recv(len(message) - len(received))
        if not chunk:
            break
        received += chunk
    return received


def _probe(server: Echod) -> None:
    """Connect once more and wait to be refused (a reset or an early close)."""
    with socket.socket() as probe:
        probe.settimeout(2 * ACCEPT_BACKOFF)
        try:
            probe.connect((server.host, server.port))
            probe.recv(1)
        except OSError:
            pass  # refused, reset, or left waiting in the backlog: all the same here


def _first_echo(server: Echod, message: bytes, deadline: float) -> bytes:
    """Connect until echoed, as a client would after a reset.

    The new client may arrive before the server has seen its clients leave; a server
    still out of descriptors then refuses it (a reset or an early close), and the
    client tries again. Only the time until the echo counts.
    """
    while True:
        try:
            with socket.create_connection((server.host, server.port), timeout=5) as fresh:
                echoed = _echo(fresh, message)
            if echoed == message or time.monotonic() > deadline:
                return echoed
        except OSError:
            if time.monotonic() > deadline:
                raise
        time.sleep(0.005)


def _settle(server: Echod, quiet: float = 0.3, timeout: float = 30.0) -> int:
    """The server's descriptor count once it stops changing."""
    deadline = time.monotonic() + timeout
    previous = server.open_fds()
    while time.monotonic() < deadline:
        time.sleep(quiet)
        current = server.open_fds()
        if current == previous:
            return current
        previous = current
    return previous


@pytest.mark.timing  # RECOVERY_BOUND (0.5 s) is the bound; a stall can pass it
@pytest.mark.parametrize("limit", LIMITS)
def test_accepts_again_as_soon_as_descriptors_are_freed(backend: str, limit: int) -> None:
    require_tool("prlimit")
    clients = limit + 64  # more than the server can hold
    _room_for(clients)
    server = Echod(
        "--backend", backend, "--port", "0", wrapper=("prlimit", f"--nofile={limit}:{limit}")
    )
    with server:
        holders: list[socket.socket] = []
        try:
            for _ in range(clients):
                sock = socket.socket()
                sock.settimeout(5)
                try:
                    sock.connect((server.host, server.port))
                except OSError:  # the backlog is full: the server holds what it can
                    sock.close()
                    break
                holders.append(sock)
            held = _settle(server)
            if backend != "select" or limit <= 1024:
                # (select refuses descriptors past FD_SETSIZE before it could run out.)
                assert held >= limit - OVERHEAD, f"server holds {held} of {limit} descriptors"
            # One more client, refused now (or once a back-off lets the server try it):
            # a server that answers running out with a timed back-off has just started
            # one, so its recovery cannot hide in the phase of that timer.
            _probe(server)
            # One client leaves: its descriptor alone must let the next one in, at once.
            # (Only a timed back-off waits here; the open bug below needs thousands of
            # threads ending together, so this is the sharp check on every backend.)
            holders.pop(0).close()
            one_left = time.monotonic()
            assert _first_echo(server, b"one", deadline=one_left + 10) == b"one"
            after_one = time.monotonic() - one_left
            assert after_one < RECOVERY_BOUND, (
                f"{backend} took {after_one:.2f}s to echo a new client after one of "
                f"{limit} descriptors was freed"
            )
            _probe(server)  # out of descriptors again, and any back-off freshly started
        finally:
            for sock in holders:
                sock.close()
        left = time.monotonic()
        echoed = _first_echo(server, b"after", deadline=left + 10)
        recovery = time.monotonic() - left
        assert echoed == b"after"
        print(f"{backend} at {limit} descriptors: echoed a new client {recovery:.3f}s after")
        if RECOVERY_BOUND <= recovery < OPEN_BUG_CAP and (backend, limit) in OPEN_BUGS:
            pytest.xfail(f"open bug ({recovery:.2f}s): {OPEN_BUGS[backend, limit]}")
        assert recovery < RECOVERY_BOUND, (
            f"{backend} took {recovery:.2f}s to echo a new client after {len(holders)} "
            f"clients holding all {limit} descriptors left"
        )
