"""Every listener echod serves, held by the process that outlives its workers.

One function makes them, from three sources: sockets inherited from systemd (they
belong to the socket unit: served as they are, paths never unlinked), sockets an earlier
echod handed on (an upgrade, or systemd's file descriptor store after a restart) or
that this one already holds (a reload), and addresses bound here. Each socket has the
``FDNAME`` it is handed on with, which says what it is:

``echod.shared``
    a TCP or Unix socket every worker accepts on (one queue);
``echod.reuseport.K``
    worker slot K's own ``SO_REUSEPORT`` socket; the worker in slot K inherits it, and
    so does the worker that replaces it, so its accept queue survives the replacement;
``echod.udp``
    a UDP socket every worker answers on;
``metrics``
    the Prometheus endpoint, served by the supervisor alone.

A ``tls:`` listener's name ends in ``.tls`` (a socket unit's is ``tls`` or ``tls-NAME``):
the name carries what the socket serves, so new code takes it back as TLS.

Every TCP socket bound here has ``SO_REUSEPORT``, shared ones too, so a reload that
changes the listen mode can bind the new sockets beside the old ones while the old
workers drain: no moment without a listener.
"""

from __future__ import annotations

import socket
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING

from echod.net.addresses import Address, ListenerError, parse_address
from echod.net.listeners import ListeningSocket, bind, close_all, tls_of, unix_paths

if TYPE_CHECKING:
    from echod.tls import TlsEndpoint

METRICS_FD_NAME = "metrics"  # FileDescriptorName= of echod-metrics.socket
METRICS_BACKLOG = 64  # scrapers are few; the endpoint caps how many it serves at once
OWN_PREFIX = "echod."  # names echod gives; anything else came from a socket unit
SHARED = "echod.shared"
UDP = "echod.udp"
REUSEPORT = "echod.reuseport."
TLS_SUFFIX = ".tls"


@dataclass(frozen=True)
class Named:
    """A listening socket and the FDNAME it is handed on with."""

    sock: socket.socket
    name: str


def slot_name(slot: int) -> str:
    return f"{REUSEPORT}{slot}"


@dataclass
class Listeners:
    """What start-up (or a reload) hands the serving process or the supervisor."""

    shared: list[Named] = field(default_factory=list)  # every worker serves these
    slots: dict[int, list[Named]] = field(default_factory=dict)  # reuseport: slot K's own
    metrics: Named | None = None  # served by the supervisor alone
    owned_paths: list[str] = field(default_factory=list)  # Unix socket files to remove
    from_systemd: bool = False  # a socket unit's: served as given, never rebound
    # What every tls: listener wraps its connections with (one per configuration).
    tls: TlsEndpoint | None = None

    @property
    def per_worker(self) -> bool:
        return bool(self.slots)

    @property
    def serve_tls(self) -> bool:
        """Whether any listener wraps its connections in TLS."""
        return any(tls_of(named.sock) is not None for named in self)

    def for_slot(self, slot: int | None) -> list[socket.socket]:
        """The sockets the worker in ``slot`` serves (None: a single serving process)."""
        own = self.slots.get(slot, []) if slot is not None else []
        return [named.sock for named in (*self.shared, *own)]

    def __iter__(self) -> Iterator[Named]:
        yield from self.shared
        for sockets in self.slots.values():
            yield from sockets
        if self.metrics is not None:
            yield self.metrics

    def close(self, *, remove_paths: bool = True) -> None:
        """Close every socket; ``remove_paths=False`` when a successor serves them."""
        close_all([named.sock for named in self], remove=self.owned_paths if remove_paths else ())

    def layer(self) -> None:
        """Give every TLS listener this configuration's endpoint. The socket objects are
        the supervisor's, kept across reloads: workers forked from now on take the new
        endpoint, those forked before keep theirs (a reload that fails layers back)."""
        for named in self:
            if is_tls_name(named.name) and isinstance(named.sock, ListeningSocket):
                named.sock.tls = self.tls


def is_tls_name(name: str) -> bool:
    """``FileDescriptorName=tls`` or ``tls-NAME``, the --listen prefix ``tls:`` as a
    socket unit can spell it (systemd refuses ':' in names, its LISTEN_FDNAMES
    separator), or one of echod's own names for a tls: listener."""
    return (
        name == "tls"
        or name.startswith("tls-")
        or name.endswith(TLS_SUFFIX)
        or (name.startswith("proxy-") and name.endswith("+tls"))
    )


