"""Counting in the hot loop, HDR histograms between processes, and the merge.

Recording into ``HdrHistogram`` costs about 1 µs a value in pure Python; bumping a
dict of microseconds costs about 70 ns.  Workers therefore count latencies in
``Tally`` dicts and turn them into one histogram when they report, which the
parent decodes and adds: percentiles are merged, never averaged.
"""

from __future__ import annotations

import builtins
import errno
from dataclasses import dataclass, field

from hdrh.histogram import HdrHistogram

LOWEST_US = 1
HIGHEST_US = 3_600_000_000  # one hour: anything slower is clamped, not dropped
SIGNIFICANT_DIGITS = 3
PERCENTILES = (("p50", 50.0), ("p90", 90.0), ("p99", 99.0), ("p99.9", 99.9))

# Error kinds named in reports and JSON; errno values fold into the first few.
MISMATCH = "mismatch"
CLOSED = "closed"
RESET = "reset"
REFUSED = "refused"
CONNECT_TIMEOUT = "connect_timeout"
TIMEOUT = "timeout"
# Still owed when the drain after the window gave up: bytes that never came back.
LOST = "lost"
# Open loop: a message that fell due and could not be sent before the run ended.
UNSENT = "unsent"
# A TLS handshake the server or the client gave up (a certificate not verified, no
# shared version); a broken record later on reads as the errno EPROTO.
TLS_HANDSHAKE = "tls_handshake"
_ERRNO_KINDS = {
    errno.ECONNRESET: RESET,
    errno.EPIPE: RESET,
    errno.ECONNABORTED: RESET,
    errno.ECONNREFUSED: REFUSED,
    errno.ETIMEDOUT: TIMEOUT,
}


def error_kind(code: int) -> str:
    """A short name for an errno, so reports group by cause rather than by number."""
    return _ERRNO_KINDS.get(code) or errno.errorcode.get(code, f"errno{code}").lower()


class Tally:
    """What one worker counts, cut into whole seconds of the measurement window.

    The hot path bumps ``messages``, ``bytes`` and the µs dicts ``latency`` and
    ``uncorrected`` (the latter only in open loop, from the actual send); ``cut``
    folds them into the window's totals once a second, so connections always
    count into the current second and never look up which second it is.
    """

    __slots__ = (
        "bytes",
        "connect",
        "errors",
        "latency",
        "messages",
        "uncorrected",
        "window_bytes",
        "window_errors",
        "window_latency",
        "window_messages",
        "window_uncorrected",
    )

    def __init__(self) -> None:
        self.errors: dict[str, int] = {}
        self.connect: dict[int, int] = {}
        self.reset()

    def reset(self, connects: bool = True) -> None:
        """Start the measurement window.

        Errors are kept, since a fault in warmup is a fault; connect times are kept
        when ``connects`` is false, for connections made before the clock started.
        """
        self.messages = 0
        self.bytes = 0
        self.latency: dict[int, int] = {}
        self.uncorrected: dict[int, int] = {}
        self.window_messages = 0
        self.window_bytes = 0
        self.window_latency: dict[int, int] = {}
        self.window_uncorrected: dict[int, int] = {}
        self.window_errors = dict(self.errors)
        if connects:
            self.connect = {}

    def error(self, kind: str, count: int = 1) -> None:
        self.errors[kind] = self.errors.get(kind, 0) + count

    def cut(self, second: int) -> Interval:
        """End one second: its figures as an ``Interval``, added to the window's."""
        errors = {
            kind: count - self.window_errors.get(kind, 0)
            for kind, count in self.errors.items()
            if count != self.window_errors.get(kind, 0)
        }
        interval = Interval(second, self.messages, self.bytes, errors, encode_counts(self.latency))
        self.window_messages += self.messages
        self.window_bytes += self.bytes
        add_counts(self.window_latency, self.latency)
        add_counts(self.window_uncorrected, self.uncorrected)
        self.window_errors = dict(self.errors)
        self.messages = 0
        self.bytes = 0
        self.latency = {}
        self.uncorrected = {}
        return interval


def add_counts(total: dict[int, int], counts: dict[int, int]) -> None:
    for value, count in counts.items():
        total[value] = total.get(value, 0) + count


def new_histogram() -> HdrHistogram:
    return HdrHistogram(LOWEST_US, HIGHEST_US, SIGNIFICANT_DIGITS)


def encode_counts(counts: dict[int, int]) -> bytes:
    """One worker's µs counts as an encoded HDR histogram, ready to cross a pipe."""
    histogram = new_histogram()
    for value, count in counts.items():
        histogram.record_value(min(max(value, LOWEST_US), HIGHEST_US), count)
    encoded: bytes = histogram.encode()
    return encoded


def merge(encoded: list[bytes]) -> HdrHistogram:
    histogram = new_histogram()
    for blob in encoded:
        if blob:  # b"": a result that carries no such histogram
            histogram.decode_and_add(blob)
    return histogram


def summarize(histogram: HdrHistogram) -> dict[str, float | int]:
    """Percentiles in µs; an empty histogram reports its count and nothing else."""
    count = int(histogram.get_total_count())
    if count == 0:
        return {"count": 0}
    summary: dict[str, float | int] = {"count": count}
    for name, percentile in PERCENTILES:
        summary[name] = int(histogram.get_value_at_percentile(percentile))
    summary["max"] = int(histogram.get_max_value())
    summary["mean"] = round(float(histogram.get_mean_value()), 1)
    return summary


@dataclass
class Interval:
    """One second of one worker's measurement window."""

    second: int  # 0 = first second after warmup (a last partial second too)
    messages: int
    bytes: int
    errors: dict[str, int]
    latency: builtins.bytes  # encoded HDR histogram of that second's latencies, µs (corrected)


@dataclass
class WorkerResult:
    """What a worker sends its parent when the run ends."""

    index: int
    connections: int
    established: int
    messages: int
    echoed: int
    unsent: int
    window_s: float
    cpu_s: float
    latency: bytes
    connect: bytes
    errors: dict[str, int] = field(default_factory=dict)
    # From the actual send rather than the due time; the same as ``latency`` in
    # closed loop, where a message is sent the moment it falls due.
    latency_uncorrected: bytes = b""
    # Echoes that completed in the drain after the window: not in the figures above.
    drained: int = 0
    drain_latency: bytes = b""
    window_start_wall: float = 0.0
    window_end_wall: float = 0.0
    loop: str = "selectors"

    @property
    def cpu_share(self) -> float:
        """The worker's CPU time over the window: 1.0 is one core fully used."""
        return self.cpu_s / self.window_s if self.window_s > 0 else 0.0


def merge_errors(results: list[WorkerResult]) -> dict[str, int]:
    total: dict[str, int] = {}
    for result in results:
        for kind, count in result.errors.items():
            total[kind] = total.get(kind, 0) + count
    return dict(sorted(total.items()))
