"""The echo session's rules, driven with byte strings alone (no sockets)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from echod.session import DONE, WANT_READ, WANT_WRITE, EchoSession, WaterMarks

MARKS = WaterMarks(high=100, low=20)


def test_a_new_session_only_wants_to_read_and_holds_no_buffer() -> None:
    session = EchoSession(MARKS)
    assert session.wants == WANT_READ
    assert session.pending == b""
    assert not isinstance(session.pending, bytearray)  # idle connections own no buffer


def test_unsent_output_makes_it_want_to_write_as_well() -> None:
    session = EchoSession(MARKS)
    assert session.queue(b"abc") == WANT_READ | WANT_WRITE
    assert session.pending == b"abc"


def test_reading_pauses_at_the_high_water_mark_and_resumes_at_the_low_one() -> None:
    session = EchoSession(MARKS)
    assert session.queue(b"x" * 99) == WANT_READ | WANT_WRITE
    assert session.queue(b"x") == WANT_WRITE  # 100 pending: stop reading
    assert session.sent(50) == WANT_WRITE  # 50 pending: still above the low mark
    assert session.sent(30) == WANT_READ | WANT_WRITE  # 20 pending: read again
    assert session.sent(20) == WANT_READ
    assert session.pending == b""


def test_sent_drops_bytes_from_the_front_keeping_order() -> None:
    session = EchoSession(MARKS)
    session.queue(b"hello ")
    session.queue(b"world")
    session.sent(3)
    assert bytes(session.pending) == b"lo world"


def test_end_of_input_with_nothing_pending_finishes_at_once() -> None:
    session = EchoSession(MARKS)
    assert session.eof() == DONE


def test_end_of_input_flushes_pending_output_before_finishing() -> None:
    session = EchoSession(MARKS)
    session.queue(b"tail")
    assert session.eof() == WANT_WRITE  # no more reading, but the tail is still owed
    assert session.sent(2) == WANT_WRITE
    assert session.sent(2) == DONE


def test_draining_releases_the_buffer() -> None:
    session = EchoSession(MARKS)
    session.queue(b"x" * 10)
    session.sent(10)
    assert session.pending == b"" and not isinstance(session.pending, bytearray)


@pytest.mark.parametrize(("high", "low"), [(0, 0), (10, 11), (10, -1)])
def test_water_marks_must_be_ordered(high: int, low: int) -> None:
    with pytest.raises(ValueError):
        WaterMarks(high=high, low=low)


@given(st.lists(st.tuples(st.binary(max_size=300), st.integers(0, 400)), max_size=50))
def test_any_interleaving_of_queue_and_send_returns_the_bytes_in_order(
    steps: list[tuple[bytes, int]],
) -> None:
    session = EchoSession(MARKS)
    queued = bytearray()
    sent = bytearray()
    for data, budget in steps:
        if data and session.wants & WANT_READ:
            session.queue(data)
            queued += data
        take = min(budget, len(session.pending))
        sent += session.pending[:take]
        session.sent(take)
        # Pending never exceeds the high-water mark by more than one read.
        assert len(session.pending) < MARKS.high + 300
    sent += session.pending
    assert sent == queued
