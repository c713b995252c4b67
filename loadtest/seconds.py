"""Per-second figures of a run, assembled from the intervals every worker sends.

A second is complete once each worker has sent it; --json-stream prints it then,
and the result keeps them all.
"""

from __future__ import annotations

from typing import Any

from loadtest.results import interval_record
from loadtest.stats import Interval, merge


class Seconds:
    """Intervals in, one record per whole second of the window out."""

    def __init__(self, workers: int, duration: float) -> None:
        self.workers = workers
        self.duration = duration
        self.pending: dict[int, list[Interval]] = {}
        self.complete: dict[int, dict[str, Any]] = {}

    def add(self, interval: Interval) -> dict[str, Any] | None:
        """Take one worker's interval; return the second's record once it is complete."""
        parts = self.pending.setdefault(interval.second, [])
        parts.append(interval)
        if len(parts) < self.workers:
            return None
        del self.pending[interval.second]
        record = self._record(interval.second, parts)
        self.complete[interval.second] = record
        return record

    def _record(self, second: int, parts: list[Interval]) -> dict[str, Any]:
        errors: dict[str, int] = {}
        for part in parts:
            for kind, count in part.errors.items():
                errors[kind] = errors.get(kind, 0) + count
        # Seconds are nominal: the last one is what --duration leaves of it.
        duration = max(min(1.0, self.duration - second), 0.0)
        return interval_record(
            second,
            duration,
            sum(p.messages for p in parts),
            sum(p.bytes for p in parts),
            errors,
            merge([p.latency for p in parts]),
        )

    def records(self) -> list[dict[str, Any]]:
        """Every second, in order; one a worker never finished holds what the others sent."""
        for second, parts in list(self.pending.items()):
            self.complete[second] = self._record(second, parts)
        self.pending.clear()
        return [self.complete[s] for s in sorted(self.complete)]
