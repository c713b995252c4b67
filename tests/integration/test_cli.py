"""The echod command as operators run it: bad input is one line and a non-zero exit."""

from __future__ import annotations

import os
import re
import resource
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from echod import __version__
from tests.support import ROOT, echod, exchange, missing, require_tool


def run_echod(
    *args: str, env: dict[str, str] | None = None, wrapper: tuple[str, ...] = ()
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*wrapper, sys.executable, "-m", "echod", *args],
        capture_output=True,
        text=True,
        timeout=30,
        cwd=ROOT,
        env={**os.environ, **(env or {})},
    )


def assert_one_line_error(result: subprocess.CompletedProcess[str], status: int, text: str) -> None:
    assert result.returncode == status, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("echod: error:")
    assert text in lines[0]
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize(
    ("args", "env", "text"),
    [
        (["--port", "70000"], None, "out of range"),
        (["--port", "-1"], None, "out of range"),
        (["--backend", "nope"], None, "unknown backend 'nope'; available here:"),
        (
            ["--backend", "kqueue" if sys.platform == "linux" else "epoll"],
            None,
            "not available on this platform",
        ),
        (["--high-water", "10", "--low-water", "20"], None, "low water"),
        (["--log-level", "loud"], None, "invalid choice"),
        ([], {"ECHOD_PORT": "seven"}, "ECHOD_PORT='seven'"),
        ([], {"ECHOD_BACKEND": "nope"}, "unknown backend"),
        (["--workers", "100000"], None, "above the ceiling of"),
        (["--workers", "lots"], None, "or auto"),
        (["--listen", "localhost"], None, "argument --listen: address 'localhost' is not"),
        (["--listen", "udp:x"], None, "'udp:x' is not HOST:PORT, [V6]:PORT, unix:/PATH or udp:"),
        (["--listen", "udp:unix:/x"], None, "UDP listens on HOST:PORT"),
        (["--metrics", "9862"], None, "argument --metrics: address '9862'"),
        (["--metrics", "udp:127.0.0.1:0"], None, "not UDP"),
        ([], {"ECHOD_LISTEN": "127.0.0.1:x"}, "ECHOD_LISTEN='127.0.0.1:x'"),
        ([], {"ECHOD_METRICS": "[::1"}, "ECHOD_METRICS='[::1'"),
    ],
)
def test_bad_settings_exit_2_with_one_line(
    args: list[str], env: dict[str, str] | None, text: str
) -> None:
    assert_one_line_error(run_echod(*args, env=env), 2, text)


def test_the_worker_ceiling_stays_within_rlimit_nproc() -> None:
    def few_processes() -> None:
        resource.setrlimit(
            resource.RLIMIT_NPROC, (10, resource.getrlimit(resource.RLIMIT_NPROC)[1])
        )

    result = subprocess.run(
        [sys.executable, "-m", "echod", "--workers", "12", "--list-backends"],
        capture_output=True,
        text=True,
        timeout=30,
        preexec_fn=few_processes,
    )
    assert_one_line_error(result, 2, "above the ceiling of 9")


def test_the_worker_ceiling_allows_the_100k_bench_on_two_cpus() -> None:
    # Six workers carry 100,000 connections under the per-process file limit.
    assert run_echod("--workers", "16", "--list-backends").returncode == 0


def test_an_unknown_echod_variable_is_named_in_a_warning() -> None:
    result = run_echod("--list-backends", env={"ECHOD_PROT": "5000"})
    assert result.returncode == 0
    assert result.stderr.strip() == (
        "echod: warning: ignoring unknown ECHOD_PROT (did you mean ECHOD_PORT?)"
    )


def test_help_shows_defaults_as_the_option_takes_them() -> None:
    shown = " ".join(run_echod("--help").stdout.split())
    assert "(default: 100/1M)" in shown
    assert "(default: 53,123,161,389,1900,5353,11211)" in shown
    assert "(100.0," not in shown and "(53," not in shown


def test_an_address_not_on_this_machine_exits_1_with_one_line() -> None:
    # Well-formed but unusable: a listener error (1), not a bad setting (2).
    assert_one_line_error(
        run_echod("--listen", "192.0.2.1:0"), 1, "cannot listen on 192.0.2.1:0: no such address"
    )
    assert_one_line_error(
        run_echod("--listen", "udp:192.0.2.1:0"), 1, "cannot listen on udp:192.0.2.1:0"
    )


def test_a_host_that_does_not_resolve_exits_1_with_one_line() -> None:
    assert_one_line_error(
        run_echod("--host", "no-such-host.invalid", "--port", "0"), 1, "does not resolve"
    )


def test_an_address_in_use_exits_1_with_one_line() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        assert_one_line_error(run_echod("--port", str(port)), 1, "address already in use")


def test_a_privileged_port_without_the_capability_exits_1_with_one_line() -> None:
    wrapper: tuple[str, ...] = ()
    if os.geteuid() == 0:
        # As root, only dropping CAP_NET_BIND_SERVICE makes port 1 refused.
        wrapper = (
            require_tool("setpriv"),
            "--bounding-set",
            "-net_bind_service",
            "--inh-caps",
            "-net_bind_service",
        )
    result = run_echod("--port", "1", wrapper=wrapper)
    assert_one_line_error(
        result, 1, "permission denied (ports below 1024 need root or CAP_NET_BIND_SERVICE)"
    )


def test_version_and_backend_list() -> None:
    assert run_echod("--version").stdout.strip() == f"echod {__version__}"
    listed = run_echod("--list-backends").stdout.split()
    assert "asyncio" in listed and "select" in listed


def test_the_console_script_serves_and_stops_on_sigterm() -> None:
    script = Path(sys.executable).with_name("echod")
    if not script.exists():
        missing(f"no console script beside {sys.executable}: install the package")
    proc = subprocess.Popen([str(script), "--port", "0"], stderr=subprocess.PIPE, text=True)
    assert proc.stderr is not None
    line = proc.stderr.readline()
    assert "listening on 127.0.0.1:" in line
    proc.terminate()
    assert proc.wait(20) == 0


def test_serves_several_listeners_at_once_including_ipv6_and_unix(tmp_path: Path) -> None:
    path = tmp_path / "echo.sock"
    listens = ["--listen", "127.0.0.1:0", "--listen", f"unix:{path}"]
    if socket.has_ipv6:
        listens += ["--listen", "[::1]:0"]
    with echod(*listens) as server:
        server.wait_for("unix:")
        ports = [int(port) for port in re.findall(r"listening on \S+:(\d+)", server.log)]
        with socket.create_connection(("127.0.0.1", ports[0]), timeout=10) as sock:
            assert exchange(sock, b"four") == b"four"
        with socket.socket(socket.AF_UNIX) as sock:
            sock.connect(str(path))
            assert exchange(sock, b"unix") == b"unix"
        if socket.has_ipv6 and len(ports) > 1:
            with socket.create_connection(("::1", ports[-1]), timeout=10) as sock:
                assert exchange(sock, b"six") == b"six"
    assert not path.exists(), "the unix socket file should be removed at exit"
