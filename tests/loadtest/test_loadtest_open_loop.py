"""Open loop: latency counts from when a message was due, and the send-time figure sits beside it."""

from __future__ import annotations

from pathlib import Path

from loadtest_servers import EchoServer, run_bench


def test_a_fixed_delay_shows_in_the_median(tmp_path: Path) -> None:
    server = EchoServer(delay=0.05)
    try:
        run = run_bench(
            tmp_path, "--port", str(server.port), "--rate", "200", "--connections", "4",
            "--pipeline", "16", "--duration", "1", "--warmup", "0.2", "--processes", "1",
        )  # fmt: skip
    finally:
        server.close()
    assert run.status == 0, run.stdout
    latency = run.figures["latency_us"]
    assert 50_000 <= latency["p50"] < 80_000
    assert 50_000 <= run.figures["latency_uncorrected_us"]["p50"] < 80_000


def test_a_freeze_is_charged_from_the_due_time_and_reported_uncorrected_beside_it(
    tmp_path: Path,
) -> None:
    server = EchoServer(freeze_at=0.6, freeze_for=1.0)
    try:
        run = run_bench(
            tmp_path, "--port", str(server.port), "--rate", "200", "--connections", "4",
            "--duration", "2", "--warmup", "0.2", "--processes", "1",
        )  # fmt: skip
    finally:
        server.close()
    assert run.status == 0, run.stdout
    corrected = run.figures["latency_us"]
    uncorrected = run.figures["latency_uncorrected_us"]
    assert corrected["count"] == uncorrected["count"] == run.figures["messages"]
    # ~200 of ~400 messages fell due during the second-long freeze and waited for
    # its end: a tenth of them waited 0.8 s or more, counted from when they were due.
    assert corrected["max"] >= 900_000
    assert corrected["p90"] >= 500_000
    # From the actual send, only the few in flight when it froze saw it.
    assert uncorrected["max"] >= 900_000
    assert uncorrected["p90"] < 100_000
    assert "uncorrected µs" in run.stdout
    # Nothing due was dropped: every message of the window went out, late or not.
    assert run.figures["messages"] + run.figures["drain"]["messages"] >= 0.95 * 200 * 2


def test_messages_due_while_a_connection_is_down_go_out_late_not_dropped(tmp_path: Path) -> None:
    server = EchoServer(fault="close_early", after=2000)
    try:
        run = run_bench(
            tmp_path, "--port", str(server.port), "--rate", "400", "--connections", "2",
            "--size", "100", "--duration", "1", "--warmup", "0.2", "--processes", "1",
        )  # fmt: skip
    finally:
        server.close()
    figures = run.figures
    # One connection was closed under it (after its 20th message, in the warmup) and
    # reopened; what fell due meanwhile went out on the new connection.
    assert figures["errors"] == {"closed": 1}, run.stdout
    assert run.status == 1
    assert figures["unsent"] == 0
    assert figures["messages"] + figures["drain"]["messages"] >= 0.95 * 400 * 1
