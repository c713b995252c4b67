"""The project's own units under a real systemd as PID 1 (issue 16): socket activation,
the standalone unit, reload, restart and upgrade while a client keeps connecting, all
inside a throwaway machine (tests/systemd/machine.py)."""

from __future__ import annotations

import re
from typing import Any

import pytest

from tests.support import ROOT
from tests.systemd.clients import Loop, echo, listening_inodes, wait_for
from tests.systemd.conftest import CONFIG, log_on_failure
from tests.systemd.machine import Machine

# The first test also waits for the machine: a wheel, a boot and a venv.
pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]

SHIPPED = (ROOT / "systemd/echod.toml").read_text()
# Every way a client can be let down; all must stay at zero.
FAILURES = ("refused", "reset", "eof", "timeout", "mismatch", "persistent_lost")


def configure(machine: Machine, **settings: object) -> None:
    """/etc/echod/echod.toml as shipped, with ``settings`` replaced or added."""
    text = SHIPPED
    for key, value in settings.items():
        line = f"{key} = {value!r}".replace("'", '"')
        text, found = re.subn(rf"^{key} = .*$", line, text, flags=re.MULTILINE)
        if not found:
            text += line + "\n"
    machine.write(CONFIG, text)


def main_pid(machine: Machine, unit: str) -> int:
    return int(machine.show(unit, "MainPID")["MainPID"])


def workers(machine: Machine, unit: str) -> set[int]:
    """The supervisor's children: its workers (and, during an upgrade, the new echod)."""
    pid = main_pid(machine, unit)
    out = machine.run("cat", f"/proc/{pid}/task/{pid}/children", check=False).stdout
    return {int(p) for p in out.split()}


def start(machine: Machine, unit: str) -> None:
    machine.run("systemctl", "start", unit)
    wait_for(
        lambda: machine.show(unit, "ActiveState")["ActiveState"] == "active",
        f"{unit} active",
    )


def clean(counts: dict[str, Any]) -> dict[str, Any]:
    """The failure counts (all of them, zeros included) and whether it finished."""
    return {"finished": counts["finished"], **{k: counts.get(k, 0) for k in FAILURES}}


CLEAN = {"finished": True, **dict.fromkeys(FAILURES, 0)}


@pytest.mark.parametrize("backend", ["epoll", "threads"])
def test_socket_activated_service_echoes_every_byte(machine: Machine, backend: str) -> None:
    configure(machine, backend=backend)
    seen = len(machine.journal("echod.service"))
    machine.run("systemctl", "start", "echod.socket")
    assert machine.show("echod.service", "ActiveState")["ActiveState"] == "inactive"
    result = echo(machine, 7, 200_000)
    assert result == {"sent": 200_000, "received": 200_000, "match": True}, log_on_failure(
        machine, "echod.service"
    )
    # The first connection started it, through the socket.
    assert machine.show("echod.service", "ActiveState")["ActiveState"] == "active"
    assert f"(backend {backend})" in machine.journal("echod.service")[seen:]


def test_standalone_service_binds_its_port_and_echoes(machine: Machine) -> None:
    start(machine, "echod-standalone.service")
    result = echo(machine, 7, 100_000)
    assert result == {"sent": 100_000, "received": 100_000, "match": True}, log_on_failure(
        machine, "echod-standalone.service"
    )
    # echod bound port 7 itself (DynamicUser= with CAP_NET_BIND_SERVICE), from the file.
    assert listening_inodes(machine, 7)
    assert machine.show("echod.socket", "ActiveState")["ActiveState"] == "inactive"


# echod.service takes one socket from echod.socket (shared by the workers); the
# standalone unit binds one SO_REUSEPORT socket per worker slot.
@pytest.mark.parametrize("unit", ["echod.service", "echod-standalone.service"])
def test_reload_under_load_refuses_nothing_and_replaces_the_workers(
    machine: Machine, unit: str
) -> None:
    configure(machine, backend="epoll", workers=2)
    start(machine, "echod.socket" if unit == "echod.service" else unit)
    assert echo(machine, 7, 1000)["match"]
    supervisor = main_pid(machine, unit)
    wait_for(lambda: len(workers(machine, unit)) == 2, "2 workers")
    before = workers(machine, unit)
    # The reload also changes a setting, which the new workers must show.
    configure(machine, backend="poll", workers=2)
    seen = len(machine.journal(unit))
    with Loop(machine, 7) as load:
        reload = machine.run("systemctl", "reload", unit, check=False)
        assert reload.returncode == 0, reload.stderr + log_on_failure(machine, unit)
        # On systemd 252 `systemctl reload` returns once kill has: wait for the new
        # generation to serve, with the clients still going.
        wait_for(lambda: "reload done" in machine.journal(unit)[seen:], "reload done")
        counts = load.finish()
    assert clean(counts) == CLEAN, f"{counts}\n" + log_on_failure(machine, unit)
    after = workers(machine, unit)
    assert main_pid(machine, unit) == supervisor
    assert machine.show(unit, "NRestarts")["NRestarts"] == "0"
    assert after and not after & before, (before, after)
    assert "(backend poll)" in machine.journal(unit)[seen:]


