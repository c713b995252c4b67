"""What only the threads and gevent backends have; the rest of their behaviour is the
contract suite's (tests/contract runs once per backend, these two included)."""

from __future__ import annotations

import subprocess
import sys

from echod import backends
from tests.support import Echod, echod, require_module, round_trip

# Runs echod with gevent hidden: a None entry in sys.modules makes find_spec report the
# module missing and any import of it fail, as in an environment without the extra.
WITHOUT_GEVENT = (
    "import sys; sys.modules['gevent'] = None; "
    "from echod.cli import main; sys.exit(main(sys.argv[1:]))"
)


def run_echod(*args: str, hide_gevent: bool = False) -> subprocess.CompletedProcess[str]:
    command = (
        [sys.executable, "-c", WITHOUT_GEVENT] if hide_gevent else [sys.executable, "-m", "echod"]
    )
    return subprocess.run(
        [*command, *args], capture_output=True, text=True, timeout=30, stdin=subprocess.DEVNULL
    )


def test_both_are_listed_and_run_by_the_contract_suite_where_installed() -> None:
    require_module("gevent")
    listed = run_echod("--list-backends").stdout.split()
    assert {"threads", "gevent"} <= set(listed)
    assert {"threads", "gevent"} <= set(backends.available())  # tests/contract's params


def test_without_gevent_echod_says_how_to_install_it_and_exits_2() -> None:
    result = run_echod("--backend", "gevent", "--port", "0", hide_gevent=True)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "pip install 'echod[gevent]'" in lines[0]
    assert "listening" not in result.stderr


def test_without_gevent_it_is_not_listed_and_threads_still_serve() -> None:
    assert "gevent" not in run_echod("--list-backends", hide_gevent=True).stdout.split()
    server = Echod("--backend", "threads", "--port", "0", program=("-c", WITHOUT_GEVENT))
    with server, server.connect() as sock:
        assert round_trip(sock, b"no gevent needed") == b"no gevent needed"


def test_threads_without_a_cap_say_which_cap_they_keep() -> None:
    with echod("--backend", "threads", "--port", "0") as server:
        server.wait_for("threads backend: at most 10000 connections at once")
    with echod("--backend", "threads", "--port", "0", "--max-connections", "3") as server:
        assert "at most 10000" not in server.log
