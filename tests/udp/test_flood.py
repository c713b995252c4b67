"""A flood from thousands of source addresses: rates hold, the table stays its size."""

from __future__ import annotations

import time

import pytest

from echod.udp.guard import Refusal
from tests.udp.udp_support import UDP_BACKENDS, client, receive_all, settled, udp_echod

SOURCES = 3000
PER_SOURCE = 20
TABLE = 64
BATCH = 300


@pytest.mark.slow
@pytest.mark.parametrize("backend", [UDP_BACKENDS[0], "asyncio"])
def test_flood_from_many_sources_stays_within_rates_and_table(backend: str) -> None:
    with udp_echod(
        "--backend",
        backend,
        "--listen",
        "udp:127.0.0.1:0",
        "--udp-rate",
        "5/0",
        "--udp-burst",
        "1",
        "--udp-sources",
        str(TABLE),
    ) as srv:
        rss_before = srv.rss()
        most = 0
        answered = 0
        start = time.monotonic()
        for first in range(0, SOURCES, BATCH):
            socks = [
                client("127.0.0.1", bind=(f"127.1.{n >> 8}.{n & 255}", 0))
                for n in range(first + 1, first + BATCH + 1)
            ]
            try:
                for _ in range(PER_SOURCE):
                    for sock in socks:
                        sock.sendto(b"flood", srv.udp[0])
                settled(srv)  # every answer echod will send is on the sockets now
                for sock in socks:
                    got = len(receive_all(sock, quiet=0.001))
                    most = max(most, got)
                    answered += got
            finally:
                for sock in socks:
                    sock.close()
        elapsed = time.monotonic() - start
        stats = srv.stats()
        # Cycling through more sources than the table holds earns no fresh bursts: in
        # total, the table's buckets (64 x 5) and their refill (64 x 5/s), and no source
        # more than one bucket's worth per batch it sent in (its own or one taken over).
        assert answered == stats["echoed"] <= TABLE * 5 + TABLE * 5 * (elapsed + 1), elapsed
        assert most <= 10, most  # of the 20 each sent
        # Every datagram read is accounted for once. Rate refusals are most of them, but not
        # always all: a client's ephemeral port may equal the server's (on another address),
        # and those are refused as echo loops; a reply the kernel would not take is dropped.
        refused = sum(stats[reason.value] for reason in Refusal)
        assert stats["in"] == stats["echoed"] + stats["dropped"] + refused, stats
        assert stats["rate"] > stats["in"] // 2, stats
        # The table never grew past its size, and memory with it.
        assert stats["sources"] <= TABLE, stats
        assert srv.rss() - rss_before < 4 << 20, (srv.rss() - rss_before, elapsed)
