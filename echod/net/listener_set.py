"""Every listener echod will serve, made in one step before any process is forked.

Three sources, one result: sockets inherited from systemd (they belong to the socket
unit: always shared, paths never unlinked), sockets bound here and shared by every
serving process, and TCP addresses each worker binds for itself with SO_REUSEPORT
(held meanwhile by a :func:`~echod.net.listeners.reserve` reservation).
"""

from __future__ import annotations

import socket
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from echod.net.activation import inherited_sockets
from echod.net.listeners import (
    Address,
    ListenerError,
    ListeningSocket,
    bind,
    close_all,
    parse_address,
    reserve,
    unix_paths,
)

if TYPE_CHECKING:
    from echod.tls import TlsEndpoint

METRICS_FD_NAME = "metrics"  # FileDescriptorName= of echod-metrics.socket
METRICS_BACKLOG = 64  # scrapers are few; the endpoint caps how many it serves at once


@dataclass
class Listeners:
    """What start-up hands the serving process or the supervisor."""

    shared: list[socket.socket] = field(default_factory=list)
    per_worker: list[Address] = field(default_factory=list)  # each worker binds these
    reservations: list[socket.socket] = field(default_factory=list)
    owned_paths: list[str] = field(default_factory=list)  # Unix socket files to remove
    # --metrics, or systemd's socket named METRICS_FD_NAME: served by the supervisor alone.
    metrics: socket.socket | None = None
    # What every tls: listener wraps its connections with (one per process).
    tls: TlsEndpoint | None = None

    def bind_own(self, backlog: int) -> list[socket.socket]:
        """In a worker: its own SO_REUSEPORT sockets, then every socket it serves."""
        own = [
            self.layered(bind(address, backlog, reuse_port=True), address)
            for address in self.per_worker
        ]
        return [*self.shared, *own]

    def layered(self, sock: socket.socket, address: Address) -> socket.socket:
        """``sock`` with what ``address``'s prefixes ask for (tls:)."""
        if address.tls and isinstance(sock, ListeningSocket):
            sock.tls = self.tls
        return sock

    def close(self) -> None:
        metrics = [self.metrics] if self.metrics is not None else []
        close_all([*self.shared, *self.reservations, *metrics], remove=self.owned_paths)


def is_tls_name(name: str) -> bool:
    """``FileDescriptorName=tls`` or ``tls-NAME``: the --listen prefix ``tls:`` as a
    name can spell it (systemd refuses ':' in names, its LISTEN_FDNAMES separator)."""
    return name == "tls" or name.startswith("tls-")


def open_listeners(
    addresses: Sequence[str],
    backlog: int,
    *,
    per_worker: bool,
    metrics: str | None = None,
    tls: TlsEndpoint | None = None,
) -> Listeners:
    """Inherit systemd's sockets, or bind ``addresses`` (or reserve them, ``per_worker``).

    An inherited socket named ``tls`` or ``tls-...`` (``FileDescriptorName=``) serves
    TLS with ``tls``. Raises
    :class:`~echod.net.listeners.ListenerError` with one line for the operator, having
    closed whatever it had opened.
    """
    listeners = Listeners(tls=tls)
    try:
        inherited = inherited_sockets()
        for entry in inherited:
            if entry.name == METRICS_FD_NAME and listeners.metrics is None:
                listeners.metrics = entry.sock
            elif is_tls_name(entry.name):
                if tls is None:
                    raise ListenerError(
                        f"inherited socket {entry.name!r} serves TLS: give --tls-cert"
                    )
                listeners.shared.append(listeners.layered(entry.sock, Address(tls=True)))
            else:
                listeners.shared.append(entry.sock)
        if listeners.metrics is None and metrics is not None:
            listeners.metrics = bind(parse_address(metrics), METRICS_BACKLOG)
            listeners.owned_paths = unix_paths([listeners.metrics])
        if inherited:
            return listeners
        for text in addresses:
            address = parse_address(text)
            if per_worker and address.path is None and not address.datagram:  # UDP: shared
                reservation, resolved = reserve(address)
                listeners.reservations.append(reservation)
                listeners.per_worker.append(resolved)
            else:
                listeners.shared.append(listeners.layered(bind(address, backlog), address))
    except BaseException:
        listeners.close()
        raise
    listeners.owned_paths += unix_paths(listeners.shared)
    return listeners
