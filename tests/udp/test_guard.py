"""The guard's rules, driven with plain values: no sockets, no clock."""

from __future__ import annotations

import pytest

from echod.admission import AccessRules, network
from echod.udp.guard import Guard, GuardSettings, Refusal, RefusalLog, classify_address

OPEN = GuardSettings(packets_per_second=0, bytes_per_second=0, budget_bytes_per_second=0)


@pytest.mark.parametrize("port", [0, 1, 7, 19, 53, 1023])
def test_source_ports_below_1024_are_refused(port: int) -> None:
    assert Guard(OPEN).check("192.0.2.1", port, 10, 0.0) is Refusal.LOW_PORT


@pytest.mark.parametrize("port", [1024, 40000, 65535])
def test_ordinary_source_ports_are_served(port: int) -> None:
    assert Guard(OPEN).check("192.0.2.1", port, 10, 0.0) is None


def test_listed_reflector_ports_are_refused_by_default() -> None:
    guard = Guard(GuardSettings())
    for port in (1900, 5353, 11211):
        assert guard.check("192.0.2.1", port, 10, 0.0) is Refusal.LISTED_PORT
    assert guard.counters.refused[Refusal.LISTED_PORT] == 3


def test_own_listening_ports_and_own_endpoint_are_refused() -> None:
    guard = Guard(OPEN, own_endpoints=[("127.0.0.1", 7007)], own_ports=[7007, 8008])
    assert guard.check("127.0.0.1", 7007, 1, 0.0) is Refusal.SELF
    assert guard.check("192.0.2.9", 7007, 1, 0.0) is Refusal.OWN_PORT
    assert guard.check("192.0.2.9", 8008, 1, 0.0) is Refusal.OWN_PORT
    assert guard.check("192.0.2.9", 8009, 1, 0.0) is None


@pytest.mark.parametrize(
    "host",
    ["255.255.255.255", "224.0.0.1", "239.255.255.250", "0.0.0.0", "0.1.2.3", "::", "ff02::1",
     "::ffff:224.0.0.251", "::ffff:255.255.255.255", "not-an-address"],
)  # fmt: skip
def test_broadcast_multicast_and_unspecified_sources_are_refused(host: str) -> None:
    assert not classify_address(host)
    assert Guard(OPEN).check(host, 40000, 1, 0.0) is Refusal.ADDRESS


@pytest.mark.parametrize("host", ["127.0.0.1", "192.0.2.1", "::1", "fe80::1%lo", "::ffff:10.0.0.1"])
def test_unicast_sources_are_served(host: str) -> None:
    assert classify_address(host)


def test_rate_per_source_allows_the_burst_then_the_rate() -> None:
    guard = Guard(GuardSettings(packets_per_second=10, bytes_per_second=0, burst_seconds=1))
    answered = [guard.check("192.0.2.1", 40000, 100, 0.0) for _ in range(25)]
    assert answered.count(None) == 10
    assert answered.count(Refusal.RATE) == 15
    # Another source has its own bucket.
    assert guard.check("192.0.2.2", 40000, 100, 0.0) is None
    # Half a second refills five.
    later = [guard.check("192.0.2.1", 40000, 100, 0.5) for _ in range(10)]
    assert later.count(None) == 5


def test_byte_rate_per_source_counts_bytes() -> None:
    settings = GuardSettings(packets_per_second=0, bytes_per_second=100_000, burst_seconds=1)
    guard = Guard(settings)
    sizes = [guard.check("192.0.2.1", 40000, 30_000, 0.0) for _ in range(5)]
    assert sizes == [None, None, None, Refusal.RATE, Refusal.RATE]


def test_a_largest_datagram_fits_even_a_small_byte_bucket() -> None:
    guard = Guard(GuardSettings(bytes_per_second=100, burst_seconds=1, budget_bytes_per_second=100))
    assert guard.check("192.0.2.1", 40000, 65_507, 0.0) is None
    assert guard.check("192.0.2.1", 40000, 65_507, 0.0) is Refusal.RATE


