"""Running out of descriptors, and select()'s FD_SETSIZE, cost no client its data."""

from __future__ import annotations

import contextlib
import resource
import time

from tests.support import Echod, exchange, missing, require_tool, round_trip, wait_until


def test_descriptor_exhaustion_neither_spins_nor_starves_open_connections(backend: str) -> None:
    prlimit = require_tool("prlimit")
    limit = 64
    server = Echod(
        "--backend", backend, "--port", "0", wrapper=(prlimit, f"--nofile={limit}:{limit}")
    )
    with server:
        served = [server.connect() for _ in range(20)]
        for sock in served:
            assert round_trip(sock, b"before") == b"before"
        flood = []
        with contextlib.suppress(OSError):
            for _ in range(limit * 2):  # far past what the server can accept
                flood.append(server.connect(timeout=2))
        time.sleep(0.5)
        cpu_before = server.cpu_seconds()
        time.sleep(2.0)
        busy = (server.cpu_seconds() - cpu_before) / 2.0
        assert busy < 0.3, f"server burnt {busy:.0%} of a CPU while out of descriptors"
        for sock in served:
            assert round_trip(sock, b"during") == b"during"
        for sock in flood:
            sock.close()
        for sock in served[:10]:
            sock.close()

        def fresh_client_is_served() -> bool:
            try:
                with server.connect(timeout=2) as sock:
                    return round_trip(sock, b"after") == b"after"
            except OSError:
                return False

        assert wait_until(fresh_client_is_served, timeout=10)
        for sock in served[10:]:
            sock.close()
    assert "Traceback" not in server.log


def test_select_refuses_descriptors_past_fd_setsize_and_serves_the_rest() -> None:
    """select alone has a descriptor ceiling: this runs once, not once per backend."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard < 1200:
        missing(f"open-file hard limit {hard} is too low to reach descriptor 1024")
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, 1200), hard))
    with Echod("--backend", "select", "--port", "0") as server:
        clients = [server.connect() for _ in range(1100)]
        server.wait_for("select backend cannot watch descriptor")
        try:
            assert round_trip(clients[0], b"low fd") == b"low fd"
            refused = sum(1 for sock in clients[-50:] if round_trip(sock, b"?") == b"")
            assert refused > 0
        finally:
            for sock in clients:
                sock.close()
        assert wait_until(lambda: server.open_fds() < 100)
        with server.connect() as sock:
            assert exchange(sock, b"served again") == b"served again"
        assert server.stop() == 0
    assert "Traceback" not in server.log
