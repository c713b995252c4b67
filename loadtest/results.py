"""The results file: one versioned JSON codec for --json, --json-stream and merge.

A result carries its histograms as encoded HDR histograms (the ``hdrh``
package's compressed base64 text), so results from several runs or hosts add up
exactly: percentiles are recomputed from the summed counts, never averaged.
"""

from __future__ import annotations

import json
import os
import sys
from typing import Any

from hdrh.histogram import HdrHistogram

from loadtest.stats import new_histogram

# Bump when a field changes meaning or goes away; adding a field keeps the number.
FORMAT = "echod-bench-result/1"
# Fields merge reads; a file without them is not a result it can add.
REQUIRED = (
    "format",
    "parameters",
    "window",
    "window_s",
    "connections",
    "messages",
    "bytes_echoed",
    "requests_per_s",
    "mb_per_s",
    "errors",
    "unsent",
    "histograms",
    "intervals",
    "workers",
    "warnings",
)


class ResultError(Exception):
    """A file that cannot be read as a result: the message is one line for the user."""


def histogram_text(encoded: bytes) -> str:
    return encoded.decode("ascii")


def decode_histogram(text: str) -> HdrHistogram:
    """The histogram a result holds; ValueError when the text is not one."""
    histogram = new_histogram()
    try:
        histogram.decode_and_add(text.encode("ascii"))
    except Exception as exc:  # hdrh raises bare errors of several kinds on bad input
        raise ValueError(f"not an encoded HDR histogram ({exc.__class__.__name__})") from None
    return histogram


def p99(histogram: HdrHistogram) -> int | None:
    if histogram.get_total_count() == 0:
        return None
    return int(histogram.get_value_at_percentile(99.0))


def interval_record(
    second: int,
    duration: float,
    messages: int,
    echoed: int,
    errors: dict[str, int],
    latency: HdrHistogram,
) -> dict[str, Any]:
    """One second of a run (or of several runs merged), as results and streams hold it."""
    return {
        "second": second,
        "duration_s": round(duration, 4),
        "messages": messages,
        "bytes": echoed,
        "requests_per_s": round(messages / duration, 1) if duration > 0 else 0.0,
        "errors": dict(sorted(errors.items())),
        "p99_us": p99(latency),
        "latency": histogram_text(latency.encode()),
    }


def dumps(figures: dict[str, Any]) -> str:
    return json.dumps(figures, indent=2) + "\n"


def unwritable(path: str) -> str | None:
    """Why a result could not be written to ``path``, asked before a run so that a
    typo in --json costs nothing instead of the whole run's figures."""
    if path == "-":
        return None
    target = os.path.abspath(path)
    directory = os.path.dirname(target)
    if os.path.isdir(target):
        return f"--json {path}: is a directory"
    if not os.path.isdir(directory):
        return f"--json {path}: no such directory {directory}"
    exists = os.path.exists(target)
    if not os.access(target if exists else directory, os.W_OK):
        return f"--json {path}: permission denied"
    return None


def write(path: str, figures: dict[str, Any]) -> None:
    """``-`` is stdout."""
    if path == "-":
        sys.stdout.write(dumps(figures))
        return
    with open(path, "w", encoding="utf-8") as out:
        out.write(dumps(figures))


def stream_line(event: str, data: dict[str, Any]) -> str:
    """One line of --json-stream, shaped as iperf3's: ``{"event": ..., "data": ...}``."""
    return json.dumps({"event": event, "data": data}, separators=(",", ":"))


def _stream_end(text: str) -> Any:
    """The result a --json-stream capture ends with; log lines after it (kubectl logs
    mixes in stderr, where the table goes) are passed over."""
    for line in reversed(text.splitlines()):
        try:
            event = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(event, dict) and event.get("event") == "end":
            return event.get("data")
    return None


def load(path: str) -> dict[str, Any]:
    """A result from a --json file or the last line of a --json-stream capture.

    Raises ResultError naming what is wrong, so merge can say it in one line.
    """
    try:
        with open(path, encoding="utf-8") as source:
            text = source.read()
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise ResultError(f"{path}: cannot read: {reason}") from None
    try:
        figures = json.loads(text)
    except json.JSONDecodeError:
        figures = _stream_end(text)
        if figures is None:
            raise ResultError(f"{path}: not JSON, so not an echod-bench result") from None
    if not isinstance(figures, dict) or "format" not in figures:
        raise ResultError(f"{path}: not an echod-bench result (no format field)")
    if figures["format"] != FORMAT:
        raise ResultError(
            f"{path}: result format {figures['format']!r}; this echod-bench reads {FORMAT!r}"
        )
    missing = [key for key in REQUIRED if key not in figures]
    if missing:
        raise ResultError(f"{path}: not a complete echod-bench result (no {missing[0]})")
    try:
        start, end = float(figures["window"]["start"]), float(figures["window"]["end"])
        for text_form in (figures["histograms"]["latency"], figures["histograms"]["connect"]):
            decode_histogram(text_form)
        for interval in figures["intervals"]:
            decode_histogram(interval["latency"])
    except (KeyError, TypeError, ValueError) as exc:
        raise ResultError(f"{path}: damaged echod-bench result: {exc}") from None
    if end < start:
        raise ResultError(f"{path}: damaged echod-bench result: its window ends before it starts")
    return figures
