"""One machine with systemd as PID 1 for the whole directory, with echod installed in it
as ``systemd/install.sh`` would: a venv at /opt/echod/venv, the units in
/etc/systemd/system, the shipped configuration at /etc/echod/echod.toml."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.support import ROOT
from tests.systemd.machine import PYTHON, SOURCE, VENV, WHEELS, Machine, booted, build_wheel

UNITS = sorted(p.name for p in (ROOT / "systemd").iterdir() if p.suffix in (".socket", ".service"))
CONFIG = "/etc/echod/echod.toml"

# install.sh's steps, offline: pip takes the wheel instead of the source tree.
INSTALL = f"""
{PYTHON} -m venv {VENV}
{VENV}/bin/pip install --quiet --no-index --no-deps --disable-pip-version-check {WHEELS}/*.whl
install -m 0644 {" ".join(f"{SOURCE}/systemd/{unit}" for unit in UNITS)} /etc/systemd/system/
if [ -f {SOURCE}/systemd/echod.toml ]; then install -D -m 0644 {SOURCE}/systemd/echod.toml {CONFIG}; fi
systemctl daemon-reload
"""


@pytest.fixture(scope="package")
def guest(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Machine]:
    work = tmp_path_factory.mktemp("machine")
    wheel = build_wheel(work)
    with booted([(ROOT, SOURCE), (wheel.parent, WHEELS)], work / "console.log") as machine:
        machine.sh(INSTALL, timeout=180)
        yield machine


@pytest.fixture
def machine(guest: Machine) -> Iterator[Machine]:
    """The shared machine, with every echod unit stopped and the shipped config back
    after each test, whatever the test changed."""
    yield guest
    guest.run("systemctl", "stop", *UNITS, check=False)
    guest.run("systemctl", "reset-failed", *UNITS, check=False)
    shipped = ROOT / "systemd/echod.toml"
    if shipped.exists():
        guest.write(CONFIG, shipped.read_text())
    guest.run("rm", "-f", "/etc/echod/echod.env", check=False)


def log_on_failure(machine: Machine, *units: str) -> str:
    return "\n".join(f"--- journal of {unit}:\n{machine.journal(unit)[-3000:]}" for unit in units)
