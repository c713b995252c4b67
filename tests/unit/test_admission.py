"""The admission rules, driven with plain values: no sockets, no clock."""

from __future__ import annotations

import ipaddress

import pytest
from hypothesis import given
from hypothesis import strategies as st

from echod.admission import (
    UNIX,
    AccessRules,
    Admission,
    AdmissionSettings,
    Refusal,
    Source,
    network,
    peer_address,
    source_key,
)


class Conn:
    """A connection as the module sees it: an idle count, and whether it owes echo."""

    def __init__(self, name: str, idle_ticks: int = 0, owes: bool = False) -> None:
        self.name = name
        self.idle_ticks = idle_ticks
        self.owes = owes
        self.source: Source[Conn] | None = None  # what add() handed back, as the core keeps

    def __repr__(self) -> str:
        return self.name


def owes(conn: Conn) -> bool:
    return conn.owes


def hold(gate: Admission[Conn], key: str, conn: Conn, now: float = 0.0) -> None:
    conn.source = gate.add(key, conn, now)


def let_go(gate: Admission[Conn], conn: Conn) -> None:
    assert conn.source is not None
    gate.remove(conn, conn.source)


def admission(slots: int = 4, **settings: object) -> Admission[Conn]:
    return Admission(AdmissionSettings(**settings), slots)  # type: ignore[arg-type]


# Source keys -------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("host", "key"),
    [
        ("192.0.2.7", "192.0.2.7"),
        ("::ffff:192.0.2.7", "192.0.2.7"),  # a dual-stack listener's IPv4 peer
        ("2001:db8:1:2:3:4:5:6", "2001:db8:1:2::/64"),
        ("2001:db8:1:2:ffff::1", "2001:db8:1:2::/64"),
        ("fe80::1%lo", "fe80::/64"),
    ],
)
def test_source_keys(host: str, key: str) -> None:
    assert source_key(peer_address(host)) == key


@pytest.mark.parametrize(
    "host", ["192.0.2.7", "::ffff:192.0.2.7", "::ffff:0:192.0.2.7", "64:ff9b::192.0.2.7", "::1"]
)
def test_the_fast_key_agrees_with_the_parsed_one(host: str) -> None:
    plain = admission().key(host)
    ruled = admission(rules=AccessRules(deny=[network("10.0.0.0/8")])).key(host)
    assert plain[0] == ruled[0] == source_key(peer_address(host))
    assert ruled[1] == peer_address(host)


def test_unix_peers_are_one_source() -> None:
    assert source_key(None) == UNIX
    assert admission().key(None) == (UNIX, None)


@given(st.integers(0, 2**128 - 1), st.integers(1, 128))
def test_ipv6_addresses_in_one_prefix_share_a_key(value: int, prefix: int) -> None:
    address = ipaddress.IPv6Address(value)
    if address.ipv4_mapped is not None:
        return
    shift = 128 - prefix
    neighbour = ipaddress.IPv6Address(value ^ ((1 << shift) - 1) if shift else value)
    if neighbour.ipv4_mapped is not None:
        return
    assert source_key(address, prefix) == source_key(neighbour, prefix)
    assert source_key(address, prefix).endswith(f"/{prefix}")


def test_mapped_networks_mean_their_ipv4_network() -> None:
    assert network("::ffff:10.0.0.0/104") == ipaddress.IPv4Network("10.0.0.0/8")
    assert network("192.0.2.1") == ipaddress.IPv4Network("192.0.2.1/32")
    with pytest.raises(ValueError):
        network("10.0.0.0/33")


# Allow and deny ----------------------------------------------------------------------
def test_deny_wins_over_allow_and_allow_restricts() -> None:
    rules = AccessRules(allow=[network("10.0.0.0/8")], deny=[network("10.1.0.0/16")])
    assert rules.permits(peer_address("10.2.3.4"))
    assert not rules.permits(peer_address("10.1.3.4"))  # denied, though allowed
    assert not rules.permits(peer_address("192.0.2.1"))  # not allowed
    assert not rules.permits(peer_address("::ffff:10.1.3.4"))  # mapped: the same address
    assert rules.permits(None)  # Unix: file permissions decide


