"""Several generators as one: a common --start-at, results files and their merge.

Three separate ``echod-bench`` processes stand in for three hosts; the merged
result must be exactly what their histograms and counts add up to, computed here
independently with ``hdrh``.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hdrh.histogram import HdrHistogram
from loadtest_servers import EchoServer

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:  # tests/ is a directory of the repository, not installed
    sys.path.insert(0, str(ROOT))

from tests.support import Echod, echod, require_ipv6  # noqa: E402

# Time for three interpreters to start and connect on a loaded 2-core machine.
LEAD_S = 8.0


@pytest.fixture(scope="module")
def server() -> Iterator[Echod]:
    with echod("--port", "0", "--backend", "epoll") as running:
        yield running


def bench(*args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "loadtest", "--no-progress", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def merge(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "loadtest", "merge", *args],
        capture_output=True,
        text=True,
        timeout=30,
    )


def histogram(text: str) -> HdrHistogram:
    """Decoded the way any hdrh user would, not through echod-bench's own helpers."""
    decoded = HdrHistogram(1, 3_600_000_000, 3)
    decoded.decode_and_add(text.encode("ascii"))
    return decoded


def run_args(port: int, connections: int, start_at: float, out: Path) -> list[str]:
    return [
        "--port", str(port), "--connections", str(connections), "--processes", "1",
        "--warmup", "0.5", "--duration", "2", "--start-at", f"{start_at:.3f}", "--json", str(out),
    ]  # fmt: skip


