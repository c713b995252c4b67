"""Who may connect, and how much: the admission rules, without IO.

Every TCP connection the serving core accepts passes these rules once, before any byte
of it is read, in this order (cheapest and most final first):

1. ``--deny``: a source in a denied network is refused;
2. ``--allow``: when the list is given, a source outside every allowed network is
   refused;
3. ``--max-connections-per-source``: a source already holding that many is refused;
4. ``--connect-rate-per-source``: a token bucket per source (``--connect-burst-per-source``
   seconds of the rate at most), charged only by a connection that passed 1-3;
5. fair share, only while the process is full (at ``--max-connections``, or out of
   descriptors): a source holding fewer than ``slots / sources holding connections``
   (the newcomer counted) takes the slot of the longest-idle connection that owes
   nothing from the source holding the most; any other is refused.

Refused connections are closed with a reset by the core. A source is its address for
IPv4 (IPv4-mapped IPv6 addresses are unmapped first: a dual-stack ``::`` listener sees
them), and its ``--source-prefix-v6`` prefix for IPv6, so one /64 cannot pose as 2^64
sources. Unix-socket peers are exempt from 1-4 (file permissions guard them) and count
as one source, ``unix``, for fair share.

The source table has one entry per source holding a connection, never evicted (there
are at most as many as connections, which the slots and the descriptors bound), and,
only when a connect rate is set, at most ``quiet_capacity`` entries of sources that
hold none (their buckets), in least-recently-seen order: once that is full, a new
source takes over the least recently seen bucket, tokens and all, so cycling through
addresses earns no fresh burst. Measured with tracemalloc: about 350 B per bucket-only
entry and 430-480 B per source holding a connection (tests/unit/test_admission.py has
the bound; the figures are in the commit that set ``QUIET_SOURCES``).

Limits are per process: with ``--workers`` each worker keeps its own table (see
docs/admission.md for what a source gains from the kernel's hashing).
"""

from __future__ import annotations

import enum
import ipaddress
from collections import OrderedDict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Generic, Protocol, TypeVar

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

# Every Unix-socket peer, as one source for fair share.
UNIX = "unix"
# Buckets of sources holding no connection kept for --connect-rate-per-source: a
# bound on memory whatever the number of sources (as --udp-sources is for UDP).
QUIET_SOURCES = 16_384
# Connections of the heaviest source looked at, oldest first, for one that may give way:
# enough to step over a few busy ones, few enough that a refusal stays cheap.
VICTIM_SCAN = 64


class Refusal(enum.Enum):
    """Why a connection was refused; the value is its metrics label."""

    DENIED = "denied"
    PER_SOURCE = "per_source"
    CONNECT_RATE = "connect_rate"
    FULL = "full"  # full, and its source at or above its fair share (or none gave way)
    PROXY_PEER = "proxy_peer"
    PROXY_HEADER = "proxy_header"


REASONS = {
    Refusal.DENIED: "source denied (--deny/--allow)",
    Refusal.PER_SOURCE: "source holds --max-connections-per-source already",
    Refusal.CONNECT_RATE: "source over --connect-rate-per-source",
    Refusal.FULL: "full, and the source holds its fair share already",
    Refusal.PROXY_PEER: "peer not in --proxy-from",
    Refusal.PROXY_HEADER: "bad or missing PROXY protocol header",
}


def network(text: str) -> IPNetwork:
    """A CIDR (``10.0.0.0/8``, ``2001:db8::/32``) or one address; ValueError otherwise."""
    net = ipaddress.ip_network(text.strip(), strict=False)
    if isinstance(net, ipaddress.IPv6Network) and net.network_address.ipv4_mapped is not None:
        # ::ffff:10.0.0.0/104 means 10.0.0.0/8, which is how such peers are checked.
        mapped = net.network_address.ipv4_mapped
        return ipaddress.IPv4Network((mapped, max(net.prefixlen - 96, 0)))
    return net


def peer_address(host: str) -> IPAddress | None:
    """A peer's IP address as the rules see it (IPv4-mapped unmapped); None if not IP."""
    try:
        address = ipaddress.ip_address(host.partition("%")[0])
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def source_key(address: IPAddress | None, prefix_v6: int = 64) -> str:
    """The source a peer counts as: its IPv4 address, its IPv6 prefix, or ``unix``."""
    if address is None:
        return UNIX
    if isinstance(address, ipaddress.IPv4Address):
        return str(address)
    shift = 128 - prefix_v6
    base = ipaddress.IPv6Address(int(address) >> shift << shift)
    return f"{base}/{prefix_v6}"


