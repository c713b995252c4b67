"""Logging setup for echod: plain stderr, in the journal's dialect when stderr
is the journal, plus a rate limiter for messages that can come in floods.
"""

from __future__ import annotations

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

_handler: logging.Handler | None = None


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
    level: str, environ: Mapping[str, str] = os.environ, stream: TextIO | None = None
) -> bool:
    """Send the root logger's records at `level` or above to `stream` (stderr).

    Returns True when the journal format was chosen. Calling it again
    replaces the handler it installed before and leaves others alone.
    Raises ValueError for an unknown level name.
    """
    global _handler
    try:
        levelno = LEVELS[level.lower()]
    except KeyError:
        raise ValueError(
            f"unknown log level {level!r}; choose one of {', '.join(LEVELS)}"
        ) from None
    stream = sys.stderr if stream is None else stream
    journal = stderr_is_journal(environ, stream)
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JournalFormatter() if journal else logging.Formatter(PLAIN_FORMAT))
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
