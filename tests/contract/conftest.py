"""Every contract test runs once per backend available on this platform."""

from __future__ import annotations

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
        yield running
