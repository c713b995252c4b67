"""The uring backend's measured alternative, ``uring-ring``: receives from a provided
buffer ring. The contract suite runs it too (tests/contract/conftest.py); this runs its
ring dry."""

from __future__ import annotations

import os
import socket
import threading
import time

import pytest

from echod import backends
from echod.backends.buffer_ring import RING_BUFFERS_VARIABLE
from tests.support import TIMEOUT, echod, in_ci, in_threads, recv_exactly, wait_until

BUFFERS = 4
CLIENTS = 16
# More than loopback's buffers hold between a client that does not read and the server
# (several MiB each way), so every connection's sends end up waiting.
PAYLOAD = 24 << 20
CHUNK = 64 * 1024
# A spinning loop burns the whole second it is watched for.
IDLE_CPU = 0.2


def test_a_dry_ring_waits_without_spinning_and_loses_no_byte() -> None:
    """More connections with data in flight than buffers: ENOBUFS for the rest. They
    wait, costing no CPU, and every byte comes back in order once clients read."""
    if "uring-ring" not in backends.unlisted():
        if in_ci():
            pytest.fail("uring-ring unavailable under CI (see test_uring.py)")
        pytest.skip("uring unavailable here")
    payloads = [os.urandom(PAYLOAD) for _ in range(CLIENTS)]
    sent = [0] * CLIENTS
    env = {RING_BUFFERS_VARIABLE: str(BUFFERS)}
    with echod("--backend", "uring-ring", "--port", "0", env=env) as server:
        clients = [server.connect(timeout=TIMEOUT) for _ in range(CLIENTS)]
        for sock in clients:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)

        def write(index: int) -> None:
            view = memoryview(payloads[index])
            for start in range(0, PAYLOAD, CHUNK):
                clients[index].sendall(view[start : start + CHUNK])
                sent[index] += CHUNK
            clients[index].shutdown(socket.SHUT_WR)

        writers = [threading.Thread(target=write, args=(i,), daemon=True) for i in range(CLIENTS)]
        for writer in writers:
            writer.start()
        server.wait_for("buffer ring .* ran dry")

        def stalled() -> bool:
            before = sum(sent)
            time.sleep(0.5)
            return sum(sent) == before

        assert wait_until(stalled), "the clients never stopped being read"
        assert sum(sent) < CLIENTS * PAYLOAD, "nothing waited: the ring never stayed dry"
        cpu = server.cpu_seconds()
        time.sleep(1.0)  # the window CPU is measured over, not a wait for a condition
        spent = server.cpu_seconds() - cpu
        assert spent < IDLE_CPU, f"echod used {spent:.2f}s of CPU in 1s with its ring dry"

        def read(index: int) -> None:
            assert recv_exactly(clients[index], PAYLOAD) == payloads[index]
            assert clients[index].recv(1) == b""

        in_threads(read, [(i,) for i in range(CLIENTS)])
        for writer in writers:
            writer.join(TIMEOUT)
        for sock in clients:
            sock.close()
        server.report_until(f"open=0 total={CLIENTS}")
