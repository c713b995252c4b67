"""Socket activation of a datagram socket (ListenDatagram=), with the real tool."""

from __future__ import annotations

import socket
import time

from tests.support import Echod, require_tool, start_on_a_free_port
from tests.udp.udp_support import receive_all


def test_systemd_socket_activate_datagram() -> None:
    tool = require_tool("systemd-socket-activate")

    def start(port: int) -> Echod:
        wrapper = [tool, "--datagram", "-l", f"127.0.0.1:{port}", "--fdname=udp-echo"]
        return Echod("--log-level", "debug", wrapper=wrapper, wait=False)

    server, port = start_on_a_free_port(start)
    with server:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            sock.settimeout(20)
            # The first datagram starts echod, which then reads it from the socket.
            deadline = time.monotonic() + 20
            while server.alive():
                sock.sendto(b"activated", ("127.0.0.1", port))
                if receive_all(sock, quiet=1.0):
                    break
                assert time.monotonic() < deadline, "no answer from the activated echod"
            sock.sendto(b"again", ("127.0.0.1", port))
            assert sock.recv(100) == b"again"
        assert server.stop() == 0, server.log
    assert f"listening on udp:127.0.0.1:{port}" in server.log, server.log
    assert "Traceback" not in server.log
