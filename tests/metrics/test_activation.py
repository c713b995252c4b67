"""Socket activation with two named sockets, as echod.socket and echod-metrics.socket
hand them over: ``echo`` is served by the workers, ``metrics`` by the supervisor."""

from __future__ import annotations

import os
import socket
import sys
from pathlib import Path

from tests.metrics.scrape import per_worker, scrape, value
from tests.support import Echod, exchange, require_tool, wait_until


def test_systemd_socket_activate_with_echo_and_metrics_sockets(tmp_path: Path) -> None:
    tool = require_tool("systemd-socket-activate")
    echo_path, metrics_path = str(tmp_path / "echo.sock"), str(tmp_path / "metrics.sock")
    wrapper = [
        tool,
        "-l",
        echo_path,
        "-l",
        metrics_path,
        "--fdname=echo:metrics",
        "-E",
        "PYTHONPATH=" + os.pathsep.join(sys.path),
        "-E",
        "PYTHONUNBUFFERED=1",
    ]
    server = Echod("--workers", "2", wrapper=wrapper, wait=False)
    try:
        where = (socket.AF_UNIX, metrics_path)
        # The first connection starts echod; it waits in the metrics socket's backlog.
        assert wait_until(lambda: os.path.exists(metrics_path))
        first = scrape(where)
        assert set(per_worker(first, "echod_connections_open")) == {"1", "2"}
        payload = os.urandom(100_000)
        for _ in range(3):
            with socket.socket(socket.AF_UNIX) as client:
                client.settimeout(10)
                client.connect(echo_path)
                assert exchange(client, payload) == payload
        assert wait_until(
            lambda: value(scrape(where), "echod_received_bytes_total") == 3 * len(payload)
        )
        figures = scrape(where, openmetrics=True)
        assert value(figures, "echod_connections_accepted_total") == 3
        # The metrics socket is not an echo listener: no worker announced it.
        server.wait_for("ready: 2 workers serving")
        assert "metrics.sock" not in "".join(
            line for line in server.log.splitlines(True) if "listening on" in line
        )
    finally:
        assert server.stop() == 0, server.log
    assert "Traceback" not in server.log