class AccessRules:
    """``--deny`` then ``--allow``: whether an address may connect (TCP) or be answered
    (UDP). An empty allow list allows everyone not denied."""

    __slots__ = ("allow", "deny")

    def __init__(self, allow: Iterable[IPNetwork] = (), deny: Iterable[IPNetwork] = ()) -> None:
        self.allow = tuple(allow)
        self.deny = tuple(deny)

    def __bool__(self) -> bool:
        return bool(self.allow or self.deny)

    def permits(self, address: IPAddress | None) -> bool:
        if address is None:
            return True  # a Unix peer: file permissions decide
        if any(address in net for net in self.deny):
            return False
        return not self.allow or any(address in net for net in self.allow)


@dataclass(frozen=True)
class AdmissionSettings:
    """The knobs of :class:`Admission`; zero turns a limit off."""

    rules: AccessRules = field(default_factory=AccessRules)
    per_source: int = 0
    connect_rate: float = 0.0  # new connections per second per source
    connect_burst: float = 2.0  # seconds of ``connect_rate`` a quiet source may use at once
    prefix_v6: int = 64
    fair_share: bool = True


class Idle(Protocol):
    """A connection as fair share sees it: sweeps count up, a read resets to zero."""

    idle_ticks: int


H = TypeVar("H", bound=Idle)


class Source(Generic[H]):
    """One source: its open connections (oldest first) and its connect-rate bucket."""

    __slots__ = ("connections", "key", "last", "tokens")

    def __init__(self, key: str, tokens: float, last: float) -> None:
        self.key = key
        self.connections: dict[H, None] = {}
        self.tokens = tokens
        self.last = last


