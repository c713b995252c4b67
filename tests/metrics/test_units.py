"""The metrics socket unit hands echod.service a loopback socket named as echod expects."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

from echod.net.listener_set import METRICS_FD_NAME
from tests.service.test_units import SYSTEMD_DIR, stage_root, systemd_analyze, verify


def settings(unit: str) -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    for line in (SYSTEMD_DIR / unit).read_text().splitlines():
        match = re.fullmatch(r"(\w+)=(.*)", line)
        if match:
            found.setdefault(match.group(1), []).append(match.group(2))
    return found


def test_metrics_socket_is_named_loopback_and_feeds_the_service() -> None:
    socket_unit = settings("echod-metrics.socket")
    assert socket_unit["FileDescriptorName"] == [METRICS_FD_NAME]
    (listen,) = socket_unit["ListenStream"]
    assert listen.startswith("127.0.0.1:")
    assert socket_unit["Service"] == ["echod.service"]
    service = settings("echod.service")
    assert service["Sockets"] == ["echod.socket echod-metrics.socket"]
    assert "PrivateNetwork" in service and service["PrivateNetwork"] == ["yes"]
    echo_socket = settings("echod.socket")
    assert echo_socket["FileDescriptorName"] != [METRICS_FD_NAME]


def test_every_unit_points_at_the_man_page() -> None:
    for unit in SYSTEMD_DIR.glob("*.s*"):
        assert "Documentation=man:echod(8)" in unit.read_text(), unit.name


def test_systemd_analyze_verify_is_silent_for_the_metrics_socket(tmp_path: Path) -> None:
    systemd_analyze()
    unit_dir = stage_root(tmp_path)
    unit_dir.mkdir(parents=True, exist_ok=True)
    for unit in ("echod.socket", "echod-metrics.socket", "echod.service"):
        shutil.copy(SYSTEMD_DIR / unit, unit_dir / unit)
    stub = tmp_path / "opt/echod/venv/bin/echod"
    stub.parent.mkdir(parents=True)
    stub.write_text("#!/bin/sh\n")
    stub.chmod(0o755)
    for unit in ("echod-metrics.socket", "echod.service"):
        result = verify(tmp_path, unit)
        assert (result.returncode, result.stdout + result.stderr) == (0, ""), unit
    # Not blind: a misspelt key in the socket unit is reported.
    text = (unit_dir / "echod-metrics.socket").read_text()
    (unit_dir / "echod-metrics.socket").write_text(text.replace("Backlog=", "Backlogg="))
    assert "Backlogg" in verify(tmp_path, "echod-metrics.socket").stderr