def test_deny_alone_lets_everyone_else_in() -> None:
    rules = AccessRules(deny=[network("192.0.2.0/24")])
    assert not rules.permits(peer_address("192.0.2.9"))
    assert rules.permits(peer_address("198.51.100.1"))
    assert rules.permits(peer_address("::1"))


def test_a_denied_source_is_refused_before_any_limit() -> None:
    gate = admission(rules=AccessRules(deny=[network("192.0.2.0/24")]), per_source=1)
    key, address = gate.key("192.0.2.9")
    assert gate.refusal(key, address, 0.0) is Refusal.DENIED
    key, address = gate.key(None)
    assert gate.refusal(key, address, 0.0) is None


# Per-source cap and connect rate -----------------------------------------------------
def test_per_source_cap_counts_open_connections() -> None:
    gate = admission(per_source=2)
    a1, a2 = Conn("a1"), Conn("a2")
    for conn in (a1, a2):
        assert gate.refusal("192.0.2.1", None, 0.0) is None
        hold(gate, "192.0.2.1", conn)
    assert gate.refusal("192.0.2.1", None, 0.0) is Refusal.PER_SOURCE
    assert gate.refusal("192.0.2.2", None, 0.0) is None  # another source
    let_go(gate, a1)
    assert gate.refusal("192.0.2.1", None, 1.0) is None
    assert gate.refusal(UNIX, None, 1.0) is None  # exempt


def test_connect_rate_allows_the_burst_then_the_rate() -> None:
    gate = admission(connect_rate=10, connect_burst=1)
    first = [gate.refusal("192.0.2.1", None, 0.0) for _ in range(15)]
    assert first.count(None) == 10
    assert first.count(Refusal.CONNECT_RATE) == 5
    assert gate.refusal("192.0.2.2", None, 0.0) is None  # its own bucket
    later = [gate.refusal("192.0.2.1", None, 0.5) for _ in range(10)]
    assert later.count(None) == 5


def test_a_source_cycling_addresses_earns_no_fresh_burst() -> None:
    gate = Admission[Conn](AdmissionSettings(connect_rate=1, connect_burst=4), 1, quiet_capacity=8)
    # Spend every bucket the table can hold, then come back from many new addresses.
    for n in range(8):
        for _ in range(4):
            assert gate.refusal(f"192.0.2.{n}", None, 0.0) is None
    assert gate.sources == 8
    refused = [gate.refusal(f"198.51.100.{n}", None, 0.0) for n in range(200)]
    assert refused.count(None) == 0
    assert gate.sources == 8  # bounded, whatever the number of addresses


def test_sources_holding_connections_are_never_taken_over() -> None:
    gate = Admission[Conn](AdmissionSettings(connect_rate=1, connect_burst=1), 2, quiet_capacity=2)
    held = Conn("held")
    assert gate.refusal("192.0.2.1", None, 0.0) is None
    hold(gate, "192.0.2.1", held)
    for n in range(50):
        gate.refusal(f"198.51.100.{n}", None, 0.0)
    assert "192.0.2.1" in gate.holding
    assert gate.sources <= 3
    let_go(gate, held)
    assert "192.0.2.1" in gate.quiet  # its bucket stays while there is room


def test_without_a_rate_a_source_with_nothing_open_leaves_no_entry() -> None:
    gate = admission()
    conn = Conn("a")
    hold(gate, "192.0.2.1", conn)
    let_go(gate, conn)
    let_go(gate, conn)  # twice is harmless
    assert gate.sources == 0
    assert gate.by_count == {}
    assert gate.most == 0