def test_reload_with_a_bad_file_fails_and_echod_serves_on(machine: Machine) -> None:
    machine.run("systemctl", "start", "echod.socket")
    assert echo(machine, 7, 1000)["match"]
    supervisor = main_pid(machine, "echod.service")
    before = workers(machine, "echod.service")
    machine.write(CONFIG, SHIPPED + "graceful_timout = 5\n")
    seen = len(machine.journal("echod.service"))
    reload = machine.run("systemctl", "reload", "echod.service", check=False)
    # ExecReload='s --check-config refused it: nothing was signalled.
    assert reload.returncode != 0
    assert "graceful_timout" in machine.journal("echod.service")[seen:]
    assert main_pid(machine, "echod.service") == supervisor
    assert workers(machine, "echod.service") == before
    assert machine.show("echod.service", "ActiveState")["ActiveState"] == "active"
    assert echo(machine, 7, 50_000)["match"]


def test_standalone_restart_keeps_its_sockets_and_refuses_nothing(machine: Machine) -> None:
    start(machine, "echod-standalone.service")
    unit = "echod-standalone.service"
    wait_for(lambda: int(machine.show(unit, "NFileDescriptorStore")["NFileDescriptorStore"]), "fds")
    first = main_pid(machine, unit)
    sockets = listening_inodes(machine, 7)
    # No persistent connections: a restart drains open ones as a stop does.
    with Loop(machine, 7, persistent=0) as load:
        restart = machine.run("systemctl", "restart", unit, check=False, timeout=120)
        assert restart.returncode == 0, restart.stderr + log_on_failure(machine, unit)
        counts = load.finish()
    assert clean(counts) == CLEAN, f"{counts}\n" + log_on_failure(machine, unit)
    assert main_pid(machine, unit) not in (0, first)
    assert listening_inodes(machine, 7) == sockets, log_on_failure(machine, unit)


# Seen on systemd 252 with the units' NotifyAccess=main: a supervisor's own MAINPID= is
# refused, and a main process named while it is not systemd's own child is SIGKILLed at
# the next stop, with no drain. So echod's new code is forked twice (its parent becomes
# systemd) and the old supervisor, still the main process, names it.
def test_upgrade_under_load_moves_the_main_pid_and_refuses_nothing(machine: Machine) -> None:
    machine.run("systemctl", "start", "echod.socket")
    assert echo(machine, 7, 1000)["match"]
    unit = "echod.service"
    first = main_pid(machine, unit)
    seen = len(machine.journal(unit))
    with Loop(machine, 7) as load:
        machine.run("systemctl", "kill", "--kill-who=main", "--signal=SIGUSR2", unit)
        wait_for(lambda: "upgrade done" in machine.journal(unit)[seen:], "upgrade done")
        # The old supervisor drains the persistent connections until the loop ends.
        counts = load.finish()
    assert clean(counts) == CLEAN, f"{counts}\n" + log_on_failure(machine, unit)
    upgraded = main_pid(machine, unit)
    assert upgraded not in (0, first), log_on_failure(machine, unit)
    assert machine.show(unit, "ActiveState")["ActiveState"] == "active"
    assert machine.show(unit, "NRestarts")["NRestarts"] == "0"
    assert echo(machine, 7, 10_000)["match"], log_on_failure(machine, unit)
    # The new supervisor is stopped as the first was: SIGTERM, a drain, exit 0.
    seen = len(machine.journal(unit))
    machine.run("systemctl", "stop", unit)
    stop_log = machine.journal(unit)[seen:]
    assert machine.show(unit, "Result")["Result"] == "success", stop_log
    assert "SIGKILL" not in stop_log and "stopped:" in stop_log, stop_log
