"""TLS suites: one certificate set per session, one TLS echod per backend."""

from __future__ import annotations

import re
import sys
from collections.abc import Iterator
from typing import TYPE_CHECKING

import pytest

from echod import backends, tls
from tests.support import ROOT, Echod, echod, require_tool
from tests.tls.tls_support import Pki, make_pki

if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))  # bench/ is not a package pip installs

if TYPE_CHECKING:
    from bench.servers import RunningServer

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


@pytest.fixture(scope="module")
def c_tls(pki: Pki) -> Iterator[RunningServer]:
    """The C TLS reference server, built, started and stopped as the bench does
    (RunningServer), which checks its exit."""
    require_tool("gcc")
    from bench import servers

    problem = servers.build_tls_reference()
    assert problem is None, problem
    argv = (str(servers.TLS_REFERENCE_BINARY), pki.path("server.pem"), pki.path("server.key"))
    running = servers.RunningServer(servers.ServerSpec(servers.TLS_REFERENCE, argv), None)
    yield running
    assert running.stop() == 0
    assert not running.killed
