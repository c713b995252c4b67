"""TLS suites: one certificate set per session, one TLS echod per backend."""

from __future__ import annotations

import re
from collections.abc import Iterator

import pytest

from echod import backends, tls
from tests.support import Echod, echod
from tests.tls.tls_support import Pki, make_pki

# uring refuses tls: listeners (one line, tests/tls/test_startup.py); the rest serve them.
BACKENDS = [name for name in backends.available() if name in tls.BACKENDS]


@pytest.fixture(scope="session")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture(params=BACKENDS, scope="module")
def backend(request: pytest.FixtureRequest) -> str:
    name: str = request.param
    return name


@pytest.fixture(scope="module")
def tls_server(backend: str, pki: Pki) -> Iterator[Echod]:
    """echod serving tls: with the session's server certificate (TLS 1.2 and 1.3)."""
    with echod("--backend", backend, "--listen", "tls:127.0.0.1:0", *pki.server_args()) as running:
        assert re.search(rf"\(backend {backend}[ )]", running.log), running.log
        yield running
