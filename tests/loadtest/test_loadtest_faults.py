"""Every kind of broken echo is caught, by a run of 2 s or less, under its own name.

Each server below is wrong in exactly one way (see ``loadtest_servers``); the
generator must report exactly that error kind and the matching exit status, on
the C loop and on the pure-Python one alike (the ``loop`` fixture).
"""

from __future__ import annotations

from pathlib import Path

import pytest
from loadtest_servers import EchoServer, run_bench

pytestmark = pytest.mark.usefixtures("loop")

RUN = (
    "--connections", "4", "--size", "100", "--duration", "1", "--warmup", "0.2",
    "--processes", "1", "--timeout", "0.5",
)  # fmt: skip


@pytest.mark.parametrize(
    ("fault", "errors", "status"),
    [
        ("drop_bytes", {"mismatch": 1}, 3),
        ("duplicate", {"mismatch": 1}, 3),
        ("swap", {"mismatch": 1}, 3),
        ("wrong_connection", {"mismatch": 1}, 3),
        ("extra", {"mismatch": 1}, 3),
        ("close_early", {"closed": 1}, 1),
        ("stall_one", {"timeout": 1}, 1),
    ],
)
def test_each_fault_is_reported_by_its_kind(
    tmp_path: Path, fault: str, errors: dict[str, int], status: int, loop: str
) -> None:
    server = EchoServer(fault=fault, after=1000)
    try:
        run = run_bench(tmp_path, "--port", str(server.port), *RUN)
    finally:
        server.close()
    assert run.figures["loop"] == loop
    assert run.figures["errors"] == errors, run.stdout
    assert run.status == status
    assert run.figures["messages"] > 0


def test_a_connection_stalled_at_the_end_is_lost_however_short_the_run(tmp_path: Path) -> None:
    """The case the issue measured: --timeout longer than the window used to pass clean."""
    server = EchoServer(fault="stall_one", after=1000)
    try:
        run = run_bench(tmp_path, "--port", str(server.port), *RUN, "--timeout", "1.5")
    finally:
        server.close()
    assert run.figures["errors"] == {"lost": 1}, run.stdout
    assert run.status == 4
    assert "lost 1" in run.stdout


def test_a_server_answering_only_the_first_bytes_loses_every_connection(tmp_path: Path) -> None:
    server = EchoServer(fault="first_n", after=1050)
    try:
        run = run_bench(tmp_path, "--port", str(server.port), *RUN, "--timeout", "1.5")
    finally:
        server.close()
    assert run.figures["errors"] == {"lost": 4}, run.stdout
    assert run.status == 4
    # 10 whole messages of 100 B per connection came back, then nothing.
    assert run.figures["messages"] + run.figures["drain"]["messages"] <= 4 * 10


def test_the_drain_collects_what_is_owed_without_changing_the_window(tmp_path: Path) -> None:
    server = EchoServer(delay=0.2)
    try:
        run = run_bench(
            tmp_path, "--port", str(server.port), "--connections", "4", "--size", "100",
            "--pipeline", "2", "--duration", "1", "--warmup", "0", "--processes", "1",
        )  # fmt: skip
    finally:
        server.close()
    assert run.status == 0, run.stdout
    figures = run.figures
    # Every connection had two messages in flight when the window closed.
    assert figures["drain"]["messages"] == 4 * 2
    assert figures["latency_us"]["count"] == figures["messages"]
    assert figures["drain"]["latency_us"]["count"] == 4 * 2
    assert figures["drain"]["latency_us"]["max"] >= 190_000
