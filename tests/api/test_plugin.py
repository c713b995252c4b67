"""The pytest plugin as another project sees it: sample test files run by ``pytester``.

In-process runs, so that what a sample leaves behind (threads, descriptors, ports) is
left in this process, where it is checked.
"""

from __future__ import annotations

import os
import socket
import threading
import time

import pytest

# Imported before pytester's snapshot of sys.modules: a sample that patches it patches
# the module the servers use (a module first imported in one in-process run is dropped
# at its end, and the next run would import a second copy).
from echod.backends import selector_backends  # noqa: F401
from tests.support import require_tool

EVERY_FIXTURE = """
import asyncio
import socket
import ssl

import pytest


def echo(address, payload, kind=socket.SOCK_STREAM):
    with socket.create_connection(address, timeout=10) as client:
        client.sendall(payload)
        client.shutdown(socket.SHUT_WR)
        received = b""
        while chunk := client.recv(65536):
            received += chunk
    return received


def test_echo_server(echo_server):
    assert echo(echo_server.address, b"x" * 100_000) == b"x" * 100_000
    assert echo_server.stats().bytes_in == 100_000


def test_udp_echo_server(udp_echo_server):
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as client:
        client.settimeout(10)
        for _ in range(200):  # past the daemon's per-source rate: fixtures have none
            client.sendto(b"ping", udp_echo_server.udp_address)
            assert client.recv(10) == b"ping"


def test_factory(echo_server_factory):
    server = echo_server_factory(backend="poll", faults=["reset-after:10"], every=2,
                                 listen=["127.0.0.1:0"])
    assert server.backend == "poll"
    with pytest.raises(OSError):  # ECONNRESET, or ENOTCONN if it came before shutdown()
        echo(server.address, b"y" * 1000)
    assert echo(server.address, b"y" * 1000) == b"y" * 1000


def test_tls_echo_server(tls_echo_server, echo_server_ssl_context, echo_server_ca):
    assert echo_server_ca.exists()
    with socket.create_connection(tls_echo_server.address, timeout=10) as raw:
        with echo_server_ssl_context.wrap_socket(raw, server_hostname="localhost") as tls:
            tls.sendall(b"secret")
            assert tls.recv(100) == b"secret"


@pytest.mark.asyncio
async def test_async_echo_server(async_echo_server):
    assert async_echo_server.thread is None  # on this test's loop
    reader, writer = await asyncio.open_connection(*async_echo_server.address)
    writer.write(b"async")
    assert await reader.readexactly(5) == b"async"
    writer.close()
    await writer.wait_closed()


@pytest.mark.asyncio
async def test_async_factory_and_udp(async_echo_server_factory, async_udp_echo_server):
    server = await async_echo_server_factory(backend="epoll", faults=["delay:10ms"])
    assert server.thread is not None
    reader, writer = await asyncio.open_connection(*server.address)
    writer.write(b"later")
    assert await reader.readexactly(5) == b"later"
    writer.close()
    loop = asyncio.get_running_loop()
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as client:
        client.setblocking(False)
        await loop.sock_sendto(client, b"dgram", async_udp_echo_server.udp_address)
        assert await loop.sock_recv(client, 10) == b"dgram"
"""

FAILING = """
import socket

def test_fails_mid_exchange(echo_server, echo_server_factory):
    other = echo_server_factory(backend="asyncio")
    ports = [echo_server.port, other.port]
    with open("ports", "w") as file:  # in pytester's directory, for the outer test
        file.write(" ".join(map(str, ports)))
    with socket.create_connection(echo_server.address) as client:
        client.sendall(b"half of an exchange")
        assert client.recv(100) == b"something else"
"""

DYING = """
from echod.backends import selector_backends


def test_the_server_dies(echo_server_factory, monkeypatch):
    import socket

    def broken(self, mask):
        raise RuntimeError("the backend broke mid-test")

    monkeypatch.setattr(selector_backends.Connection, "on_event", broken)
    server = echo_server_factory(backend="epoll")
    with socket.create_connection(server.address, timeout=10) as client:
        client.sendall(b"kill it")
        try:  # closed by the dying server, its input unread: a reset, or the end
            assert client.recv(10) == b""
        except ConnectionResetError:
            pass
"""


@pytest.fixture(autouse=True)
def sample_project(pytester: pytest.Pytester) -> None:
    """Another project's settings: pytest-asyncio's loop scope said, as it asks."""
    pytester.makeini("[pytest]\nasyncio_default_fixture_loop_scope = function\n")


def open_fds() -> set[int]:
    return {int(name) for name in os.listdir("/proc/self/fd")}


def settled(condition: object) -> bool:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if condition():  # type: ignore[operator]
            return True
        time.sleep(0.01)
    return False


def test_a_sample_using_every_fixture_passes(pytester: pytest.Pytester) -> None:
    require_tool("openssl")
    pytester.makepyfile(test_sample=EVERY_FIXTURE)
    result = pytester.runpytest_inprocess()
    result.assert_outcomes(passed=6)


def test_a_failing_sample_leaves_no_thread_descriptor_or_port(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_sample=FAILING)
    threads, fds = set(threading.enumerate()), open_fds()
    result = pytester.runpytest_inprocess()
    result.assert_outcomes(failed=1)
    assert set(threading.enumerate()) == threads
    assert settled(lambda: open_fds() <= fds), open_fds() - fds
    ports = (pytester.path / "ports").read_text().split()
    for port in ports:
        with socket.socket() as probe, pytest.raises(ConnectionRefusedError):
            probe.connect(("127.0.0.1", int(port)))


def test_a_server_that_died_fails_the_test_with_its_traceback(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_sample=DYING)
    threads = set(threading.enumerate())
    result = pytester.runpytest_inprocess()
    result.assert_outcomes(passed=1, errors=1)  # the body passed; its teardown did not
    result.stdout.fnmatch_lines(["*ServerError: the echod server failed:*"])
    result.stdout.fnmatch_lines(["*RuntimeError: the backend broke mid-test*"])
    assert set(threading.enumerate()) == threads


def test_the_plugin_is_off_with_p_no_echod(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_sample="def test_it(echo_server):\n    pass\n")
    result = pytester.runpytest_inprocess("-p", "no:echod")
    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines(["*fixture 'echo_server' not found*"])
