"""Whether a datagram may be answered: the reflection and loop guards, without IO.

UDP echo is the classic abuse case (CERT CA-1996-01): a spoofed source turns the
server into a reflector, and echo pointed at another echo or chargen loops forever.
Each datagram passes, in order of cost:

1. the source port: below 1024 (every well-known service, 0 included), one of the
   listed reflectors (``--udp-refuse-ports``), or one of echod's own listening ports
   (another echod: a loop);
2. the source endpoint: the listener's own address and port;
3. the source address: broadcast, multicast or unspecified (never a real sender),
   then ``--deny`` and ``--allow`` (:class:`echod.admission.AccessRules`, as for TCP);
4. a token bucket per source address, in datagrams and bytes per second, kept in a
   table of fixed size: when it is full a new source takes over the bucket of the
   least recently seen one (with what tokens it had left, not a fresh burst);
5. a global budget of answered bytes per second, so a flood from more spoofed sources
   than the table holds still cannot make echod send more than that.

Everything here takes plain values (host, port, size, the time), so the rules are
unit-tested without sockets, and every backend that serves UDP applies the same ones.
"""

from __future__ import annotations

import enum
import ipaddress
from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass, field

from echod.admission import AccessRules, peer_address

# Well-known UDP reflectors and amplifiers above 1024 or worth naming anyway: DNS,
# NTP, SNMP, CLDAP, SSDP, mDNS, memcached (US-CERT TA14-017A).
DEFAULT_REFUSED_PORTS = (53, 123, 161, 389, 1900, 5353, 11211)
# Source ports below this are refused: RFC 862 echo (7), discard, daytime, chargen,
# time and every other service a spoofed datagram could make us talk to.
PRIVILEGED_PORTS = 1024


class Refusal(enum.Enum):
    """Why a datagram was not answered; the value names its counter."""

    DENIED = "denied"
    LOW_PORT = "low-port"
    LISTED_PORT = "listed-port"
    OWN_PORT = "own-port"
    SELF = "self"
    ADDRESS = "address"
    RATE = "rate"
    BUDGET = "budget"


REASONS = {
    Refusal.DENIED: "source denied (--deny/--allow)",
    Refusal.LOW_PORT: f"source port below {PRIVILEGED_PORTS}",
    Refusal.LISTED_PORT: "source port is a known reflector (--udp-refuse-ports)",
    Refusal.OWN_PORT: "source port is one of echod's own listening ports (echo loop)",
    Refusal.SELF: "source is the listener's own address and port",
    Refusal.ADDRESS: "source address is broadcast, multicast or unspecified",
    Refusal.RATE: "source over its rate (--udp-rate)",
    Refusal.BUDGET: "global answer budget spent (--udp-budget)",
}


@dataclass(frozen=True)
class GuardSettings:
    """The knobs of :class:`Guard`; zero turns a rate or the budget off."""

    packets_per_second: float = 100.0
    bytes_per_second: float = 1 << 20
    burst_seconds: float = 2.0
    budget_bytes_per_second: float = 8 << 20
    sources: int = 4096
    refused_ports: frozenset[int] = frozenset(DEFAULT_REFUSED_PORTS)
    rules: AccessRules = field(default_factory=AccessRules)  # --deny, then --allow


@dataclass
class UdpCounters:
    """What the datagram side of one process did; reported with the TCP counters."""

    received: int = 0
    echoed: int = 0
    bytes_echoed: int = 0
    dropped: int = 0  # answers the kernel would not take (EAGAIN, ENOBUFS, EMSGSIZE)
    refused: dict[Refusal, int] = field(default_factory=lambda: dict.fromkeys(Refusal, 0))
    sources: int = 0  # entries in the rate table right now

    # Words of :meth:`encode`: the counters that add up across worker processes.
    WORDS = 4 + len(Refusal) + 1

    def encode(self) -> list[str]:
        """The counters as words, for the worker's stats line to its supervisor."""
        counts = [self.received, self.echoed, self.bytes_echoed, self.dropped]
        return [str(n) for n in [*counts, *self.refused.values(), self.sources]]

    @classmethod
    def decode(cls, words: list[str]) -> UdpCounters:
        numbers = [int(word) for word in words]
        if len(numbers) != cls.WORDS:
            raise ValueError(f"not UDP counters: {' '.join(words)!r}")
        received, echoed, bytes_echoed, dropped = numbers[:4]
        refused = dict(zip(Refusal, numbers[4:-1], strict=True))
        return cls(received, echoed, bytes_echoed, dropped, refused, numbers[-1])

    def add(self, other: UdpCounters) -> None:
        self.received += other.received
        self.echoed += other.echoed
        self.bytes_echoed += other.bytes_echoed
        self.dropped += other.dropped
        for reason, count in other.refused.items():
            self.refused[reason] += count
        self.sources += other.sources

    def summary(self) -> str:
        refused = " ".join(f"{reason.value}={n}" for reason, n in self.refused.items())
        return (
            f"udp in={self.received} echoed={self.echoed} dropped={self.dropped} "
            f"refused {refused} sources={self.sources}"
        )


def classify_address(host: str) -> bool:
    """True if ``host`` can be a genuine sender (not broadcast, multicast, unspecified)."""
    try:
        address = ipaddress.ip_address(host.partition("%")[0])
    except ValueError:
        return False
    if isinstance(address, ipaddress.IPv6Address):
        if address.is_multicast or address.is_unspecified:
            return False
        mapped = address.ipv4_mapped
        if mapped is None:
            return True
        address = mapped
    # 0.0.0.0/8 is "this network" (RFC 1122): a source only while booting, never ours
    # to answer; 255.255.255.255 is the limited broadcast.
    return not (
        address.is_multicast
        or address.packed[0] == 0
        or address == ipaddress.IPv4Address("255.255.255.255")
    )


