"""Logging: the journal's <N> dialect only when stderr really is the journal."""

from __future__ import annotations

import json
import logging
import os
import re
import signal
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

from echod.lifecycle import Stats
from echod.logs import RateLimitedLog, configure_logging
from tests.support import echod, exchange

PLAIN_LINE = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} WARNING echod\.test: disk full$")


@pytest.fixture(autouse=True)
def restore_root_logger() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


def journal_stream_of(path: Path) -> str:
    st = os.stat(path)
    return f"{st.st_dev}:{st.st_ino}"


def log_to(path: Path, environ: dict[str, str], level: str = "info") -> tuple[bool, str]:
    with open(path, "w") as stream:
        journal = configure_logging(level, environ, stream=stream)
        log = logging.getLogger("echod.test")
        log.debug("tick %d", 1)
        log.info("listening on %s", "[::]:7")
        log.warning("disk %s", "full")
        log.error("accept failed")
        log.critical("giving up")
        logging.getLogger().handlers[-1].flush()
    return journal, path.read_text()


def test_journal_format_when_journal_stream_matches(tmp_path: Path) -> None:
    path = tmp_path / "stderr"
    path.touch()
    journal, text = log_to(path, {"JOURNAL_STREAM": journal_stream_of(path)})
    assert journal
    assert text == (
        "<6>echod.test: listening on [::]:7\n"
        "<4>echod.test: disk full\n"
        "<3>echod.test: accept failed\n"
        "<2>echod.test: giving up\n"
    )


def test_debug_is_priority_7(tmp_path: Path) -> None:
    path = tmp_path / "stderr"
    path.touch()
    _, text = log_to(path, {"JOURNAL_STREAM": journal_stream_of(path)}, level="DEBUG")
    assert text.splitlines()[0] == "<7>echod.test: tick 1"


def test_every_line_of_a_traceback_keeps_the_priority(tmp_path: Path) -> None:
    path = tmp_path / "stderr"
    path.touch()
    with open(path, "w") as stream:
        configure_logging("info", {"JOURNAL_STREAM": journal_stream_of(path)}, stream=stream)
        try:
            raise RuntimeError("boom")
        except RuntimeError:
            logging.getLogger("echod.test").exception("worker crashed")
    lines = path.read_text().splitlines()
    assert lines[0] == "<3>echod.test: worker crashed"
    assert lines[-1] == "<3>RuntimeError: boom"
    assert len(lines) > 3
    assert all(line.startswith("<3>") for line in lines)


@pytest.mark.parametrize(
    "environ",
    [{}, {"JOURNAL_STREAM": "0:0"}, {"JOURNAL_STREAM": "garbage"}],
    ids=["unset", "stale", "garbage"],
)
def test_timestamps_otherwise(tmp_path: Path, environ: dict[str, str]) -> None:
    journal, text = log_to(tmp_path / "stderr", environ)
    assert not journal
    lines = text.splitlines()
    assert len(lines) == 4
    assert PLAIN_LINE.match(lines[1]), lines[1]


def test_stderr_is_what_is_checked_by_default(tmp_path: Path) -> None:
    """As systemd.exec(5) says: compare JOURNAL_STREAM with stderr's st_dev:st_ino."""
    script = textwrap.dedent(
        """
        import logging
        from echod.logs import configure_logging
        configure_logging("info")
        logging.getLogger("echod.test").warning("disk %s", "full")
        """
    )
    path = tmp_path / "stderr"
    path.touch()
    for journal_stream, expected in [
        (journal_stream_of(path), "<4>echod.test: disk full\n"),
        (journal_stream_of(tmp_path), None),  # some other file: a stale variable
    ]:
        with open(path, "w") as stderr:
            subprocess.run(
                [sys.executable, "-c", script],
                env={**os.environ, "JOURNAL_STREAM": journal_stream},
                stderr=stderr,
                check=True,
                timeout=30,
            )
        text = path.read_text()
        if expected is None:
            assert PLAIN_LINE.match(text.rstrip("\n")), text
        else:
            assert text == expected


def test_reconfiguring_replaces_the_handler(tmp_path: Path) -> None:
    path = tmp_path / "stderr"
    with open(path, "w") as stream:
        configure_logging("info", {}, stream=stream)
        configure_logging("warning", {}, stream=stream)
        logging.getLogger("echod.test").info("hidden")
        logging.getLogger("echod.test").warning("disk full")
    assert len(path.read_text().splitlines()) == 1


def test_an_unknown_level_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown log level 'loud'"):
        configure_logging("loud", {})


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_rate_limited_log_holds_back_repeats_and_counts_them(
    caplog: pytest.LogCaptureFixture,
) -> None:
    clock = Clock()
    limited = RateLimitedLog(logging.getLogger("echod.test"), interval=10.0, clock=clock)
    with caplog.at_level(logging.WARNING, logger="echod.test"):
        assert limited.warning("emfile", "accept: %s", "too many open files")
        clock.now += 1
        assert not limited.warning("emfile", "accept: %s", "too many open files")
        clock.now += 8.9
        assert not limited.warning("emfile", "accept: %s", "too many open files")
        clock.now += 0.1
        assert limited.warning("emfile", "accept: %s", "too many open files")
        clock.now += 10
        assert limited.error("emfile", "accept: %s", "too many open files")
    assert [(r.levelno, r.getMessage()) for r in caplog.records] == [
        (logging.WARNING, "accept: too many open files"),
        (
            logging.WARNING,
            "accept: too many open files (2 more like this held back since the last report)",
        ),
        (logging.ERROR, "accept: too many open files"),
    ]


