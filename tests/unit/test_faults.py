"""The fault rules with byte strings and times alone (echod.faults)."""

from __future__ import annotations

import pytest

from echod.faults import (
    ConnectionFaults,
    End,
    Fault,
    FaultError,
    FaultPlan,
    Pieces,
    Verdict,
    parse_fault,
)


@pytest.mark.parametrize(
    ("text", "fault"),
    [
        ("delay:50ms", Fault("delay", 0.05)),
        ("delay:2s", Fault("delay", 2.0)),
        ("delay:250us", Fault("delay", 0.00025)),
        ("reset-after:1MiB", Fault("reset-after", 1 << 20)),
        ("reset-after:100", Fault("reset-after", 100)),
        ("stall-after:4KiB", Fault("stall-after", 4096)),
        ("stall-after:4k", Fault("stall-after", 4096)),
        ("drop-byte:1000", Fault("drop-byte", 1000)),
        ("close-after:3", Fault("close-after", 3)),
        ("bandwidth:64KiB/s", Fault("bandwidth", 65536)),
        (" Bandwidth:1M/s ", Fault("bandwidth", 1 << 20)),
    ],
)
def test_specs_parse(text: str, fault: Fault) -> None:
    assert parse_fault(text) == fault


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("explode:1", "faults are delay:TIME"),
        ("delay", "faults are delay:TIME"),
        ("delay:50", "not a time"),
        ("delay:-1s", "not a time"),
        ("reset-after:lots", "not a size"),
        ("drop-byte:-1", "not a size"),
        ("bandwidth:64KiB", "SIZE/s"),
        ("bandwidth:0/s", "at least 1 byte"),
    ],
)
def test_bad_specs_say_what_is_wrong_in_one_line(text: str, message: str) -> None:
    with pytest.raises(FaultError, match=message) as error:
        parse_fault(text)
    assert "\n" not in str(error.value)
    assert repr(text) in str(error.value)


def faults(*specs: str) -> ConnectionFaults:
    return ConnectionFaults([parse_fault(spec) for spec in specs])


def test_reset_after_echoes_exactly_that_many_bytes_then_ends() -> None:
    rules = faults("reset-after:100")
    first = rules.received_data(b"a" * 60, 0.0)
    assert first == Verdict([(0.0, b"a" * 60)])
    second = rules.received_data(b"b" * 60, 0.0)
    assert [data for _, data in second.pieces] == [b"b" * 40]
    assert second.end is End.RESET


def test_close_after_ends_as_soon_as_the_count_is_reached() -> None:
    verdict = faults("close-after:3").received_data(b"abc", 1.0)
    assert verdict.pieces == [(1.0, b"abc")]
    assert verdict.end is End.CLOSE


def test_a_stall_echoes_nothing_more_and_reads_on() -> None:
    rules = faults("stall-after:4")
    assert rules.received_data(b"abcdef", 0.0) == Verdict([(0.0, b"abcd")], End.STALL)
    assert rules.received_data(b"more", 1.0) == Verdict(())
    assert rules.received == 10


def test_the_dropped_byte_is_counted_from_the_start_of_the_stream() -> None:
    rules = faults("drop-byte:5")
    assert rules.received_data(b"0123", 0.0).pieces == [(0.0, b"0123")]
    assert rules.received_data(b"456789", 0.0).pieces == [(0.0, b"46789")]
    assert rules.received_data(b"abc", 0.0).pieces == [(0.0, b"abc")]  # only one byte


def test_delay_holds_each_read_and_keeps_the_order() -> None:
    rules = faults("delay:50ms")
    assert rules.received_data(b"x", 10.0).pieces == [(10.05, b"x")]
    assert rules.received_data(b"y", 10.01).pieces == [(10.06, b"y")]


def test_bandwidth_spreads_the_echo_over_time() -> None:
    rules = faults("bandwidth:1000/s")
    pieces = list(rules.received_data(b"z" * 200, 0.0).pieces)
    assert b"".join(data for _, data in pieces) == b"z" * 200
    assert [len(data) for _, data in pieces] == [50] * 4  # 1/20 s each
    assert [at for at, _ in pieces] == pytest.approx([0.0, 0.05, 0.1, 0.15])
    # The next read waits for this one's share of the second.
    assert rules.received_data(b"w", 0.0).pieces == [(pytest.approx(0.2), b"w")]


def test_the_earliest_end_wins() -> None:
    rules = faults("close-after:10", "reset-after:5", "stall-after:7")
    assert rules.received_data(b"x" * 20, 0.0).end is End.RESET


def test_every_n_strikes_the_first_of_each_n_connections() -> None:
    plan = FaultPlan([parse_fault("delay:1s")], every=3)
    struck = [plan.next_connection() is not None for _ in range(7)]
    assert struck == [True, False, False, True, False, False, True]
    assert "first of every 3" in plan.describe()
    assert not FaultPlan([]) and FaultPlan([]).next_connection() is None
    with pytest.raises(FaultError):
        FaultPlan([], every=0)


def test_pieces_come_out_in_order_when_due() -> None:
    pieces = Pieces()
    pieces.add([(1.0, b"a"), (1.0, b"b"), (2.0, b"c")])
    assert pieces.held == 3
    assert pieces.due(0.5) == []
    assert pieces.due(1.0) == [b"a", b"b"]
    assert pieces.next_due() == 2.0
    assert pieces.due(5.0) == [b"c"] and pieces.held == 0
