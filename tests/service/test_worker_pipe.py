"""The counters a worker sends its supervisor: Stats.encode on one side, decode and add
on the other, and the lines PipeReporter writes on a real pipe."""

from __future__ import annotations

import os

import pytest

from echod.lifecycle import Stats
from echod.service.worker_process import PipeReporter


def test_counters_cross_the_pipe_unchanged_and_add_up() -> None:
    # Every counter a different value, so a swapped or dropped one shows.
    values = list(range(3, 3 + len(Stats.COUNTERS)))
    sent = Stats(**dict(zip(Stats.COUNTERS, values, strict=True)))
    received = Stats.decode(sent.encode())
    assert [getattr(received, name) for name in Stats.COUNTERS] == values
    assert received.connections_dropped == sent.refused_fd_setsize + sent.refused_resources
    total = Stats()
    total.add(received)
    total.add(received)
    assert [getattr(total, name) for name in Stats.COUNTERS] == [2 * v for v in values]


COUNT = len(Stats.COUNTERS)


@pytest.mark.parametrize(
    "text",
    ["", " ".join(["1"] * (COUNT - 1)), " ".join(["1"] * (COUNT + 1)),
     "x " + " ".join(["1"] * (COUNT - 1)), "-3 " + " ".join(["1"] * (COUNT - 1))],
)  # fmt: skip
def test_anything_but_the_counters_is_refused(text: str) -> None:
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
        zeros = " ".join(["0"] * (COUNT - 6))
        assert lines == ["READY", f"STATS 1 2 0 0 5 5 {zeros}", "ALIVE", "STOPPING"]
        # A full pipe (a supervisor too slow to read) costs a report, not a stalled loop.
        while reporter.watchdog():
            pass
        assert reporter.status("ignored") is False
    finally:
        os.close(read_fd)
        os.close(write_fd)
