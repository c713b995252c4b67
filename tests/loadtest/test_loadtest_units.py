"""The pure parts: the pattern rule, histogram merging, flag parsing, limits, sampling."""

from __future__ import annotations

import os
import resource
import socket
import subprocess
import sys
import time

import pytest

from loadtest.limits import ensure_open_files
from loadtest.monitor import NoSuchServer, TreeSampler
from loadtest.params import parse
from loadtest.pattern import CHUNK, PERIOD, Pattern
from loadtest.pollers import EpollPoller, SelectorsPoller
from loadtest.stats import Tally, encode_counts, merge, summarize


def test_pattern_accepts_the_sent_bytes_at_any_offset() -> None:
    pattern = Pattern()
    base = Pattern.base(7)
    for position in (0, 1, PERIOD - 3, 5 * PERIOD + 11):
        sent = bytes(pattern.expected(base, position, CHUNK))
        assert len(sent) == CHUNK
        assert pattern.matches(sent, base, position)


def test_pattern_rejects_a_flipped_byte_a_shift_and_another_connection() -> None:
    pattern = Pattern()
    base = Pattern.base(3)
    sent = bytearray(pattern.expected(base, 100, 1024))
    flipped = bytearray(sent)
    flipped[500] ^= 1
    assert not pattern.matches(flipped, base, 100)
    assert not pattern.matches(sent, base, 101)
    assert not pattern.matches(sent, Pattern.base(4), 100)


def test_histograms_merge_rather_than_average() -> None:
    fast = encode_counts({10: 990})
    slow = encode_counts({10_000: 10})
    merged = summarize(merge([fast, slow]))
    assert merged["count"] == 1000
    assert merged["p50"] == 10
    assert 9_990 <= merged["p99.9"] <= 10_010
    assert summarize(merge([])) == {"count": 0}


def test_rate_implies_the_rate_workload_and_contradictions_exit_2() -> None:
    assert parse(["--rate", "100"]).workload == "rate"
    assert parse(["--churn"]).workload == "churn"
    assert parse([]).workload == "rr"
    for bad in (
        ["--churn", "--rate", "5"],
        ["--workload", "rate"],
        ["--connections", "2", "--active", "3"],
        ["--size", "0"],
    ):
        with pytest.raises(SystemExit) as exit_info:
            parse(bad)
        assert exit_info.value.code == 2


def test_open_file_limit_is_raised_to_the_hard_limit_or_explained() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY:
        pytest.skip("no hard limit on open files here")
    try:
        assert ensure_open_files(hard) is None
        assert resource.getrlimit(resource.RLIMIT_NOFILE)[0] == hard
        message = ensure_open_files(hard + 1)
        assert message is not None and "hard limit" in message
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


@pytest.mark.timing  # the child must get most of a CPU for 0.6 s: a loaded machine starves it
def test_tree_sampler_counts_a_childs_cpu() -> None:
    burner = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import time\nend = time.time() + 1.5\nwhile time.time() < end: pass",
        ]
    )
    try:
        sampler = TreeSampler(os.getpid(), interval=0.05)
        sampler.start()
        began = time.monotonic()
        time.sleep(0.8)
        sampler.stop()
        figures = sampler.figures(began + 0.1, began + 0.7)
        assert figures is not None
        assert figures.processes >= 2
        assert 0.3 < figures.cpu_s < 1.0
        assert figures.cpu_peak_pct >= figures.cpu_mean_pct > 40
    finally:
        burner.kill()
        burner.wait()


def test_tree_sampler_refuses_a_missing_pid() -> None:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    with pytest.raises(NoSuchServer):
        TreeSampler(proc.pid)


def test_tally_cuts_seconds_and_keeps_the_window_totals() -> None:
    tally = Tally()
    tally.error("reset")  # in warmup: kept as an error, not in any second
    tally.reset()
    tally.messages, tally.bytes, tally.latency = 3, 192, {10: 2, 20: 1}
    first = tally.cut(0)
    tally.messages, tally.bytes, tally.latency = 1, 64, {30: 1}
    tally.error("mismatch")
    second = tally.cut(1)
    assert (first.second, first.messages, first.bytes, first.errors) == (0, 3, 192, {})
    assert (second.second, second.messages, second.bytes, second.errors) == (
        1,
        1,
        64,
        {"mismatch": 1},
    )
    assert summarize(merge([first.latency]))["count"] == 3
    assert summarize(merge([second.latency]))["max"] == 30
    assert (tally.window_messages, tally.window_bytes) == (4, 256)
    assert tally.window_latency == {10: 2, 20: 1, 30: 1}
    assert tally.errors == {"reset": 1, "mismatch": 1}
    assert (tally.messages, tally.latency) == (0, {})


@pytest.mark.parametrize("make", [EpollPoller, SelectorsPoller], ids=["epoll", "selectors"])
def test_poller_skips_a_socket_closed_earlier_in_the_same_round(
    make: type[EpollPoller] | type[SelectorsPoller],
) -> None:
    poller = make()
    pairs = [socket.socketpair() for _ in range(2)]
    calls: list[int] = []

    def first(_events: int) -> None:
        calls.append(0)
        for sock in pairs[1]:
            if sock.fileno() in registered:
                poller.unregister(sock.fileno())
                registered.remove(sock.fileno())

    def second(_events: int) -> None:
        calls.append(1)

    registered: list[int] = []
    for (ours, peer), callback in zip(pairs, (first, second), strict=True):
        poller.register(ours.fileno(), poller.READ, callback)
        registered.append(ours.fileno())
        peer.send(b"x")
    try:
        ready = poller.poll(1.0)
        assert ready == 2
        # Whichever ran first, the other must not run once the first has removed it.
        assert calls in ([0], [1, 0])
    finally:
        poller.close()
        for pair in pairs:
            for sock in pair:
                sock.close()
