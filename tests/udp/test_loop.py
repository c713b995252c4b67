"""Echo pointed at echo (CERT CA-1996-01): two echod instances bouncing one datagram."""

from __future__ import annotations

import signal
import socket
import time

import pytest

from tests.udp.udp_support import udp_echod


def bounce(args: tuple[str, ...]) -> tuple[dict[str, int], dict[str, int], dict[str, int]]:
    """Start a loop between echod A and echod B; B's counters at 2 s and 3 s, and A's.

    No spoofing needed: with A stopped, a datagram is sent to it from a port that B then
    binds, so when A resumes its answer goes to B, whose answer comes back to A, ...
    """
    with udp_echod("--listen", "udp:127.0.0.1:0", *args) as a:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as trigger:
            trigger.bind(("127.0.0.1", 0))
            port = trigger.getsockname()[1]
            a.signal(signal.SIGSTOP)
            try:
                trigger.sendto(b"ping-pong", a.udp[0])
                trigger.close()
                with udp_echod("--listen", f"udp:127.0.0.1:{port}", *args) as b:
                    a.signal(signal.SIGCONT)
                    time.sleep(2)
                    early = b.stats()
                    time.sleep(1)
                    late = b.stats()
            finally:
                a.signal(signal.SIGCONT)
        return early, late, a.stats()


def test_an_echo_loop_between_two_echods_dies_out() -> None:
    early, late, a = bounce(())
    # Each side answers its peer's burst (2 s x 100/s), then the per-source rate
    # refuses one datagram, and that datagram was the whole loop.
    assert late["echoed"] == early["echoed"], (early, late)
    assert 0 < late["echoed"] <= 250, late
    assert a["rate"] + late["rate"] == 1, (a, late)


@pytest.mark.slow
def test_without_rate_limit_or_budget_the_loop_would_run_forever() -> None:
    """The control: the same loop with both limits off keeps going (what the guard stops)."""
    early, late, _ = bounce(("--udp-rate", "0/0", "--udp-budget", "0"))
    assert late["echoed"] > early["echoed"] > 1000, (early, late)
