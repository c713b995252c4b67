"""Every contract test runs once per backend available on this platform."""

from __future__ import annotations

import re
from collections.abc import Iterator

import pytest

from echod import backends
from tests.support import Echod, echod

BACKENDS = backends.available()


@pytest.fixture(params=BACKENDS, scope="module")
def backend(request: pytest.FixtureRequest) -> str:
    name: str = request.param
    return name


@pytest.fixture(scope="module")
def server(backend: str) -> Iterator[Echod]:
    """One default-configured echod per backend, shared by the tests that only echo."""
    with echod("--backend", backend, "--port", "0") as running:
        # The registry handed over the backend asked for, not another one.
        assert re.search(rf"\(backend {backend}[ )]", running.log), running.log
        yield running
