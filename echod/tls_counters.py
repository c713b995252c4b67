"""TLS handshake counters of one serving process, and their words on a worker's pipe.

Apart from :mod:`echod.tls` so that the counters' codec (lifecycle, metrics) never
imports ``ssl``.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

FAILURE_REASONS = (
    "protocol_version",
    "no_shared_cipher",
    "bad_certificate",
    "unexpected_record",
    "timeout",
    "other",
)


@dataclass
class TlsCounters:
    """Handshakes by (version, cipher) and failures by reason, of one serving process."""

    handshakes: dict[tuple[str, str], int] = field(default_factory=dict)
    failures: dict[str, int] = field(default_factory=dict)

    def handshake(self, version: str | None, cipher: str | None) -> None:
        key = (version or "unknown", cipher or "unknown")
        self.handshakes[key] = self.handshakes.get(key, 0) + 1

    def failed(self, reason: str) -> None:
        self.failures[reason] = self.failures.get(reason, 0) + 1

    def add(self, other: TlsCounters) -> None:
        for key, count in other.handshakes.items():
            self.handshakes[key] = self.handshakes.get(key, 0) + count
        for reason, count in other.failures.items():
            self.failures[reason] = self.failures.get(reason, 0) + count

    def summary(self) -> str:
        return f"tls handshakes={self.total} failed={sum(self.failures.values())}"

    def encode(self) -> list[str]:
        """Words for a worker's STATS line: ``h:VERSION:CIPHER=N`` and ``f:REASON=N``."""
        words = [f"h:{v}:{c}={n}" for (v, c), n in sorted(self.handshakes.items())]
        return words + [f"f:{reason}={n}" for reason, n in sorted(self.failures.items())]

    @classmethod
    def decode(cls, words: Iterable[str]) -> TlsCounters:
        counters = cls()
        for word in words:
            key, sep, number = word.rpartition("=")
            kind, _, rest = key.partition(":")
            if not sep or not number.isdigit() or kind not in ("h", "f"):
                raise ValueError(f"not a TLS counter: {word!r}")
            if kind == "h":
                tls_version, _, cipher = rest.partition(":")
                counters.handshakes[(tls_version, cipher)] = int(number)
            else:
                counters.failures[rest] = int(number)
        return counters

    @property
    def total(self) -> int:
        return sum(self.handshakes.values())