@pytest.fixture(scope="module")
def three_runs(server: Echod, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Three generators with one --start-at, and their merge; run once for the module."""
    where = tmp_path_factory.mktemp("multihost")
    start_at = time.time() + LEAD_S
    procs = [
        bench(*run_args(server.port, 2 + i, start_at, where / f"run{i}.json")) for i in range(3)
    ]
    for proc in procs:
        _, err = proc.communicate(timeout=LEAD_S + 30)
        assert proc.returncode == 0, err
    files = [str(where / f"run{i}.json") for i in range(3)]
    merged_path = where / "merged.json"
    result = merge(*files, "--json", str(merged_path))
    assert result.returncode == 0, result.stderr
    return {
        "start_at": start_at,
        "files": files,
        "runs": [json.loads(Path(f).read_text()) for f in files],
        "merged": json.loads(merged_path.read_text()),
        "merged_path": str(merged_path),
        "stdout": result.stdout,
    }


def test_common_start_at_measures_one_window(three_runs: dict[str, Any]) -> None:
    begin = three_runs["start_at"] + 0.5  # --start-at starts the warmup
    for run in three_runs["runs"]:
        window = run["window"]
        assert begin - 0.01 <= window["start"] < begin + 1.0, (begin, window)
        assert window["end"] - window["start"] == pytest.approx(2.0, abs=0.5)
    starts = [r["window"]["start"] for r in three_runs["runs"]]
    ends = [r["window"]["end"] for r in three_runs["runs"]]
    assert max(starts) < min(ends)


def test_merged_counts_are_the_sums(three_runs: dict[str, Any]) -> None:
    runs, merged = three_runs["runs"], three_runs["merged"]
    assert all(r["messages"] > 0 for r in runs)
    for key in ("messages", "bytes_echoed", "unsent", "errors_total"):
        assert merged[key] == sum(r[key] for r in runs), key
    assert merged["connections"] == {
        "requested": 2 + 3 + 4,
        "active": 2 + 3 + 4,
        "established": sum(r["connections"]["established"] for r in runs),
    }
    assert merged["requests_per_s"] == pytest.approx(sum(r["requests_per_s"] for r in runs))
    assert len(merged["workers"]) == 3 and len(merged["merged"]) == 3
    assert "3 runs merged" in three_runs["stdout"]


def test_merged_percentiles_are_those_of_the_added_histograms(
    three_runs: dict[str, Any],
) -> None:
    runs, merged = three_runs["runs"], three_runs["merged"]
    for name, summary in (("latency", "latency_us"), ("connect", "connect_us")):
        added = HdrHistogram(1, 3_600_000_000, 3)
        for run in runs:
            one = histogram(run["histograms"][name])
            assert one.get_total_count() == run[summary]["count"]
            added.add(one)
        assert merged[summary]["count"] == added.get_total_count()
        for label, percentile in (("p50", 50), ("p90", 90), ("p99", 99), ("p99.9", 99.9)):
            assert merged[summary][label] == added.get_value_at_percentile(percentile), label
        assert merged[summary]["max"] == added.get_max_value()
        assert histogram(merged["histograms"][name]).get_total_count() == added.get_total_count()
    assert merged["latency_us"]["count"] == merged["messages"]


def test_merged_seconds_add_up(three_runs: dict[str, Any]) -> None:
    runs, merged = three_runs["runs"], three_runs["merged"]
    for run in runs:
        assert [i["second"] for i in run["intervals"]] == [0, 1]
        assert sum(i["messages"] for i in run["intervals"]) == run["messages"]
    for second, interval in enumerate(merged["intervals"]):
        parts = [r["intervals"][second] for r in runs]
        assert interval["messages"] == sum(p["messages"] for p in parts)
        added = HdrHistogram(1, 3_600_000_000, 3)
        for part in parts:
            added.add(histogram(part["latency"]))
        assert interval["p99_us"] == added.get_value_at_percentile(99)


def test_a_merged_result_merges_again(three_runs: dict[str, Any], tmp_path: Path) -> None:
    again = tmp_path / "again.json"
    result = merge(three_runs["merged_path"], three_runs["files"][0], "--json", str(again))
    assert result.returncode == 0, result.stderr
    twice = json.loads(again.read_text())
    first = three_runs["runs"][0]
    assert twice["messages"] == three_runs["merged"]["messages"] + first["messages"]
    assert len(twice["merged"]) == 4
    assert twice["latency_us"]["count"] == twice["messages"]


# -- errors: one line, exit 2 --------------------------------------------------


def assert_one_line(result: subprocess.CompletedProcess[str], text: str) -> None:
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert text in lines[0], lines[0]
    assert "Traceback" not in result.stderr


def test_windows_that_do_not_overlap_are_refused(
    three_runs: dict[str, Any], tmp_path: Path
) -> None:
    later = dict(three_runs["runs"][0])
    window = later["window"]
    later["window"] = {"start": window["end"] + 60, "end": window["end"] + 62}
    shifted = tmp_path / "later.json"
    shifted.write_text(json.dumps(later))
    result = merge(three_runs["files"][1], str(shifted))
    assert_one_line(result, "windows do not overlap")


@pytest.mark.parametrize(
    ("content", "text"),
    [
        ("not json at all\n", "not JSON"),
        ('{"messages": 3}\n', "not an echod-bench result"),
        ('{"format": "echod-bench-result/99"}\n', "this echod-bench reads"),
        (None, "cannot read"),
    ],
    ids=["not-json", "no-format", "future-format", "missing"],
)
def test_a_file_that_is_not_a_result_is_refused(
    three_runs: dict[str, Any], tmp_path: Path, content: str | None, text: str
) -> None:
    bad = tmp_path / "bad.json"
    if content is not None:
        bad.write_text(content)
    assert_one_line(merge(three_runs["files"][0], str(bad)), text)


def test_a_damaged_histogram_is_refused(three_runs: dict[str, Any], tmp_path: Path) -> None:
    damaged = dict(three_runs["runs"][0])
    damaged["histograms"] = {**damaged["histograms"], "latency": "bm90IGEgaGlzdG9ncmFt"}
    bad = tmp_path / "damaged.json"
    bad.write_text(json.dumps(damaged))
    assert_one_line(merge(three_runs["files"][0], str(bad)), "damaged")


def run_bench(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "loadtest", "--no-progress", "--processes", "1", *args],
        capture_output=True,
        text=True,
        timeout=30,
    )


@pytest.mark.parametrize(
    ("value", "text"),
    [
        ("1000000000", "in the past"),
        ("2001-09-09T01:46:40Z", "in the past"),
        (str(int(time.time()) + 3 * 86400), "ahead"),
        ("2030-01-01T00:00:00", "no time zone"),
        ("tomorrow", "neither Unix seconds nor an ISO 8601 time"),
    ],
    ids=["past-unix", "past-iso", "too-far", "no-zone", "garbage"],
)
def test_bad_start_at_is_one_line(server: Echod, value: str, text: str) -> None:
    assert_one_line(run_bench("--port", str(server.port), "--start-at", value), text)


def test_start_at_passed_while_connecting_is_one_line(server: Echod) -> None:
    # Valid when parsed; the ramp-up (4 connects at 1/s: 3 s) outlasts it.
    result = run_bench(
        "--port", str(server.port), "--connections", "4", "--connect-rate", "1",
        "--start-at", f"{time.time() + 2:.3f}",
    )  # fmt: skip
    assert_one_line(result, "--start-at passed")


@pytest.mark.parametrize(
    ("value", "text"),
    [
        ("127.0.0.2-", "is not an IPv4 or IPv6 address"),
        ("localhost", "is not an IPv4 or IPv6 address"),
        ("127.0.0.9-127.0.0.2", "runs backwards"),
        ("127.0.0.2,::1", "mix IPv4 and IPv6"),
        ("127.0.0.2,127.0.0.2", "listed twice"),
        ("10.0.0.0-10.2.0.0", "more than 65,536"),
        ("::1", "is not IPv4"),
        ("192.0.2.1", "cannot bind source address 192.0.2.1"),
    ],
    ids=["dangling", "name", "backwards", "mixed", "twice", "huge", "family", "unbindable"],
)
def test_bad_source_address_is_one_line(server: Echod, value: str, text: str) -> None:
    assert_one_line(run_bench("--port", str(server.port), "--source-address", value), text)


def test_merge_needs_files() -> None:
    assert_one_line(merge(), "required")


# -- one generator, several addresses; streaming; ramp-up -----------------------


def test_json_stream_is_one_line_a_second_then_the_result(server: Echod, tmp_path: Path) -> None:
    result = run_bench(
        "--port", str(server.port), "--connections", "3", "--warmup", "0.2",
        "--duration", "2.5", "--json-stream",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    assert [line["event"] for line in lines] == ["interval"] * 3 + ["end"]
    seconds = [line["data"] for line in lines[:-1]]
    assert [s["second"] for s in seconds] == [0, 1, 2]
    assert [s["duration_s"] for s in seconds] == [1.0, 1.0, 0.5]
    final = lines[-1]["data"]
    assert final["intervals"] == seconds
    assert sum(s["messages"] for s in seconds) == final["messages"] > 0
    assert "requests/s" in result.stderr  # the table moved out of stdout's way
    # A capture as `kubectl logs` gives it, stderr last, is a result merge reads.
    capture = tmp_path / "capture.jsonl"
    capture.write_text(result.stdout + result.stderr)
    merged = merge(str(capture), str(capture), "--json", "-")
    assert merged.returncode == 0, merged.stderr
    assert json.loads(merged.stdout)["messages"] == 2 * final["messages"]


def test_connect_rate_paces_the_ramp_up(server: Echod, tmp_path: Path) -> None:
    out = tmp_path / "ramp.json"
    launched = time.time()
    result = run_bench(
        "--port", str(server.port), "--connections", "10", "--active", "1",
        "--connect-rate", "5", "--warmup", "0", "--duration", "0.5", "--json", str(out),
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    figures = json.loads(out.read_text())
    # The tenth connect is due 9 / 5 = 1.8 s after the first; the window comes after.
    assert figures["window"]["start"] - launched >= 1.8
    assert figures["connections"]["established"] == 10
    assert figures["connect_us"]["count"] == 10


class PeerRecorder(EchoServer):
    """The correct echo server, noting each client's address as it is accepted."""

    def __init__(self) -> None:
        self.peers: list[str] = []
        super().__init__()

    def _serve(self, conn: socket.socket) -> None:
        with self.lock:
            self.peers.append(conn.getpeername()[0])
        super()._serve(conn)


def test_source_addresses_are_spread_over_the_connections() -> None:
    echo = PeerRecorder()
    try:
        result = run_bench(
            "--port", str(echo.port), "--connections", "6", "--warmup", "0",
            "--duration", "0.5", "--source-address", "127.0.0.2-127.0.0.3",
        )  # fmt: skip
        assert result.returncode == 0, result.stderr
    finally:
        echo.close()
    # Six load connections, one each way round, and the preflight connect from the first.
    assert sorted(echo.peers) == ["127.0.0.2"] * 4 + ["127.0.0.3"] * 3, echo.peers


def test_ipv6_source_address_binds_and_connects() -> None:
    require_ipv6()
    with echod("--host", "::1", "--port", "0", "--backend", "epoll") as six:
        result = run_bench(
            "--host", "::1", "--port", str(six.port), "--connections", "4", "--warmup", "0",
            "--duration", "0.5", "--source-address", "::1", "--json", "-",
        )  # fmt: skip
    assert result.returncode == 0, result.stderr
    figures = json.loads(result.stdout)
    assert figures["parameters"]["source_address"] == ["::1"]
    assert figures["connections"]["established"] == 4 and figures["messages"] > 0


# -- the pure parts --------------------------------------------------------------


def test_source_lists_and_ranges_expand_in_order() -> None:
    from loadtest.sources import parse_sources

    assert parse_sources("127.0.0.2-127.0.0.4,127.0.0.9") == (
        "127.0.0.2",
        "127.0.0.3",
        "127.0.0.4",
        "127.0.0.9",
    )
    assert parse_sources("fd00::fe-fd00::101") == ("fd00::fe", "fd00::ff", "fd00::100", "fd00::101")
    assert parse_sources("[::1]") == ("::1",)


def test_start_at_reads_unix_seconds_and_iso_with_a_zone() -> None:
    from loadtest.params import start_time

    now = 1_800_000_000.0
    assert start_time("1800000060", now) == 1_800_000_060.0
    assert start_time("2027-01-15T08:01:00Z", now) == 1_800_000_060.0
    assert start_time("2027-01-15T09:01:00+01:00", now) == 1_800_000_060.0


def test_connections_not_up_at_the_end_are_an_error() -> None:
    from loadtest.params import Params
    from loadtest.report import build
    from loadtest.stats import WorkerResult, encode_counts

    def worker(index: int, established: int) -> WorkerResult:
        return WorkerResult(
            index=index, connections=10, established=established, messages=100, echoed=6400,
            unsent=0, window_s=1.0, cpu_s=0.1, latency=encode_counts({50: 100}),
            connect=encode_counts({20: 10}), window_start_wall=1.0, window_end_wall=2.0,
        )  # fmt: skip

    params = Params(connections=20)
    figures = build(params, 2, [worker(0, 10), worker(1, 7)], None)
    assert figures["errors"] == {"unconnected": 3}
    assert figures["exit_status"] == 1
    assert build(params, 2, [worker(0, 10), worker(1, 10)], None)["exit_status"] == 0
