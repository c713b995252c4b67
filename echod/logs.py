"""Logging setup for echod: plain stderr, in the journal's dialect when stderr
is the journal, or one JSON object per line for log shippers; plus a rate limiter
for messages that can come in floods.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import threading
import time
from collections.abc import Callable, Hashable, Mapping
from typing import TextIO

LEVELS = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warning": logging.WARNING,
    "error": logging.ERROR,
    "critical": logging.CRITICAL,
}

# syslog(3) priorities, which journald reads from a "<N>" line prefix (sd-daemon(3)).
_PRIORITIES = ((logging.CRITICAL, 2), (logging.ERROR, 3), (logging.WARNING, 4), (logging.INFO, 6))
_DEBUG_PRIORITY = 7

PLAIN_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
JOURNAL_FORMAT = "%(name)s: %(message)s"

FORMATS = ("text", "json")

_handler: logging.Handler | None = None

# What every LogRecord carries; anything else on a record came from ``extra=`` (or a
# filter such as the supervisor's worker tag) and is a structured field.
_RECORD_ATTRIBUTES = frozenset(
    [*logging.LogRecord("", 0, "", 0, "", (), None).__dict__, "message", "asctime"]
)
# Bookkeeping attributes that are not facts about the event.
_PRIVATE_FIELDS = frozenset(["worker_tagged"])


class JournalFormatter(logging.Formatter):
    """No timestamp (journald adds its own) and a ``<N>`` priority on every line.

    journald splits the stream at newlines and reads the prefix of each line
    separately, so a traceback keeps the record's priority only if each of
    its lines carries it.
    """

    def __init__(self) -> None:
        super().__init__(JOURNAL_FORMAT)

    def format(self, record: logging.LogRecord) -> str:
        prefix = f"<{syslog_priority(record.levelno)}>"
        return "\n".join(prefix + line for line in super().format(record).split("\n"))


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ``time``, ``level``, ``logger``, ``message``, ``pid``
    and every structured field of the record (``worker``, ``counts``, ...).

    A traceback goes in ``exception`` as one string, so a record is always one line
    that a shipper can parse without joining continuation lines. With `priority`
    (stderr is the journal) each line starts with ``<N>`` so journald still files it
    at the right level; journald strips the prefix, leaving the JSON.
    """

    def __init__(self, priority: bool = False) -> None:
        super().__init__()
        self.priority = priority

    def format(self, record: logging.LogRecord) -> str:
        event: dict[str, object] = {
            "time": self.timestamp(record.created),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
            "pid": record.process,
        }
        for key, value in record.__dict__.items():
            if key not in _RECORD_ATTRIBUTES and key not in _PRIVATE_FIELDS:
                event.setdefault(key, value)
        if record.exc_info:
            event["exception"] = self.formatException(record.exc_info)
        elif record.exc_text:
            event["exception"] = record.exc_text
        if record.stack_info:
            event["stack"] = self.formatStack(record.stack_info)
        # default=str: a field that is not JSON (an address tuple, a Path) is still logged.
        line = json.dumps(event, ensure_ascii=False, separators=(",", ":"), default=str)
        return f"<{syslog_priority(record.levelno)}>{line}" if self.priority else line

    @staticmethod
    def timestamp(created: float) -> str:
        """RFC 3339 in UTC with milliseconds: sortable as text, no time zone to guess."""
        seconds = time.gmtime(created)
        millis = int(created % 1 * 1000)
        return time.strftime("%Y-%m-%dT%H:%M:%S", seconds) + f".{millis:03d}Z"


def syslog_priority(levelno: int) -> int:
    for threshold, priority in _PRIORITIES:
        if levelno >= threshold:
            return priority
    return _DEBUG_PRIORITY


def stderr_is_journal(
    environ: Mapping[str, str] = os.environ, stream: TextIO | None = None
) -> bool:
    """True when `stream` (stderr by default) is the journal's stream socket.

    systemd.exec(5): ``$JOURNAL_STREAM`` is ``<st_dev>:<st_ino>`` of the
    journal connection. It is inherited by anything we run, so only a match
    with the fd itself proves stderr still goes there.
    """
    value = environ.get("JOURNAL_STREAM")
    if not value:
        return False
    stream = sys.stderr if stream is None else stream
    try:
        st = os.fstat(stream.fileno())
    except (OSError, ValueError, AttributeError):
        # Closed, or a stand-in with no fd (io.StringIO, a test runner's capture).
        return False
    return value == f"{st.st_dev}:{st.st_ino}"


def configure_logging(
    level: str,
    environ: Mapping[str, str] = os.environ,
    stream: TextIO | None = None,
    log_format: str = "text",
) -> bool:
    """Send the root logger's records at `level` or above to `stream` (stderr).

    `log_format` is ``text`` (timestamps, or the journal's dialect when stderr is the
    journal) or ``json`` (one object per line, with a ``<N>`` priority in the journal).
    Returns True when stderr is the journal. Calling it again replaces the handler
    it installed before and leaves others alone. Raises ValueError for an unknown
    level or format name.
    """
    global _handler
    try:
        levelno = LEVELS[level.lower()]
    except KeyError:
        raise ValueError(
            f"unknown log level {level!r}; choose one of {', '.join(LEVELS)}"
        ) from None
    if log_format not in FORMATS:
        raise ValueError(f"unknown log format {log_format!r}; choose one of {', '.join(FORMATS)}")
    stream = sys.stderr if stream is None else stream
    journal = stderr_is_journal(environ, stream)
    handler = logging.StreamHandler(stream)
    formatter: logging.Formatter
    if log_format == "json":
        formatter = JsonFormatter(priority=journal)
    else:
        formatter = JournalFormatter() if journal else logging.Formatter(PLAIN_FORMAT)
    handler.setFormatter(formatter)
    root = logging.getLogger()
    if _handler is not None:
        root.removeHandler(_handler)
    root.addHandler(handler)
    root.setLevel(levelno)
    _handler = handler
    return journal


class RateLimitedLog:
    """Logs a message at most once per `interval` seconds for each key.

    For conditions that repeat at event-loop speed (EMFILE on accept, an fd
    beyond select()'s FD_SETSIZE): the first occurrence is logged at once,
    the rest of the interval is counted, and the next message that gets
    through says how many were held back. Keys are meant to be a small fixed
    set (one per kind of condition): one counter is kept per key forever.
    """

    __slots__ = ("_clock", "_lock", "_logger", "_state", "interval")

    def __init__(
        self,
        logger: logging.Logger,
        interval: float = 10.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._logger = logger
        self.interval = interval
        self._clock = clock
        self._lock = threading.Lock()  # the threaded backend logs from many threads
        # key -> [time of the last message logged, messages held back since]
        self._state: dict[Hashable, list[float]] = {}

    def log(self, level: int, key: Hashable, msg: str, *args: object) -> bool:
        """Log ``msg % args`` unless `key` was logged within the interval.

        Returns True when the message was emitted.
        """
        now = self._clock()
        with self._lock:
            state = self._state.get(key)
            if state is not None and now - state[0] < self.interval:
                state[1] += 1
                return False
            held_back = int(state[1]) if state is not None else 0
            self._state[key] = [now, 0]
        if held_back:
            msg += " (%d more like this held back since the last report)"
            args = (*args, held_back)
        self._logger.log(level, msg, *args)
        return True

    def warning(self, key: Hashable, msg: str, *args: object) -> bool:
        return self.log(logging.WARNING, key, msg, *args)

    def error(self, key: Hashable, msg: str, *args: object) -> bool:
        return self.log(logging.ERROR, key, msg, *args)