def test_rate_limited_log_keys_are_independent(caplog: pytest.LogCaptureFixture) -> None:
    limited = RateLimitedLog(logging.getLogger("echod.test"), interval=10.0, clock=Clock())
    with caplog.at_level(logging.WARNING, logger="echod.test"):
        assert limited.warning("emfile", "EMFILE")
        assert limited.warning("fd-setsize", "fd %d is beyond select()'s limit", 1024)
        assert not limited.warning("emfile", "EMFILE")
    assert [r.getMessage() for r in caplog.records] == [
        "EMFILE",
        "fd 1024 is beyond select()'s limit",
    ]


# --- --log-format json ----------------------------------------------------------------

JSON_TIME = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")


def json_lines(text: str, prefix: str = "") -> list[dict[str, object]]:
    """Every line parsed; a line that is not one JSON object fails the test."""
    events = []
    for line in text.splitlines():
        assert line.startswith(prefix), line
        event = json.loads(line[len(prefix) :])
        assert isinstance(event, dict), line
        events.append(event)
    return events


def test_json_is_one_object_per_record_with_structured_fields(tmp_path: Path) -> None:
    path = tmp_path / "stderr"
    with open(path, "w") as stream:
        assert not configure_logging("info", {}, stream=stream, log_format="json")
        log = logging.getLogger("echod.test")
        log.info("listening on %s", "[::]:7")
        log.warning(
            'odd "peer"\nsecond line', extra={"peer": ("::1", 4000), "worker": 2, "path": tmp_path}
        )
        try:
            raise RuntimeError("boom")
        except RuntimeError:
            log.exception("worker crashed")
    lines = path.read_text().splitlines()
    assert len(lines) == 3  # the newline in the message and the traceback stay inside
    first, second, third = json_lines(path.read_text())
    assert first["message"] == "listening on [::]:7"
    assert (first["level"], first["logger"], first["pid"]) == ("info", "echod.test", os.getpid())
    assert JSON_TIME.match(str(first["time"])), first
    assert second["message"] == 'odd "peer"\nsecond line'
    assert (second["level"], second["peer"], second["worker"]) == ("warning", ["::1", 4000], 2)
    assert second["path"] == str(tmp_path)  # not JSON by itself: logged as text
    assert third["level"] == "error"
    assert "RuntimeError: boom" in str(third["exception"])


def test_json_in_the_journal_keeps_the_priority_prefix(tmp_path: Path) -> None:
    path = tmp_path / "stderr"
    path.touch()
    with open(path, "w") as stream:
        environ = {"JOURNAL_STREAM": journal_stream_of(path)}
        assert configure_logging("info", environ, stream=stream, log_format="json")
        logging.getLogger("echod.test").warning("disk %s", "full")
    text = path.read_text()
    assert text.startswith("<4>{")
    (event,) = json_lines(text, prefix="<4>")
    assert event["message"] == "disk full"


def test_an_unknown_format_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown log format 'xml'"):
        configure_logging("info", {}, log_format="xml")


def test_text_stays_the_default(tmp_path: Path) -> None:
    _, text = log_to(tmp_path / "stderr", {})
    assert not text.startswith("{")
    assert PLAIN_LINE.match(text.splitlines()[1])


@pytest.mark.parametrize("workers", ["1", "2"])
def test_real_echod_logs_json_lines_only(workers: str) -> None:
    """The real server, start to stop: every stderr line parses, workers are fields."""
    with echod("--port", "0", "--workers", workers, "--log-format", "json") as server:
        if workers != "1":
            server.wait_for("ready: 2 workers serving")
        for _ in range(5):
            with server.connect() as sock:
                assert exchange(sock, b"hello") == b"hello"
        server.signal(signal.SIGUSR1)
        server.wait_for(r"stats \(all workers\)" if workers != "1" else "stats: ")
    events = json_lines(server.log)
    assert {"info"} <= {str(e["level"]) for e in events}
    assert all(JSON_TIME.match(str(e["time"])) for e in events)
    stats = [e for e in events if str(e["message"]).startswith(("stats:", "worker"))]
    counts = [e["counts"] for e in stats if "counts" in e and "stats: " in str(e["message"])]
    assert sum(c["connections_total"] for c in counts) == 5  # type: ignore[index]
    assert sum(c["bytes_in"] for c in counts) == 25  # type: ignore[index]
    # Every figure of the text line has its key: dropped= too.
    assert all(c["connections_dropped"] == 0 for c in counts), counts  # type: ignore[index]
    if workers != "1":
        assert {e["worker"] for e in events if "worker" in e} == {1, 2}


def test_a_bad_log_format_is_one_line_and_exit_2() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "echod", "--log-format", "xml"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and "--log-format" in result.stderr
    result = subprocess.run(
        [sys.executable, "-m", "echod"],
        capture_output=True,
        text=True,
        timeout=30,
        env={**os.environ, "ECHOD_LOG_FORMAT": "xml"},
    )
    assert result.returncode == 2
    assert result.stderr == "echod: error: ECHOD_LOG_FORMAT='xml': choose from text, json\n"


def test_json_counts_carry_what_the_text_line_prints() -> None:
    stats = Stats(connections_open=1, connections_total=4, refused_fd_setsize=2,
                  refused_resources=1, bytes_in=10, bytes_out=9)  # fmt: skip
    counts = stats.counts()
    assert "dropped=3 " in stats.summary()
    assert counts["connections_dropped"] == 3
    assert (counts["connections_open"], counts["connections_total"]) == (1, 4)
    assert (counts["bytes_in"], counts["bytes_out"]) == (10, 9)