def open_listeners(
    addresses: Sequence[str],
    backlog: int,
    *,
    slots: int = 0,
    metrics: str | None = None,
    available: Sequence[Named] = (),
    tls: TlsEndpoint | None = None,
) -> tuple[Listeners, list[Named]]:
    """The listeners for ``addresses``, and those of ``available`` left unused.

    ``slots`` is the number of reuseport sockets per TCP address (0: one shared
    socket). ``available`` are sockets inherited or already held: one is taken where
    its name and address fit, and a socket is bound for the rest. With a socket unit's
    sockets among them, those are served as they are and ``addresses`` are unused.
    TLS listeners carry ``tls`` (:meth:`Listeners.layer`). Raises
    :class:`~echod.net.addresses.ListenerError` with one line for the operator, having
    closed what it bound (never what it was handed).
    """
    if any(not _is_own(named.name) for named in available):
        listeners = _from_socket_units(available)
        listeners.tls = tls
        _check_tls(listeners)
        listeners.layer()
        return listeners, []
    pool = list(available)
    listeners = Listeners(tls=tls)
    bound: list[socket.socket] = []
    try:
        if metrics is not None:
            address = parse_address(metrics)
            listeners.metrics = _take(pool, METRICS_FD_NAME, address) or _bind(
                bound, METRICS_FD_NAME, address, METRICS_BACKLOG
            )
        for text in addresses:
            address = parse_address(text)
            suffix = TLS_SUFFIX if address.tls else ""
            if address.datagram:
                listeners.shared.append(_take(pool, UDP, address) or _bind(bound, UDP, address))
            elif slots and address.path is None:
                for slot in range(1, slots + 1):
                    name = slot_name(slot) + suffix
                    named = _take(pool, name, address) or _bind(bound, name, address, backlog)
                    # Port 0 is resolved by the first slot; the others join its group.
                    address = replace(address, port=named.sock.getsockname()[1])
                    listeners.slots.setdefault(slot, []).append(_speaks(named, address))
            else:
                name = SHARED + suffix
                named = _take(pool, name, address) or _bind(bound, name, address, backlog)
                listeners.shared.append(_speaks(named, address))
        _check_tls(listeners)
    except BaseException:
        close_all(bound)
        raise
    listeners.owned_paths = unix_paths(bound)
    listeners.layer()
    return listeners, pool


def _speaks(named: Named, address: Address) -> Named:
    """What the configuration says a kept socket's clients send first (a PROXY header):
    a socket taken back from an earlier echod is a plain one until told."""
    if isinstance(named.sock, ListeningSocket):
        named.sock.proxy_version = address.proxy
    return named


def _check_tls(listeners: Listeners) -> None:
    if listeners.tls is None:
        for named in listeners:
            if is_tls_name(named.name):
                raise ListenerError(f"inherited socket {named.name!r} serves TLS: give --tls-cert")


def _is_own(name: str) -> bool:
    return name.startswith(OWN_PREFIX) or name == METRICS_FD_NAME


def _from_socket_units(available: Sequence[Named]) -> Listeners:
    listeners = Listeners(from_systemd=True)
    for named in available:
        if named.name == METRICS_FD_NAME and listeners.metrics is None:
            listeners.metrics = named
        else:
            listeners.shared.append(named)
    return listeners


def _take(pool: list[Named], name: str, address: Address) -> Named | None:
    """The socket of ``pool`` with this name that is bound where ``address`` says."""
    for named in pool:
        if named.name == name and _bound_at(named.sock, address):
            pool.remove(named)
            return named
    return None


def _bound_at(sock: socket.socket, address: Address) -> bool:
    here = sock.getsockname()
    if address.path is not None:
        return bool(here == address.path)
    if address.datagram != (sock.type == socket.SOCK_DGRAM):
        return False
    host, port = here[0], here[1]
    if address.port not in (0, port):
        return False
    try:
        wanted = socket.getaddrinfo(address.host, address.port or port, flags=socket.AI_PASSIVE)
    except OSError:
        return False
    return any(info[4][0] == host for info in wanted)


def _bind(bound: list[socket.socket], name: str, address: Address, backlog: int = 0) -> Named:
    tcp = not address.datagram and address.path is None
    sock = bind(address, backlog, reuse_port=tcp)
    bound.append(sock)
    return Named(sock, name)
