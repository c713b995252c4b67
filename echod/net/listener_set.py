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

from echod.net.activation import inherited_sockets
from echod.net.listeners import (
    Address,
    bind,
    close_all,
    parse_address,
    reserve,
    unix_paths,
)


@dataclass
class Listeners:
    """What start-up hands the serving process or the supervisor."""

    shared: list[socket.socket] = field(default_factory=list)
    per_worker: list[Address] = field(default_factory=list)  # each worker binds these
    reservations: list[socket.socket] = field(default_factory=list)
    owned_paths: list[str] = field(default_factory=list)  # Unix socket files to remove

    def bind_own(self, backlog: int) -> list[socket.socket]:
        """In a worker: its own SO_REUSEPORT sockets, then every socket it serves."""
        own = [bind(address, backlog, reuse_port=True) for address in self.per_worker]
        return [*self.shared, *own]

    def close(self) -> None:
        close_all([*self.shared, *self.reservations], remove=self.owned_paths)


def open_listeners(addresses: Sequence[str], backlog: int, *, per_worker: bool) -> Listeners:
    """Inherit systemd's sockets, or bind ``addresses`` (or reserve them, ``per_worker``).

    Raises :class:`~echod.net.listeners.ListenerError` with one line for the operator,
    having closed whatever it had opened.
    """
    listeners = Listeners()
    try:
        inherited = inherited_sockets()
        listeners.shared = [entry.sock for entry in inherited]
        if inherited:
            return listeners
        for text in addresses:
            address = parse_address(text)
            if per_worker and address.path is None and not address.datagram:  # UDP: shared
                reservation, resolved = reserve(address)
                listeners.reservations.append(reservation)
                listeners.per_worker.append(resolved)
            else:
                listeners.shared.append(bind(address, backlog))
    except BaseException:
        listeners.close()
        raise
    listeners.owned_paths = unix_paths(listeners.shared)
    return listeners
