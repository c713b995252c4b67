"""The project's own units under a real systemd as PID 1 (issue 16): socket activation,
the standalone unit, reload and restart under load, all inside a throwaway machine."""

from __future__ import annotations

import pytest

from tests.systemd.clients import echo
from tests.systemd.conftest import log_on_failure
from tests.systemd.machine import Machine

pytestmark = pytest.mark.slow


@pytest.mark.parametrize("backend", ["epoll", "threads"])
def test_socket_activated_service_echoes_every_byte(machine: Machine, backend: str) -> None:
    machine.write("/etc/echod/echod.env", f"ECHOD_BACKEND={backend}\n")
    machine.run("systemctl", "start", "echod.socket")
    assert machine.show("echod.service", "ActiveState")["ActiveState"] == "inactive"
    result = echo(machine, 7, 200_000)
    assert result == {"sent": 200_000, "received": 200_000, "match": True}, log_on_failure(
        machine, "echod.service"
    )
    # The first connection started it, through the socket.
    assert machine.show("echod.service", "ActiveState")["ActiveState"] == "active"
    assert f"(backend {backend})" in machine.journal("echod.service")