class TokenBucket:
    """Tokens that refill at ``rate`` per second up to ``capacity``."""

    __slots__ = ("capacity", "last", "rate", "tokens")

    def __init__(self, rate: float, capacity: float, now: float) -> None:
        self.rate = rate
        self.capacity = capacity
        self.tokens = capacity
        self.last = now

    def refill(self, now: float) -> float:
        elapsed = now - self.last
        if elapsed > 0:
            self.tokens = min(self.capacity, self.tokens + elapsed * self.rate)
            self.last = now
        return self.tokens


class Guard:
    """The refusal rules for one serving process's datagram listeners.

    ``check`` is called once per datagram and returns None (answer it) or the
    :class:`Refusal`; an answer it allows has already been charged to the buckets.
    """

    def __init__(
        self,
        settings: GuardSettings,
        own_endpoints: Iterable[tuple[str, int]] = (),
        own_ports: Iterable[int] = (),
        counters: UdpCounters | None = None,
    ) -> None:
        self.settings = settings
        self.counters = counters if counters is not None else UdpCounters()
        self.own_ports = frozenset(own_ports)
        self.own_endpoints = frozenset(own_endpoints)
        self.refused_ports = settings.refused_ports
        pps = settings.packets_per_second
        bps = settings.bytes_per_second
        # A bucket never smaller than one datagram of each kind it must let through.
        self.packet_capacity = max(pps * settings.burst_seconds, 1.0)
        self.byte_capacity = max(bps * settings.burst_seconds, 65_535.0)
        self.limit_rate = pps > 0 or bps > 0
        # Each source: [datagram tokens, byte tokens, last refill]; in LRU order.
        self.table: OrderedDict[str, list[float]] = OrderedDict()
        budget = settings.budget_bytes_per_second
        self.budget = (
            TokenBucket(budget, max(budget, 65_535.0), float("-inf")) if budget > 0 else None
        )

    def check(self, host: str, port: int, size: int, now: float) -> Refusal | None:
        refusal = self._refusal(host, port, size, now)
        if refusal is not None:
            self.counters.refused[refusal] += 1
        return refusal

    def _refusal(self, host: str, port: int, size: int, now: float) -> Refusal | None:
        if port < PRIVILEGED_PORTS:
            return Refusal.LOW_PORT
        if (host, port) in self.own_endpoints:
            return Refusal.SELF
        if port in self.own_ports:
            return Refusal.OWN_PORT
        if port in self.refused_ports:
            return Refusal.LISTED_PORT
        table = self.table
        entry = table.get(host)
        if entry is None:
            # Only a source seen for the first time (or evicted) is parsed: a source in
            # the table has passed this already (a denied one never enters it).
            if not classify_address(host):
                return Refusal.ADDRESS
            rules = self.settings.rules
            if rules and not rules.permits(peer_address(host)):
                return Refusal.DENIED
            # Kept even with no limit to apply: the entry saves parsing the address
            # again (measured: parsing every datagram cost more than the buckets).
            if len(table) < self.settings.sources:
                entry = [self.packet_capacity, self.byte_capacity, now]
            else:
                # Full: the new source takes over the least recently seen one's bucket,
                # tokens and all, instead of a full one. A flood from more sources than
                # the table holds then gets no fresh burst per source it cycles through:
                # however many sources, the table's tokens grow by at most its size
                # times the rate, per second.
                entry = table.popitem(last=False)[1]
            table[host] = entry
            self.counters.sources = len(table)
        else:
            table.move_to_end(host)
        settings = self.settings
        if self.limit_rate:
            elapsed = now - entry[2]
            if elapsed > 0:
                entry[0] = min(
                    self.packet_capacity, entry[0] + elapsed * settings.packets_per_second
                )
                entry[1] = min(self.byte_capacity, entry[1] + elapsed * settings.bytes_per_second)
                entry[2] = now
            if (settings.packets_per_second > 0 and entry[0] < 1.0) or (
                settings.bytes_per_second > 0 and entry[1] < size
            ):
                return Refusal.RATE
        budget = self.budget
        if budget is not None and budget.refill(now) < size:
            return Refusal.BUDGET
        if self.limit_rate:
            entry[0] -= 1.0
            entry[1] -= size
        if budget is not None:
            budget.tokens -= size
        return None


class RefusalLog:
    """Which refusals deserve a log line: the first of each reason per ``interval``.

    A flood must not become a flood of log lines, yet the operator needs to see which
    source is refused and why; keys are the few reasons, so memory stays fixed. Returns
    the line to log, naming the source and how many were held back, or None.
    """

    def __init__(self, interval: float = 10.0) -> None:
        self.interval = interval
        self._last: dict[Refusal, float] = {}
        self._held: dict[Refusal, int] = dict.fromkeys(Refusal, 0)

    def line(self, refusal: Refusal, host: str, port: int, now: float) -> str | None:
        last = self._last.get(refusal)
        if last is not None and now - last < self.interval:
            self._held[refusal] += 1
            return None
        self._last[refusal] = now
        held, self._held[refusal] = self._held[refusal], 0
        source = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        more = f" ({held} more refused for this reason since the last line)" if held else ""
        return f"udp: refused datagram from {source}: {REASONS[refusal]}{more}"
