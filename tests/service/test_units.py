"""The unit files: valid for systemd, hardened to a measured exposure, installable."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from echod.config import from_file, usable_cpus
from tests.support import missing, require_module, require_tool

SYSTEMD_DIR = Path(__file__).resolve().parents[2] / "systemd"
UNITS = ["echod.socket", "echod-udp.socket", "echod.service", "echod-standalone.service"]
EXEC_START = "/opt/echod/venv/bin/echod"
CONFIG = "/etc/echod/echod.toml"
# Where the distribution keeps its own units (sysinit.target and friends,
# which every unit depends on by default).
DISTRO_UNIT_DIRS = [Path("/usr/lib/systemd/system"), Path("/lib/systemd/system")]


def systemd_analyze() -> str:
    return require_tool("systemd-analyze")


def stage_root(root: Path) -> Path:
    """A file-system root for `systemd-analyze verify --root`: the distro's units,
    ours, and whatever install.sh put there.

    verify checks that ExecStart= is executable, resolved inside the root, so
    the real /opt/echod path is verified rather than rewritten.
    """
    distro = next((d for d in DISTRO_UNIT_DIRS if (d / "sysinit.target").exists()), None)
    if distro is None:
        missing("no distribution unit directory with sysinit.target to verify against")
    shutil.copytree(distro, root / "usr/lib/systemd/system", symlinks=True, dirs_exist_ok=True)
    return root / "etc/systemd/system"


def verify(root: Path, unit: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [systemd_analyze(), "verify", f"--root={root}", "--man=no", "--generators=no", unit],
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.fixture
def staged(tmp_path: Path) -> Path:
    systemd_analyze()
    unit_dir = stage_root(tmp_path)
    unit_dir.mkdir(parents=True, exist_ok=True)
    for unit in UNITS:
        shutil.copy(SYSTEMD_DIR / unit, unit_dir / unit)
    stub = tmp_path / EXEC_START.lstrip("/")
    stub.parent.mkdir(parents=True)
    stub.write_text("#!/bin/sh\n")
    stub.chmod(0o755)
    return tmp_path


@pytest.mark.parametrize("unit", UNITS)
def test_systemd_analyze_verify_is_silent(staged: Path, unit: str) -> None:
    result = verify(staged, unit)
    # verify exits 0 on mere warnings (an unknown key, a misplaced one), so
    # silence is the bar.
    assert (result.returncode, result.stdout + result.stderr) == (0, "")


def test_verify_would_catch_a_broken_unit(staged: Path) -> None:
    unit_dir = staged / "etc/systemd/system"
    text = (unit_dir / "echod.service").read_text()
    (unit_dir / "echod.service").write_text(text.replace("[Service]\n", "[Service]\nNoSuchKey=1\n"))
    assert "NoSuchKey" in verify(staged, "echod.service").stderr
    (staged / EXEC_START.lstrip("/")).unlink()
    assert verify(staged, "echod.service").returncode != 0


def exposure(unit: str) -> float:
    result = subprocess.run(
        [systemd_analyze(), "security", "--offline=true", str(SYSTEMD_DIR / unit)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    if result.returncode != 0 and "offline" in result.stderr:
        missing(f"systemd-analyze security --offline unsupported: {result.stderr.strip()}")
    match = re.search(r"Overall exposure level for \S+: (\d+\.\d+)", result.stdout)
    assert match, result.stdout + result.stderr
    return float(match.group(1))


# Issue 16: a reload path, a config file and the fd store must not cost exposure.
# NotifyAccess=all alone would add 0.2 to either unit.
def test_socket_activated_service_exposure_is_at_most_0_2() -> None:
    assert exposure("echod.service") <= 0.2


def test_standalone_service_exposure_is_at_most_1_4() -> None:
    assert exposure("echod-standalone.service") <= 1.4


def test_the_service_is_the_one_documented_and_installed() -> None:
    for unit in ("echod.service", "echod-standalone.service"):
        text = (SYSTEMD_DIR / unit).read_text()
        assert f"\nExecStart={EXEC_START} --config {CONFIG}\n" in text
        assert "\nType=notify\n" in text
        assert "\nNotifyAccess=main\n" in text
        # Check first (exit 2 fails the reload, nothing is signalled), then signal.
        reload = re.findall(r"^ExecReload=(.*)$", text, re.MULTILINE)
        assert reload == [
            f"{EXEC_START} --config {CONFIG} --check-config",
            "/bin/kill -HUP $MAINPID",
        ]
        # Defaults live in the file a reload re-reads, not in an environment it cannot.
        assert "Environment=ECHOD_" not in text
        assert "\nEnvironmentFile=-/etc/echod/echod.env\n" in text
    standalone = (SYSTEMD_DIR / "echod-standalone.service").read_text()
    assert re.search(r"^FileDescriptorStoreMax=[1-9]\d*$", standalone, re.MULTILINE)
    socket_unit = (SYSTEMD_DIR / "echod.socket").read_text()
    assert "\nListenStream=7\n" in socket_unit
    assert "\nAccept=no\n" in socket_unit


@pytest.mark.slow
def test_install_script_stages_a_verifiable_install(tmp_path: Path) -> None:
    """install.sh with DESTDIR: venv, entry point, units, settings; twice, as an upgrade
    would, and the second run keeps the settings an administrator edited."""
    systemd_analyze()
    stage_root(tmp_path)
    env = {**os.environ, "DESTDIR": str(tmp_path), "PYTHON": sys.executable}
    settings = tmp_path / CONFIG.lstrip("/")
    for run in range(2):
        if run:
            assert settings.read_text() == (SYSTEMD_DIR / "echod.toml").read_text()
            settings.write_text("workers = 2\n")
        result = subprocess.run(
            ["sh", str(SYSTEMD_DIR / "install.sh")],
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert result.returncode == 0, result.stderr
    assert os.access(tmp_path / EXEC_START.lstrip("/"), os.X_OK)
    for unit in UNITS:
        assert verify(tmp_path, unit).returncode == 0
    installed = (tmp_path / "etc/systemd/system/echod.service").read_text()
    assert installed == (SYSTEMD_DIR / "echod.service").read_text()
    assert settings.read_text() == "workers = 2\n"
    assert settings.stat().st_mode & 0o777 == 0o644  # the service's DynamicUser= reads it


def test_shipped_settings_are_the_defaults_the_units_had() -> None:
    """What the units set with Environment= before issue 16, now in echod.toml."""
    values = from_file(str(SYSTEMD_DIR / "echod.toml"))
    assert values == {
        "backend": "epoll",
        "log_level": "info",
        "workers": usable_cpus(),
        "graceful_timeout": 30.0,
        "host": "::",
        "port": 7,
    }
    # Below TimeoutStopSec=, so the drain ends before SIGKILL.
    for unit in ("echod.service", "echod-standalone.service"):
        assert "\nTimeoutStopSec=45s\n" in (SYSTEMD_DIR / unit).read_text()
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "echod",
            "--config",
            str(SYSTEMD_DIR / "echod.toml"),
            "--check-config",
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert (result.returncode, result.stderr) == (0, "")


def test_install_script_refuses_a_prefix_the_service_cannot_see(tmp_path: Path) -> None:
    result = subprocess.run(
        ["sh", str(SYSTEMD_DIR / "install.sh")],
        env={**os.environ, "DESTDIR": str(tmp_path), "PREFIX": "/home/echod"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert "hidden from the hardened service" in result.stderr
    assert not any(tmp_path.iterdir())


# Event-loop libraries echod may run under MemoryDenyWriteExecute=yes. systemd
# implements it as a seccomp filter refusing mmap(PROT_WRITE|PROT_EXEC) and
# any mprotect() that adds PROT_EXEC; the probe counts exactly those calls.
MDWE_PROBES = {
    "asyncio": "import asyncio\nasync def main():\n"
    "    s = await asyncio.start_server(lambda r, w: None, '127.0.0.1', 0)\n"
    "    s.close()\nasyncio.run(main())",
    "uvloop": "import asyncio, uvloop\nasync def main():\n"
    "    s = await asyncio.start_server(lambda r, w: None, '127.0.0.1', 0)\n"
    "    s.close()\nuvloop.run(main())",
    "gevent": "import gevent, gevent.server\n"
    "s = gevent.server.StreamServer(('127.0.0.1', 0), lambda c, a: None)\n"
    "s.start(); gevent.sleep(0.01); s.stop()",
    # The probe's control: a ctypes callback is a libffi closure, which needs
    # writable executable memory, as cffi's ffi.callback() does.
    "ctypes-callback": "import ctypes\nctypes.CFUNCTYPE(ctypes.c_int)(lambda: 1)()",
}


@pytest.mark.parametrize("probe", MDWE_PROBES)
def test_memory_deny_write_execute_suits_the_event_loops(probe: str) -> None:
    strace = require_tool("strace")
    module = probe.split("-")[0]
    if module != "ctypes":
        require_module(module)
    result = subprocess.run(
        [
            strace,
            "-f",
            "-qq",
            "-e",
            "trace=mmap,mprotect,pkey_mprotect",
            sys.executable,
            "-c",
            MDWE_PROBES[probe],
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    if result.returncode != 0 and "ptrace" in result.stderr:
        missing(f"strace cannot trace here: {result.stderr.strip()[:200]}")
    assert result.returncode == 0, result.stderr[-2000:]
    refused = [
        line
        for line in result.stderr.splitlines()
        if "PROT_WRITE|PROT_EXEC" in line or re.search(r"mprotect\(.*PROT_EXEC", line)
    ]
    if probe == "ctypes-callback":
        assert refused, "the probe no longer sees writable executable memory"
    else:
        assert refused == []


def test_the_guide_names_every_variable_the_units_set() -> None:
    """systemd/README.md says what the units set: each ``Environment=ECHOD_*`` with its
    value, so an administrator reading the guide sees every setting in force."""
    guide = (SYSTEMD_DIR / "README.md").read_text()
    for unit in UNITS:
        for name, value in re.findall(
            r"^Environment=(ECHOD_\w+)=(\S+)", (SYSTEMD_DIR / unit).read_text(), re.M
        ):
            assert f"`{name}={value}`" in guide, f"{unit} sets {name}={value}"
