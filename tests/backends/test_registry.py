"""How the threads and gevent backends are found, and what happens without gevent."""

from __future__ import annotations

import subprocess
import sys

from echod.backends import BY_NAME
from echod.backends.threads import DEFAULT_MAX_CONNECTIONS, connection_cap

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


def test_both_backends_are_listed_where_they_can_run() -> None:
    listed = run_echod("--list-backends").stdout.split()
    assert "threads" in listed
    assert ("gevent" in listed) == BY_NAME["gevent"].available()


def test_without_gevent_echod_says_how_to_install_it_and_exits_2() -> None:
    result = run_echod("--backend", "gevent", "--port", "0", hide_gevent=True)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "pip install 'echod[gevent]'" in lines[0]
    assert "listening" not in result.stderr


def test_without_gevent_it_is_not_listed_and_other_backends_still_run() -> None:
    assert "gevent" not in run_echod("--list-backends", hide_gevent=True).stdout.split()


def test_threads_cap_is_the_configured_one_or_ten_thousand_threads() -> None:
    assert connection_cap(2) == 2
    assert connection_cap(50_000) == 50_000  # the operator's word wins
    assert connection_cap(0) == DEFAULT_MAX_CONNECTIONS == 10_000
