"""The uring backend: present where CI runs, refused in one line, and at home under the
hardened units' own system-call filter."""

from __future__ import annotations

import os
import platform
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

import pytest

from echod import backends
from tests.service.seccomp_exec import AUDIT_ARCH, syscall_groups, syscall_numbers, unit_filter
from tests.support import ROOT, echod, exchange, require_tool

UNITS = ["echod.service", "echod-standalone.service"]


def test_uring_is_available_where_ci_runs() -> None:
    refused = dict(backends.refused())
    if "uring" in backends.available():
        return
    reason = refused.get("uring", "not on this platform")
    if os.environ.get("CI") == "true":
        pytest.fail(f"uring backend unavailable under CI: {reason}")
    pytest.skip(f"uring backend unavailable: {reason}")


def unit_wrapper(unit: str, without: Sequence[str] = ()) -> tuple[str, ...]:
    """A command prefix that runs what follows under ``unit``'s SystemCallFilter=."""
    if platform.machine() not in AUDIT_ARCH:
        pytest.skip(f"the filter is built for {', '.join(AUDIT_ARCH)}, not {platform.machine()}")
    numbers = syscall_numbers(require_tool("gcc"))
    groups = syscall_groups(require_tool("systemd-analyze"))
    allowed, error = unit_filter(ROOT / "systemd" / unit, groups)
    assert {"io_uring_setup", "io_uring_enter"} <= allowed, "the unit no longer allows io_uring"
    kept = sorted(numbers[name] for name in allowed - set(without) if name in numbers)
    return (
        sys.executable,
        "-m",
        "tests.service.seccomp_exec",
        ",".join(map(str, kept)),
        str(error),
        "--",
    )


@pytest.mark.parametrize("unit", UNITS)
def test_uring_serves_under_the_units_system_call_filter(unit: str) -> None:
    if "uring" not in backends.available():
        pytest.skip("uring backend unavailable (test_uring_is_available_where_ci_runs says why)")
    wrapper = unit_wrapper(unit)
    payload = os.urandom(1 << 20)
    with echod("--backend", "uring", "--port", "0", wrapper=wrapper) as server:
        clients = [server.connect() for _ in range(8)]
        for sock in clients:
            assert exchange(sock, payload) == payload
            sock.close()
        assert "connections open=0 total=8" in server.report_until("open=0 total=8")


def run_filtered(wrapper: Sequence[str], *args: str) -> subprocess.CompletedProcess[str]:
    """``python -m echod ARGS`` (or ``python -c ...`` when ARGS start with -c) under
    ``wrapper``."""
    program = [] if args[:1] == ("-c",) else ["-m", "echod"]
    return subprocess.run(
        [*wrapper, sys.executable, *program, *args],
        capture_output=True,
        text=True,
        timeout=30,
        cwd=Path(ROOT),
    )


def test_uring_refused_by_seccomp_exits_2_in_one_line() -> None:
    """As Docker's default profile does: io_uring_setup answered with EPERM."""
    if "uring" not in backends.available():
        pytest.skip("uring backend unavailable (test_uring_is_available_where_ci_runs says why)")
    wrapper = unit_wrapper("echod.service", without=["io_uring_setup"])
    refused = run_filtered(wrapper, "--backend", "uring", "--port", "0")
    assert refused.returncode == 2, refused.stderr
    lines = refused.stderr.splitlines()
    assert len(lines) == 1 and "uring" in lines[0] and "io_uring is refused here" in lines[0], lines
    listed = run_filtered(wrapper, "--list-backends")
    assert listed.returncode == 0, listed.stderr
    assert "uring" not in listed.stdout.split()
    assert "epoll" in listed.stdout.split()
    assert "uring unavailable: io_uring is refused here" in listed.stderr


# Runs echod as an install built without liburing is: no echod._uring extension.
WITHOUT_EXTENSION = (
    "import sys; sys.modules['echod._uring'] = None; "
    "from echod.cli import main; sys.exit(main(sys.argv[1:]))"
)


def test_built_without_liburing_uring_is_refused_in_one_line() -> None:
    refused = run_filtered((), "-c", WITHOUT_EXTENSION, "--backend", "uring", "--port", "0")
    assert refused.returncode == 2, refused.stderr
    lines = refused.stderr.splitlines()
    assert len(lines) == 1 and "built without liburing" in lines[0], lines
    listed = run_filtered((), "-c", WITHOUT_EXTENSION, "--list-backends")
    assert listed.returncode == 0 and "uring" not in listed.stdout.split()
    assert "uring unavailable: echod was built without liburing" in listed.stderr