# Fair share --------------------------------------------------------------------------
def fill(gate: Admission[Conn], key: str, count: int, **conn: object) -> list[Conn]:
    conns = [Conn(f"{key}#{n}", **conn) for n in range(count)]  # type: ignore[arg-type]
    for c in conns:
        hold(gate, key, c)
    return conns


def test_a_newcomer_takes_the_longest_idle_slot_of_the_heaviest_source() -> None:
    gate = admission(slots=4)
    a = fill(gate, "A", 3)
    fill(gate, "B", 1)
    a[0].idle_ticks, a[1].idle_ticks, a[2].idle_ticks = 1, 5, 2
    assert gate.victim("C", owes) is a[1]


def test_a_connection_that_owes_echo_never_gives_way() -> None:
    gate = admission(slots=2)
    fill(gate, "A", 2, owes=True)
    assert gate.victim("C", owes) is None


def test_a_source_at_its_share_is_refused() -> None:
    gate = admission(slots=4)
    fill(gate, "A", 2)
    fill(gate, "B", 2)
    assert not gate.below_share("A")  # 2 of 4 slots, two sources
    assert gate.victim("A", owes) is None
    assert gate.below_share("C")  # 0 < 4 / 3
    assert gate.victim("C", owes) is not None


def test_fair_share_off_never_evicts() -> None:
    gate = admission(slots=2, fair_share=False)
    fill(gate, "A", 2)
    assert gate.victim("C", owes) is None


def test_shares_converge_under_a_greedy_source() -> None:
    """A source that keeps connecting while full ends with its share, no more."""
    slots = 12
    gate = admission(slots=slots)
    fill(gate, "A", slots)
    for n in range(100):
        for key in ("B", "C"):
            victim = gate.victim(key, owes)
            if victim is not None:
                let_go(gate, victim)
                hold(gate, key, Conn(f"{key}{n}"))
    counts = {key: len(source.connections) for key, source in gate.holding.items()}
    assert counts == {"A": 4, "B": 4, "C": 4}


@given(st.lists(st.tuples(st.sampled_from("ABCDE"), st.booleans()), max_size=300))
def test_the_heaviest_source_is_always_found(steps: list[tuple[str, bool]]) -> None:
    gate = admission(slots=10)
    open_conns: list[Conn] = []
    for n, (key, opening) in enumerate(steps):
        if opening or not open_conns:
            conn = Conn(f"{key}{n}")
            hold(gate, key, conn, float(n))
            open_conns.append(conn)
        else:
            let_go(gate, open_conns.pop(n % len(open_conns)))
        counts = [len(s.connections) for s in gate.holding.values()]
        assert gate.held == sum(counts) == len(open_conns)
        assert gate.most == max(counts, default=0)
        heaviest = gate.heaviest()
        assert (heaviest is None) == (not counts)
        assert heaviest is None or len(heaviest.connections) == gate.most


def test_the_table_is_bounded_whatever_the_number_of_sources() -> None:
    gate = Admission[Conn](AdmissionSettings(connect_rate=10), 4, quiet_capacity=100)
    held = fill(gate, "192.0.2.1", 4)
    for n in range(5000):
        gate.refusal(f"10.{n >> 8}.{n & 255}.1", None, float(n))
    assert len(gate.quiet) == 100 and len(gate.holding) == 1
    for conn in held:
        let_go(gate, conn)
    assert len(gate.quiet) == 100 and not gate.holding


def test_a_held_connection_has_one_entry_its_sources_and_no_other() -> None:
    """The source goes back to the core with the connection: no map from every held
    connection to its source (each would cost an idle connection a dict entry)."""
    gate = admission(slots=100)
    conns = [Conn(f"a{n}") for n in range(50)]
    for conn in conns:
        hold(gate, "192.0.2.1", conn)
    assert gate.held == 50
    tables = {name: len(value) for name, value in vars(gate).items() if hasattr(value, "__len__")}
    assert max(tables.values()) < 50, tables
    for conn in conns:
        let_go(gate, conn)
    assert gate.held == 0 and not gate.holding
