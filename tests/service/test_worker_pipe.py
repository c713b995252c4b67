"""The counters a worker sends its supervisor: Stats.encode on one side, decode and add
on the other, and the lines PipeReporter writes on a real pipe."""

from __future__ import annotations

import os

import pytest

from echod.lifecycle import Stats
from echod.service.worker_process import PipeReporter


def test_counters_cross_the_pipe_unchanged_and_add_up() -> None:
    sent = Stats(
        connections_open=3, connections_total=7, connections_dropped=1, bytes_in=10, bytes_out=9
    )
    received = Stats.decode(sent.encode())
    assert [getattr(received, name) for name in Stats.COUNTERS] == [3, 7, 1, 10, 9]
    total = Stats()
    total.add(received)
    total.add(received)
    assert [getattr(total, name) for name in Stats.COUNTERS] == [6, 14, 2, 20, 18]


@pytest.mark.parametrize("text", ["", "1 2 3 4", "1 2 3 4 5 6", "1 2 x 4 5", "1 2 -3 4 5"])
def test_anything_but_five_counters_is_refused(text: str) -> None:
    with pytest.raises(ValueError):
        Stats.decode(text)


def test_the_reporter_writes_whole_lines_and_never_blocks() -> None:
    read_fd, write_fd = os.pipe()
    os.set_blocking(write_fd, False)
    try:
        stats = Stats(connections_open=1, connections_total=2, bytes_in=5, bytes_out=5)
        reporter = PipeReporter(write_fd, stats)
        assert reporter.ready() and reporter.watchdog() and reporter.stopping()
        lines = os.read(read_fd, 4096).decode().splitlines()
        assert lines == ["READY", "STATS 1 2 0 5 5", "ALIVE", "STOPPING"]
        # A full pipe (a supervisor too slow to read) costs a report, not a stalled loop.
        while reporter.watchdog():
            pass
        assert reporter.status("ignored") is False
    finally:
        os.close(read_fd)
        os.close(write_fd)
