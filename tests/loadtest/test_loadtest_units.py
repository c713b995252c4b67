"""The pure parts: the pattern rule, histogram merging, flag parsing, limits, sampling."""

from __future__ import annotations

import os
import resource
import subprocess
import sys
import time

import pytest

from loadtest.limits import ensure_open_files
from loadtest.monitor import NoSuchServer, TreeSampler
from loadtest.params import parse
from loadtest.pattern import CHUNK, PERIOD, Pattern
from loadtest.stats import encode_counts, merge, summarize


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
