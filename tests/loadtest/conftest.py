"""Fixtures: the test echo servers of ``loadtest_servers``, closed after each test."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from loadtest_servers import EchoServer


@pytest.fixture
def echo_server() -> Iterator[EchoServer]:
    server = EchoServer()
    yield server
    server.close()


@pytest.fixture
def faulty_server(request: pytest.FixtureRequest) -> Iterator[EchoServer]:
    server = EchoServer(fault=request.param)
    yield server
    server.close()
