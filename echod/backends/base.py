"""The interface every backend serves behind, and the housekeeping rules they share."""

from __future__ import annotations

import socket
from collections.abc import Iterable, Sequence
from typing import Protocol

from echod.config import Config
from echod.lifecycle import Lifecycle

# While draining after SIGTERM, a connection quiet this long with nothing left to echo
# has had everything it sent before the signal echoed back, so it may be closed.
DRAIN_QUIET = 1.0
# Sweeps per idle timeout: a connection is closed between 1 and 1.25 timeouts silent.
IDLE_SWEEPS = 4


class Backend(Protocol):
    """One IO model. ``serve`` runs until SIGTERM/SIGINT have been handled, then returns.

    It is handed listening sockets it did not make (bound by the CLI, inherited from
    systemd, or one SO_REUSEPORT socket per worker) and reports to ``lifecycle``.
    """

    name: str

    def serve(
        self, listeners: Sequence[socket.socket], config: Config, lifecycle: Lifecycle
    ) -> None: ...


class Sweepable(Protocol):
    """A connection as the idle sweep sees it."""

    idle_ticks: int

    def has_pending(self) -> bool: ...
    def close(self) -> None: ...


def sweep(connections: Iterable[Sweepable], ticks: int, only_drained: bool) -> None:
    """Close connections silent for ``ticks`` sweeps; a read resets a connection's count.

    Counting sweeps instead of stamping each read with the clock keeps the hot path to
    one store; the price is a close up to one sweep interval late.
    """
    for conn in list(connections):
        conn.idle_ticks += 1
        if conn.idle_ticks >= ticks and not (only_drained and conn.has_pending()):
            conn.close()
