"""Fixtures: the test echo servers of ``loadtest_servers``, closed after each test,
and ``loop``, which runs a test once on each loop of echod-bench."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from loadtest_servers import EchoServer

from loadtest.pollers import LOOP_ENV, rrloop

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:  # tests/ is a directory of the repository, not installed
    sys.path.insert(0, str(ROOT))

from tests.support import missing  # noqa: E402


@pytest.fixture
def toy_echo_server() -> Iterator[EchoServer]:
    server = EchoServer()
    yield server
    server.close()


@pytest.fixture
def faulty_server(request: pytest.FixtureRequest) -> Iterator[EchoServer]:
    server = EchoServer(fault=request.param)
    yield server
    server.close()


@pytest.fixture(params=["c-rr", "epoll"])
def loop(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """The loop an rr run should report: the C one, then the pure-Python one forced.

    Under CI=true a missing extension fails here (``missing``): the C loop is
    what users run, so a build that silently fell back must not pass.
    """
    if request.param == "c-rr":
        monkeypatch.delenv(LOOP_ENV, raising=False)
        if rrloop() is None:
            missing("loadtest._rrloop is not built (pip install -e . with a C compiler)")
    else:
        monkeypatch.setenv(LOOP_ENV, "python")
    return str(request.param)
