"""--workers: every worker serves the shared UDP socket; the supervisor adds up their counters."""

from __future__ import annotations

import re
import signal

from tests.udp.udp_support import client, receive_all, udp_echod


def test_workers_share_udp_and_the_supervisor_sums_udp_counters() -> None:
    with udp_echod("--workers", "2", "--listen", "udp:127.0.0.1:0") as srv:
        srv.wait_for("ready: 2 workers serving")
        with client("127.0.0.1") as sock:
            for i in range(20):
                sock.sendto(b"%d" % i, srv.udp[0])
            assert len(receive_all(sock, quiet=0.5)) == 20
        srv.signal(signal.SIGUSR1)
        line = srv.wait_for(re.compile(r"stats \(all workers\): .*udp in=(\d+) echoed=(\d+)"))
        assert (int(line.group(1)), int(line.group(2))) == (20, 20), srv.log
