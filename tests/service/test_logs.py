"""Logging: the journal's <N> dialect only when stderr really is the journal."""

from __future__ import annotations

import logging
import os
import re
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

from echod.logs import RateLimitedLog, configure_logging

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
