"""UDP echo's series join the scrape when echod has UDP listeners, and only then."""

from __future__ import annotations

from tests.metrics.scrape import address_of, scrape, value
from tests.support import TIMEOUT, echod, wait_until
from tests.udp.udp_support import client, udp_echod

DATAGRAMS = 25


def latest(where: tuple[int, object], name: str, **labels: str) -> float | None:
    """A fresh scrape's figure; None until a worker's heartbeat has brought UDP counters."""
    return scrape(where).get((name, tuple(sorted(labels.items()))))


def test_udp_datagrams_echoed_and_refused_by_reason_are_counted() -> None:
    with client("127.0.0.1", bind=("127.0.0.1", 0)) as sock:
        listed = str(sock.getsockname()[1])
        with udp_echod(
            "--listen", "udp:127.0.0.1:0", "--metrics", "127.0.0.1:0",
            "--udp-refuse-ports", listed,
        ) as refusing:  # fmt: skip
            where = address_of(refusing)
            for _ in range(DATAGRAMS):
                sock.sendto(b"refused", refusing.udp[0])
            assert wait_until(
                lambda: (
                    latest(where, "echod_udp_refused_datagrams_total", reason="listed-port")
                    == DATAGRAMS
                ),
                timeout=TIMEOUT,
            )
            final = scrape(where)
            assert value(final, "echod_udp_received_datagrams_total") == DATAGRAMS
            assert value(final, "echod_udp_echoed_datagrams_total") == 0

    with udp_echod("--listen", "udp:127.0.0.1:0", "--metrics", "127.0.0.1:0") as server:
        where = address_of(server)
        with client("127.0.0.1") as sock:
            for i in range(DATAGRAMS):
                sock.sendto(b"%03d" % i, server.udp[0])
                assert sock.recv(64) == b"%03d" % i
        assert wait_until(
            lambda: latest(where, "echod_udp_echoed_datagrams_total") == DATAGRAMS,
            timeout=TIMEOUT,
        )
        final = scrape(where)
        assert value(final, "echod_udp_sent_bytes_total") == 3 * DATAGRAMS
        assert value(final, "echod_udp_refused_datagrams_total", reason="rate") == 0


def test_no_udp_series_without_udp_listeners() -> None:
    with echod("--port", "0", "--metrics", "127.0.0.1:0") as server:
        names = {name for name, _ in scrape(address_of(server))}
    assert not any(name.startswith("echod_udp_") for name in names)
