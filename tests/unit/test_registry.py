"""Backends are found by name, only the platform's own are offered, and an optional
dependency is imported only when its backend is chosen."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from echod import backends
from tests.support import Echod, echod, exchange, require_module, require_tool

# What each platform must offer, written out: the registry must agree with this list,
# not with a second copy of its own rules.
REACTORS = {
    "linux": ({"epoll", "poll", "select", "selectors"}, {"kqueue", "devpoll"}),
    "darwin": ({"kqueue", "poll", "select", "selectors"}, {"epoll", "devpoll"}),
}
EVERYWHERE = {"asyncio", "threads"}


def test_the_platforms_own_selectors_are_offered_and_no_others() -> None:
    if sys.platform not in REACTORS:
        pytest.skip(f"no expectation written for {sys.platform}")
    offered, absent = REACTORS[sys.platform]
    names = set(backends.available())
    assert offered | EVERYWHERE <= names
    assert not names & absent


# The system call each reactor name must wait in, observed with strace: a registry row
# pointing at the wrong selector would still load a backend that calls itself by the name.
WAITS_IN = {
    "epoll": {"epoll_wait", "epoll_pwait", "epoll_pwait2"},
    "poll": {"poll", "ppoll"},
    "select": {"select", "pselect6"},
    "selectors": {"epoll_wait", "epoll_pwait", "epoll_pwait2"},  # DefaultSelector on Linux
}
WAITS = sorted(set().union(*WAITS_IN.values()))


@pytest.mark.skipif(sys.platform != "linux", reason="the system calls are Linux's")
@pytest.mark.parametrize("name", sorted(WAITS_IN))
def test_each_reactor_name_waits_in_its_own_system_call(name: str, tmp_path: Path) -> None:
    strace = require_tool("strace")
    trace = tmp_path / "trace"
    server = Echod(
        "--backend", name, "--port", "0",
        wrapper=(strace, "-f", "-qq", "-o", str(trace), "-e", "trace=" + ",".join(WAITS)),
    )  # fmt: skip
    try:
        with server.connect() as sock:
            assert exchange(sock, b"which wait?") == b"which wait?"
    finally:
        for pid in server.children():  # echod under strace: its own SIGTERM, its own exit
            os.kill(pid, signal.SIGTERM)
        assert server.stop() == 0, server.log
    called = {line.split("(")[0].split()[-1] for line in trace.read_text().splitlines()}
    assert called & WAITS_IN[name], (name, called)
    assert not called & (set(WAITS) - WAITS_IN[name]), (name, called)


def test_the_optional_backends_of_the_dev_install_are_offered() -> None:
    for module in ("uvloop", "gevent"):
        require_module(module)
    assert {"uvloop", "gevent"} <= set(backends.available())


def test_without_backend_echod_serves_with_the_platforms_best_selector() -> None:
    best = {"linux": "epoll", "darwin": "kqueue"}.get(sys.platform)
    if best is None:
        pytest.skip(f"no expectation written for {sys.platform}")
    with echod("--port", "0") as server:
        assert f"(backend {best})" in server.log


LAZY = """
import sys
from echod import backends
backends.available()
before = {"echod.backends.aio", "uvloop", "gevent"} & set(sys.modules)
backends.load("asyncio")
after = {"echod.backends.aio", "uvloop", "gevent"} & set(sys.modules)
print(sorted(before), sorted(after))
"""


def test_loading_imports_the_backend_only_when_chosen() -> None:
    result = subprocess.run(
        [sys.executable, "-c", LAZY], capture_output=True, text=True, timeout=30, check=True
    )
    # Listing looks modules up without importing them; choosing asyncio imports its
    # module and nothing optional.
    assert result.stdout.split("\n")[0] == "[] ['echod.backends.aio']"


@pytest.mark.parametrize("name", ["nope", "kqueue" if sys.platform == "linux" else "epoll"])
def test_unknown_or_missing_backends_name_the_available_ones(name: str) -> None:
    with pytest.raises(backends.BackendUnavailable, match=r"available here: .*select"):
        backends.load(name)
