"""The harness can fail: a unit that cannot start, and a server that loses a byte or
stops listening, are each reported, not passed over."""

from __future__ import annotations

import pytest

from tests.systemd.clients import Loop, echo, listening_inodes, wait_for
from tests.systemd.machine import PYTHON, Machine, MachineError

# The first test also waits for the machine: a wheel, a boot and a venv.
pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]

# Echoes its first connection whole, drops the first byte of the next 19, then exits:
# the client loop must count those and then refusals.
LOSSY = """
import socket
server = socket.create_server(("127.0.0.1", 9))
for n in range(20):
    conn, _ = server.accept()
    if n == 19:
        server.close()  # before answering: the client's next connect finds no listener
    with conn:
        data = conn.recv(65536)
        conn.sendall(data if n == 0 else data[1:])
"""


def test_a_unit_that_cannot_start_fails_the_test(machine: Machine) -> None:
    dropin = "/run/systemd/system/echod-standalone.service.d/broken.conf"
    machine.write(dropin, "[Service]\nExecStart=\nExecStart=/opt/echod/venv/bin/echod --nope\n")
    try:
        machine.run("systemctl", "daemon-reload")
        with pytest.raises(MachineError, match="echod-standalone"):
            machine.run("systemctl", "start", "echod-standalone.service")
        with pytest.raises(MachineError, match="ConnectionRefusedError"):
            echo(machine, 7, 100)
    finally:
        machine.run("rm", "-f", dropin)
        machine.run("systemctl", "daemon-reload")


def test_the_client_loop_counts_a_lost_byte_and_a_refusal(machine: Machine) -> None:
    machine.run("systemd-run", "--quiet", "--unit=lossy-echo", PYTHON, "-c", LOSSY)
    try:
        wait_for(lambda: listening_inodes(machine, 9), "the lossy server listening")
        with Loop(machine, 9, persistent=0, after=40) as load:
            counts = load.finish()
    finally:
        machine.run("systemctl", "stop", "lossy-echo", check=False)
    assert counts["ok"] == 1
    assert counts.get("mismatch", 0) + counts.get("eof", 0) == 19, counts
    # Every connection after the server's twentieth: its listener is closed.
    assert counts["refused"] == counts["connections"] - 20 > 0, counts
