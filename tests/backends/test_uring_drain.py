"""A uring drain leaves no client queued unannounced.

io_uring's accept waits are exclusive: the kernel wakes one accept per arriving client,
the oldest first. An old generation's accept that takes a wake-up just before its
cancel completes cancelled, and the new generation's accept on the same socket is never
told: that client waits for the next one, which on a quiet server may never come. Here
echod (standalone, uring) holds the older accept on a listener it inherits, this test's
own ring holds the newer one; echod is told to stop and, a moment later, a lone client
connects. It must be echoed by echod's drain or announced to the other ring.
"""

from __future__ import annotations

import signal
import socket
import sys
import time
from collections import Counter

import pytest

from echod import backends
from tests.support import TIMEOUT, Echod, round_trip

# Runs as echod's own process (exec keeps the pid): the listener at fd 3 and LISTEN_PID
# as a service manager would set them.
LAUNCH = (
    "import os, sys; fd = int(sys.argv[1]); os.dup2(fd, 3); "
    "os.environ.update(LISTEN_PID=str(os.getpid()), LISTEN_FDS='1', LISTEN_FDNAMES='tcp'); "
    "os.execv(sys.executable, [sys.executable, '-m', 'echod', *sys.argv[2:]])"
)
DELAYS = [step * 0.0003 for step in range(10)]
ROUNDS = 3


def one_stop(delay: float) -> str:
    from echod._uring import Ring

    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(64)
        listener.setblocking(False)
        port = listener.getsockname()[1]
        fd = listener.fileno()
        args = ("--backend", "uring", "--listen", f"127.0.0.1:{port}")
        server = Echod(*args, program=("-c", LAUNCH, str(fd)), pass_fds=[fd])
        with server.connect() as probe:  # echod's accept is armed: it served this one
            assert round_trip(probe, b"probe") == b"probe"
        ring = Ring(8, 64, 4096)
        try:
            ring.accept_multishot(fd, 1)  # behind echod's: the newer generation's
            ring.wait(0.0)
            server.signal(signal.SIGTERM)
            start = time.perf_counter()
            while time.perf_counter() - start < delay:
                pass
            with socket.create_connection(("127.0.0.1", port), timeout=2.0) as client:
                client.sendall(b"x")
                try:
                    echoed = client.recv(1)
                except (TimeoutError, ConnectionError):
                    echoed = b""
                announced = ring.wait(0.5)
            assert server.proc.wait(TIMEOUT) == 0  # the drain ended by itself
        finally:
            ring.close()
    return "echoed" if echoed == b"x" else "announced" if announced else "left queued"


@pytest.mark.slow
def test_a_client_arriving_as_a_drain_cancels_its_accept_is_never_left_queued() -> None:
    if "uring" not in backends.available():
        pytest.skip("uring backend unavailable (test_uring_is_available_where_ci_runs says why)")
    # Clients from 0 to 2.7 ms after the signal: some land between the drain's sweep of
    # the queue and its cancel reaching the kernel (2 of 30 did, before the last look).
    outcomes = [(delay, one_stop(delay)) for delay in DELAYS * ROUNDS]
    print(Counter(outcome for _, outcome in outcomes), file=sys.stderr)
    assert [delay for delay, outcome in outcomes if outcome == "left queued"] == []
