"""The channel between a supervisor and a worker: Stats.encode on one side, decode and
add on the other, and the messages a worker's end sends and answers on a real pair."""

from __future__ import annotations

import pytest

from echod.lifecycle import Command, Lifecycle, Stats
from echod.service import channel
from echod.service.channel import Channel, Message
from echod.service.worker_process import WorkerChannel


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


def test_a_workers_end_reports_and_answers_by_id_and_never_blocks() -> None:
    supervisor, worker = Channel.pair()
    try:
        stats = Stats(connections_open=1, connections_total=2, bytes_in=5, bytes_out=5)
        end = WorkerChannel(worker, stats)
        assert end.ready() and end.watchdog() and end.stopping() and end.answer(7, stats)
        zeros = " ".join(["0"] * (COUNT - 6))
        counters = f"1 2 0 0 5 5 {zeros}"
        assert supervisor.receive() == [
            Message(channel.READY),
            Message(channel.STATS, 0, counters),
            Message(channel.ALIVE),
            Message(channel.STOPPING),
            Message(channel.STATS, 7, counters),
        ]
        # A full pair (a supervisor too slow to read) costs a message, not a stalled loop.
        while end.watchdog():
            pass
        assert end.status("ignored") is False
    finally:
        supervisor.close()
        worker.close()


def test_requests_map_to_commands_and_the_end_of_the_pair_is_seen() -> None:
    supervisor, worker = Channel.pair()
    assert supervisor.send(Message(channel.COLLECT, 3)) and supervisor.send(
        Message(channel.DRAIN, 4)
    )
    assert supervisor.send(Message("UNKNOWN", 5))
    messages = worker.receive()
    assert messages is not None
    assert [Lifecycle.request(m) for m in messages] == [Command.COLLECT, Command.DRAIN, None]
    assert [m.id for m in messages] == [3, 4, 5]
    supervisor.close()
    assert worker.receive() is None
    worker.close()


@pytest.mark.parametrize("packet", [b"", b"READY", b"READY x", b"1 2", b"\xff\xfe 1"])
def test_a_packet_that_is_not_a_message_is_refused(packet: bytes) -> None:
    with pytest.raises((ValueError, UnicodeDecodeError)):
        Message.decode(packet)
