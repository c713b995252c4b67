"""pytest fixtures: a verified echo server, or a misbehaving one, for testing clients.

Registered through the ``pytest11`` entry point ``echod``: installing echod makes the
fixtures available to every project's tests; ``-p no:echod`` turns them off. Each
server runs in this process (:func:`echod.running`, or :func:`echod.serving` on the
test's loop for the async variants) on loopback with port 0, and is drained and joined
at teardown; a server that died fails its test with its traceback (:class:`echod.
ServerError` at teardown) instead of hanging it. docs/api.md lists them.
"""

from __future__ import annotations

import contextlib
import importlib.util
import shutil
import ssl
import subprocess
from collections.abc import AsyncIterator, Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest

from echod.embedding import AsyncEchoServer, ThreadedEchoServer, running, serving
from echod.faults import Fault

# UDP fixtures answer whatever a test sends: the daemon's per-source rate limit guards
# an exposed port against reflection, which a test's loopback port is not.
UDP_UNLIMITED: dict[str, Any] = {"udp_rate": (0.0, 0), "udp_budget": 0}

# The async fixtures need pytest-asyncio (imported only where it is installed).
HAS_PYTEST_ASYNCIO = importlib.util.find_spec("pytest_asyncio") is not None


class EchoServerFactory:
    """``echo_server_factory(listen=..., backend=..., faults=..., every=..., **settings)``:
    start an echo server for this test; every one is closed at its teardown."""

    def __init__(self, stack: contextlib.ExitStack) -> None:
        self._stack = stack

    def __call__(
        self,
        listen: Sequence[str] | str = ("127.0.0.1:0",),
        *,
        backend: str | None = None,
        faults: Sequence[str | Fault] | str = (),
        every: int = 1,
        **settings: Any,
    ) -> ThreadedEchoServer:
        listen, faults, settings = _normalised(listen, faults, settings)
        return self._stack.enter_context(
            running(listen, backend=backend, faults=faults, every=every, **settings)
        )


def _normalised(
    listen: Sequence[str] | str, faults: Sequence[str | Fault] | str, settings: dict[str, Any]
) -> tuple[list[str], list[str | Fault], dict[str, Any]]:
    """One address or fault may be a bare string; a UDP listener in a test is unlimited."""
    addresses = [listen] if isinstance(listen, str) else list(listen)
    specs: list[str | Fault] = [faults] if isinstance(faults, str) else list(faults)
    if any(text.startswith("udp:") for text in addresses):
        settings = {**UDP_UNLIMITED, **settings}
    return addresses, specs, settings


class AsyncEchoServerFactory:
    """The async variant: ``await async_echo_server_factory(...)``, on the test's loop
    (asyncio or uvloop backend) or in a thread (any other)."""

    def __init__(self, stack: contextlib.AsyncExitStack) -> None:
        self._stack = stack

    async def __call__(
        self,
        listen: Sequence[str] | str = ("127.0.0.1:0",),
        *,
        backend: str | None = None,
        faults: Sequence[str | Fault] | str = (),
        every: int = 1,
        **settings: Any,
    ) -> AsyncEchoServer:
        listen, faults, settings = _normalised(listen, faults, settings)
        return await self._stack.enter_async_context(
            serving(listen, backend=backend, faults=faults, every=every, **settings)
        )


@pytest.fixture
def echo_server_factory() -> Iterator[EchoServerFactory]:
    """Start echo servers with any listen addresses, backend, faults and settings."""
    with contextlib.ExitStack() as stack:
        yield EchoServerFactory(stack)


@pytest.fixture
def echo_server(echo_server_factory: EchoServerFactory) -> ThreadedEchoServer:
    """A TCP echo server on 127.0.0.1, port chosen by the kernel: ``echo_server.address``."""
    return echo_server_factory()


@pytest.fixture
def udp_echo_server(echo_server_factory: EchoServerFactory) -> ThreadedEchoServer:
    """A UDP echo server on 127.0.0.1: ``udp_echo_server.udp_address``."""
    return echo_server_factory(["udp:127.0.0.1:0"])


@pytest.fixture(scope="session")
def echo_server_ca(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A CA made for this session (by the ``openssl`` command), the one to trust:
    ``tls_echo_server``'s certificate, for ``localhost`` and 127.0.0.1, is signed by it.
    Its directory also holds ``server.pem`` and ``server.key``."""
    openssl = shutil.which("openssl")
    if openssl is None:
        pytest.skip("the openssl command is needed to make tls_echo_server's certificates")
    directory = tmp_path_factory.mktemp("echod-ca")
    make_certificates(openssl, directory)
    return directory / "ca.pem"


@pytest.fixture
def echo_server_ssl_context(echo_server_ca: Path) -> ssl.SSLContext:
    """A client context that trusts ``echo_server_ca`` (and checks ``localhost``)."""
    return ssl.create_default_context(cafile=str(echo_server_ca))


@pytest.fixture
def tls_echo_server(
    echo_server_factory: EchoServerFactory, echo_server_ca: Path
) -> ThreadedEchoServer:
    """A TLS echo server on 127.0.0.1 (``tls:`` listener); trust ``echo_server_ca``."""
    directory = echo_server_ca.parent
    return echo_server_factory(
        ["tls:127.0.0.1:0"],
        tls_cert=str(directory / "server.pem"),
        tls_key=str(directory / "server.key"),
    )


def make_certificates(openssl: str, directory: Path) -> None:
    """A P-256 CA and a server certificate for localhost and 127.0.0.1, valid 2 days."""

    def run(*args: str) -> None:
        subprocess.run([openssl, *args], cwd=directory, check=True, capture_output=True, timeout=60)

    curve = ("-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes")
    run("req", "-x509", *curve, "-keyout", "ca.key", "-out", "ca.pem", "-days", "2",
        "-subj", "/CN=echod test CA", "-addext", "basicConstraints=critical,CA:TRUE",
        "-addext", "keyUsage=critical,keyCertSign")  # fmt: skip
    run("req", *curve, "-keyout", "server.key", "-out", "server.csr", "-subj", "/CN=localhost")
    (directory / "server.ext").write_text(
        "subjectAltName=DNS:localhost,IP:127.0.0.1\nextendedKeyUsage=serverAuth\n"
    )
    run("x509", "-req", "-in", "server.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
        "-CAcreateserial", "-out", "server.pem", "-days", "2", "-extfile", "server.ext")  # fmt: skip


if HAS_PYTEST_ASYNCIO:
    import pytest_asyncio

    @pytest_asyncio.fixture
    async def async_echo_server_factory() -> AsyncIterator[AsyncEchoServerFactory]:
        """As ``echo_server_factory``, awaited, serving on the test's own loop."""
        async with contextlib.AsyncExitStack() as stack:
            yield AsyncEchoServerFactory(stack)

    @pytest_asyncio.fixture
    async def async_echo_server(
        async_echo_server_factory: AsyncEchoServerFactory,
    ) -> AsyncEchoServer:
        """A TCP echo server on the test's loop (asyncio or uvloop), no thread."""
        return await async_echo_server_factory()

    @pytest_asyncio.fixture
    async def async_udp_echo_server(
        async_echo_server_factory: AsyncEchoServerFactory,
    ) -> AsyncEchoServer:
        """A UDP echo server on the test's loop."""
        return await async_echo_server_factory(["udp:127.0.0.1:0"])


__all__ = ["AsyncEchoServerFactory", "EchoServerFactory"]