def test_table_holds_at_most_its_size_and_forgets_the_least_recent() -> None:
    guard = Guard(GuardSettings(sources=100, budget_bytes_per_second=0))
    for i in range(10_000):
        guard.check(f"10.{i >> 16 & 255}.{i >> 8 & 255}.{i & 255}", 40000, 1, 0.0)
        guard.check("192.0.2.1", 40000, 1, 0.0)  # kept fresh: never evicted
    assert len(guard.table) == 100 == guard.counters.sources
    assert "192.0.2.1" in guard.table


def test_a_flood_cycling_through_more_sources_than_the_table_gets_no_fresh_bursts() -> None:
    settings = GuardSettings(packets_per_second=5, bytes_per_second=0, burst_seconds=1, sources=64)
    guard = Guard(settings, counters=None)
    answered = 0
    for second in range(4):
        for _ in range(20):
            for i in range(1000):
                answered += guard.check(f"10.0.{i >> 8}.{i & 255}", 40000, 1, float(second)) is None
    # The table's tokens: 64 full buckets, then 64 x 5 per second for 3 seconds.
    assert answered <= 64 * 5 + 64 * 5 * 3
    assert len(guard.table) == 64


def test_global_budget_caps_answers_from_many_sources() -> None:
    settings = GuardSettings(budget_bytes_per_second=100_000, sources=16)
    guard = Guard(settings)
    answered = 0
    for second in range(3):
        for i in range(10_000):
            if guard.check(f"10.0.{i >> 8}.{i & 255}", 40000, 1000, float(second)) is None:
                answered += 1000
    # A full bucket at the start, then the rate: 100 kB + 2 s x 100 kB/s.
    assert answered == 300_000
    assert guard.counters.refused[Refusal.BUDGET] == 30_000 - 300


def test_refused_datagrams_do_not_spend_the_budget() -> None:
    guard = Guard(GuardSettings(budget_bytes_per_second=70_000))
    for _ in range(100):
        guard.check("192.0.2.1", 53, 60_000, 0.0)
    assert guard.check("192.0.2.1", 40000, 60_000, 0.0) is None


def test_refusal_log_names_the_source_once_per_interval_per_reason() -> None:
    log = RefusalLog(interval=10.0)
    first = log.line(Refusal.LOW_PORT, "192.0.2.1", 19, 0.0)
    assert first is not None and "192.0.2.1:19" in first and "below 1024" in first
    assert log.line(Refusal.LOW_PORT, "192.0.2.2", 19, 5.0) is None
    assert log.line(Refusal.LOW_PORT, "192.0.2.3", 19, 6.0) is None
    other = log.line(Refusal.RATE, "2001:db8::1", 4000, 6.0)
    assert other is not None and "[2001:db8::1]:4000" in other
    again = log.line(Refusal.LOW_PORT, "192.0.2.4", 7, 10.0)
    assert again is not None and "192.0.2.4:7" in again and "2 more" in again


def test_udp_counters_cross_the_worker_pipe_and_add_up() -> None:
    from echod.lifecycle import Stats

    one = Stats(bytes_in=5)
    one.udp = Guard(GuardSettings()).counters
    one.udp.received, one.udp.echoed = 7, 3
    one.udp.refused[Refusal.RATE] = 4
    decoded = Stats.decode(one.encode())
    assert decoded.udp is not None and decoded.udp.summary() == one.udp.summary()
    total = Stats()
    total.add(decoded)
    total.add(decoded)
    total.add(Stats.decode(Stats(bytes_in=1).encode()))  # a worker without UDP
    assert total.udp is not None and total.bytes_in == 11
    assert (total.udp.received, total.udp.echoed, total.udp.refused[Refusal.RATE]) == (14, 6, 8)
    with pytest.raises(ValueError):
        Stats.decode(one.encode() + " 1")


def test_deny_and_allow_apply_to_a_new_source() -> None:
    rules = AccessRules(allow=[network("192.0.2.0/24")], deny=[network("192.0.2.9")])
    guard = Guard(GuardSettings(rules=rules))
    assert guard.check("192.0.2.9", 40000, 1, 0.0) is Refusal.DENIED
    assert guard.check("198.51.100.1", 40000, 1, 0.0) is Refusal.DENIED
    assert guard.check("::ffff:192.0.2.1", 40000, 1, 0.0) is None
    assert guard.counters.refused[Refusal.DENIED] == 2