class Admission(Generic[H]):
    """The admission rules and the source table of one serving process.

    The core asks :meth:`refusal` for each accepted connection (and :meth:`victim` when
    it is full), then reports what it admitted with :meth:`add` and what closed with
    :meth:`remove`. Handles are the core's connection objects, held as opaque keys.
    :meth:`add` hands back the connection's :class:`Source`, which the core keeps with
    the connection and gives back to :meth:`remove`: a map from every connection to its
    source here would cost each idle connection a dict entry more.
    """

    def __init__(
        self, settings: AdmissionSettings, slots: int, quiet_capacity: int = QUIET_SOURCES
    ) -> None:
        self.settings = settings
        self.slots = slots  # connections the process may hold: the fair share's numerator
        self.quiet_capacity = max(quiet_capacity, 1)
        self.rate_capacity = max(settings.connect_rate * settings.connect_burst, 1.0)
        self.holding: dict[str, Source[H]] = {}  # sources with open connections
        self.quiet: OrderedDict[str, Source[H]] = OrderedDict()  # buckets only, LRU first
        self.held = 0  # connections added and not yet removed
        # Sources by how many connections they hold, to find the heaviest in O(1).
        self.by_count: dict[int, dict[str, None]] = {}
        self.most = 0
        # Rules 1-4 all off (the default): refusal() has nothing to check.
        self.checks = bool(settings.rules or settings.per_source or settings.connect_rate > 0)

    @property
    def sources(self) -> int:
        return len(self.holding) + len(self.quiet)

    def key(self, host: str | None) -> tuple[str, IPAddress | None]:
        """The source key and address of a peer's host (None: a Unix peer).

        An IPv4 peer's text (as accept() gives it, or unmapped from ``::ffff:``) is its
        key: parsing it costs more than the rest of a refusal (measured 15 of 85 µs
        under a connect flood), so it is parsed only when allow or deny need it.
        """
        if host is None:
            return UNIX, None
        key = host.removeprefix("::ffff:")
        if "." in key and ":" not in key:
            return key, (ipaddress.IPv4Address(key) if self.settings.rules else None)
        address = peer_address(host)
        return source_key(address, self.settings.prefix_v6), address

    # Deciding ------------------------------------------------------------------------
    def refusal(self, key: str, address: IPAddress | None, now: float) -> Refusal | None:
        """Rules 1-4 for a new connection; a connection they let through is charged."""
        if key == UNIX:
            return None
        settings = self.settings
        if settings.rules and not settings.rules.permits(address):
            return Refusal.DENIED
        source = self.holding.get(key)
        if (
            settings.per_source
            and source is not None
            and len(source.connections) >= settings.per_source
        ):
            return Refusal.PER_SOURCE
        if settings.connect_rate > 0:
            if source is None:
                source = self._quiet_source(key, now)
            elapsed = now - source.last
            if elapsed > 0:
                source.tokens = min(
                    self.rate_capacity, source.tokens + elapsed * settings.connect_rate
                )
                source.last = now
            if source.tokens < 1.0:
                return Refusal.CONNECT_RATE
            source.tokens -= 1.0
        return None

    def below_share(self, key: str, slots: int | None = None) -> bool:
        """Whether ``key`` holds fewer than ``slots / sources holding`` (itself counted)."""
        source = self.holding.get(key)
        held = 0 if source is None else len(source.connections)
        sources = len(self.holding) + (source is None)
        return held * sources < (self.slots if slots is None else slots)

    def victim(self, key: str, owes: Callable[[H], bool], slots: int | None = None) -> H | None:
        """Full: the connection that gives its slot to one from ``key``, or None (refuse).

        The longest-idle of the heaviest source's oldest ``VICTIM_SCAN`` connections that
        owes nothing (``owes``: output queued or input unread); only a source below its
        fair share may take one. ``slots`` replaces the configured slots (out of
        descriptors, the process is full at what it holds).
        """
        if not self.settings.fair_share or not self.below_share(key, slots):
            return None
        heaviest = self.heaviest()
        if heaviest is None or heaviest.key == key:
            return None
        best: H | None = None
        for scanned, conn in enumerate(heaviest.connections):
            if scanned >= VICTIM_SCAN:
                break
            if (best is None or conn.idle_ticks > best.idle_ticks) and not owes(conn):
                best = conn
        return best

    def heaviest(self) -> Source[H] | None:
        holders = self.by_count.get(self.most)
        if not holders:
            return None
        return self.holding[next(iter(holders))]

    # Tracking ------------------------------------------------------------------------
    def add(self, key: str, conn: H, now: float) -> Source[H]:
        """``conn`` from ``key`` was admitted; returns the source it counts against."""
        source = self.holding.get(key)
        if source is None:
            source = self.quiet.pop(key, None) or self._new_source(key, now)
            self.holding[key] = source
        count = len(source.connections)
        source.connections[conn] = None
        self.held += 1
        self._move(key, count, count + 1)
        return source

    def remove(self, conn: H, source: Source[H]) -> None:
        """``conn`` of ``source`` closed (or gave way); already removed is fine."""
        connections = source.connections
        if conn not in connections:
            return
        count = len(connections)
        del connections[conn]
        self.held -= 1
        self._move(source.key, count, count - 1)
        if count == 1:
            del self.holding[source.key]
            if self.settings.connect_rate > 0 and source.key != UNIX:
                self.quiet[source.key] = source  # seen last now: the newest quiet bucket
                self._trim()

    def _move(self, key: str, old: int, new: int) -> None:
        by_count = self.by_count
        if old:
            holders = by_count[old]
            del holders[key]
            if not holders:
                del by_count[old]
                if self.most == old and new < old:
                    self.most = new
        if new:
            by_count.setdefault(new, {})[key] = None
            if new > self.most:
                self.most = new

    def _quiet_source(self, key: str, now: float) -> Source[H]:
        source = self.quiet.get(key)
        if source is None:
            source = self._new_source(key, now)
            self.quiet[key] = source
        else:
            self.quiet.move_to_end(key)
        return source

    def _new_source(self, key: str, now: float) -> Source[H]:
        if self.settings.connect_rate <= 0:
            return Source(key, 0.0, now)
        if len(self.quiet) >= self.quiet_capacity:
            # Full: take over the least recently seen bucket with the tokens it has
            # left; a flood cycling through more sources than the table holds earns no
            # fresh burst per address.
            old = self.quiet.popitem(last=False)[1]
            return Source(key, old.tokens, old.last)
        return Source(key, self.rate_capacity, now)

    def _trim(self) -> None:
        while len(self.quiet) > self.quiet_capacity:
            self.quiet.popitem(last=False)


def settings_from(
    allow: Sequence[str],
    deny: Sequence[str],
    per_source: int,
    connect_rate: float,
    connect_burst: float,
    prefix_v6: int,
    fair_share: bool,
) -> AdmissionSettings:
    """Settings from the options' values (CIDRs already checked by the config)."""
    return AdmissionSettings(
        rules=AccessRules(map(network, allow), map(network, deny)),
        per_source=per_source,
        connect_rate=connect_rate,
        connect_burst=connect_burst,
        prefix_v6=prefix_v6,
        fair_share=fair_share,
    )
