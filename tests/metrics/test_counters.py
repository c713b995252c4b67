"""The connection-life series counted on a real echod: idle closes and flow-control pauses."""

from __future__ import annotations

import contextlib
import socket

import pytest

from echod import backends
from tests.metrics.scrape import Figures, address_of, scrape
from tests.support import TIMEOUT, echod, wait_until


def latest(where: tuple[int, object], name: str) -> float:
    figures: Figures = scrape(where)
    return figures[(name, ())]


def test_a_connection_closed_by_the_idle_timeout_is_counted() -> None:
    with echod(
        "--port", "0", "--idle-timeout", "0.3", "--metrics", "127.0.0.1:0"
    ) as server:  # fmt: skip
        where = address_of(server)
        with server.connect() as sock:
            sock.settimeout(TIMEOUT)
            assert sock.recv(1) == b""  # closed by the server for being idle
        assert wait_until(lambda: latest(where, "echod_idle_closed_total") == 1, timeout=TIMEOUT)


# threads' blocking sendall has no high-water mark to pause at, nor has uring's send linked
# to the next receive, whose success posts no completion (see docs/architecture.md).
@pytest.mark.parametrize(
    "backend", [b for b in backends.available() if b not in ("threads", "uring")]
)
def test_a_client_that_sends_without_reading_is_paused_and_counted(backend: str) -> None:
    with echod(
        "--port", "0", "--backend", backend, "--metrics", "127.0.0.1:0",
        "--high-water", "64K", "--low-water", "16K",
    ) as server:  # fmt: skip
        where = address_of(server)
        with server.connect() as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            sock.settimeout(0.5)
            with contextlib.suppress(TimeoutError):  # the server stopped reading: paused
                for _ in range(400):  # bounded: 26 MB
                    sock.sendall(b"x" * 65536)
            assert wait_until(
                lambda: latest(where, "echod_flow_control_pauses_total") >= 1, timeout=TIMEOUT
            )
