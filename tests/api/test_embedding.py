"""echod.running and echod.serving: exact bytes, counters, a close with clients open,
and nothing of the host's process touched (signals, logging, limits, threads, fds).

Run on every backend that serves here; the async form with pytest-asyncio on the
test's own loop (asyncio, uvloop: no thread) and on a thread (the others).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import resource
import signal
import socket
import threading
import time
from collections.abc import Iterator

import pytest

import echod
from echod import backends
from echod.backends import base, selector_backends
from echod.lifecycle import HANDLED_SIGNALS

BACKENDS = backends.available()
UDP_BACKENDS = [name for name in BACKENDS if backends.serves_udp(name)]
ON_LOOP = [name for name in ("asyncio", "uvloop") if name in BACKENDS]
PAYLOAD = bytes(range(256)) * 1000  # 256,000 bytes: several reads, every byte value


def exchange(sock: socket.socket, payload: bytes) -> bytes:
    """Send ``payload`` while reading its echo (so neither side blocks), then EOF."""
    sock.settimeout(10)
    sender = threading.Thread(target=lambda: (sock.sendall(payload), sock.shutdown(socket.SHUT_WR)))
    sender.start()
    received = bytearray()
    while True:
        chunk = sock.recv(65536)
        if not chunk:
            break
        received += chunk
    sender.join()
    return bytes(received)


def wait_for(condition: object, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():  # type: ignore[operator]
            return True
        time.sleep(0.01)
    return False


def open_fds() -> set[int]:
    return {int(name) for name in os.listdir("/proc/self/fd")}


@pytest.fixture
def host_untouched() -> Iterator[None]:
    """What an embedded server must leave as it found it."""
    if "uvloop" in BACKENDS:
        # libuv opens a signal pipe with its first loop and keeps it for the process:
        # once, not per server.
        import uvloop

        uvloop.new_event_loop().close()
    handlers = {signum: signal.getsignal(signum) for signum in HANDLED_SIGNALS}
    root = list(logging.getLogger().handlers)
    ours = list(logging.getLogger("echod").handlers)
    limit = resource.getrlimit(resource.RLIMIT_NOFILE)
    threads = set(threading.enumerate())
    fds = open_fds()
    yield
    assert {signum: signal.getsignal(signum) for signum in HANDLED_SIGNALS} == handlers
    assert logging.getLogger().handlers == root
    assert logging.getLogger("echod").handlers == ours
    assert resource.getrlimit(resource.RLIMIT_NOFILE) == limit
    assert set(threading.enumerate()) == threads
    assert wait_for(lambda: open_fds() <= fds), open_fds() - fds


@pytest.mark.usefixtures("host_untouched")
@pytest.mark.parametrize("backend", BACKENDS)
def test_every_byte_comes_back_and_is_counted(backend: str) -> None:
    with echod.running(backend=backend) as server:
        assert server.backend == backend
        assert server.port != 0 and server.addresses == (f"127.0.0.1:{server.port}",)
        assert server.thread is not None and server.thread.is_alive()
        with socket.create_connection(server.address) as client:
            assert exchange(client, PAYLOAD) == PAYLOAD
        assert wait_for(lambda: server.stats().connections_open == 0)
        stats = server.stats()
        assert (stats.bytes_in, stats.bytes_out) == (len(PAYLOAD), len(PAYLOAD))
        assert stats.connections_total == 1
    assert not server.thread.is_alive()
    assert server.closed


@pytest.mark.usefixtures("host_untouched")
@pytest.mark.parametrize("backend", BACKENDS)
def test_close_with_a_connection_open_drains_it(backend: str) -> None:
    """An idle client is closed after the short quiet period; one mid-exchange gets its
    whole echo first, as SIGTERM does for the daemon."""
    with echod.running(backend=backend) as server:
        idle = socket.create_connection(server.address)
        busy = socket.create_connection(server.address)
        busy.sendall(b"before the close")
        busy.settimeout(10)
        assert busy.recv(100) == b"before the close"
        assert wait_for(lambda: server.stats().connections_open == 2)
        started = time.monotonic()
    closing = time.monotonic() - started
    with idle, busy:
        idle.settimeout(10)
        assert idle.recv(1) == b""  # closed by the server: end of input, not a reset
        assert busy.recv(1) == b""
    assert server.stats().connections_open == 0
    assert server.stats().connections_total == 2
    assert closing < echod.embedding.GRACEFUL_TIMEOUT  # quiet ones closed before it


@pytest.mark.timing
@pytest.mark.parametrize("backend", BACKENDS)
def test_a_teardown_with_an_idle_client_costs_no_second(backend: str) -> None:
    """The short quiet period (0.05 s) closed the idle client: the daemon's takes 1 s."""
    with echod.running(backend=backend) as server, socket.create_connection(server.address):
        assert wait_for(lambda: server.stats().connections_open == 1)
        started = time.monotonic()
        server.close()
        assert time.monotonic() - started < base.DRAIN_QUIET


@pytest.mark.usefixtures("host_untouched")
@pytest.mark.parametrize("backend", UDP_BACKENDS)
def test_udp_and_tcp_on_one_server(backend: str) -> None:
    with echod.running(
        ["127.0.0.1:0", "udp:127.0.0.1:0"], backend=backend, udp_rate=(0.0, 0)
    ) as server:
        host, port = server.udp_address
        assert server.addresses[1] == f"udp:{host}:{port}"
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as client:
            client.settimeout(10)
            for n in range(5):
                client.sendto(b"datagram %d" % n, server.udp_address)
                assert client.recvfrom(100) == (b"datagram %d" % n, server.udp_address)
        stats = server.stats()
        assert stats.udp is not None
        assert (stats.udp.received, stats.udp.echoed) == (5, 5)
        assert stats.udp.bytes_echoed == sum(len(b"datagram %d" % n) for n in range(5))


@pytest.mark.usefixtures("host_untouched")
async def test_serving_on_the_test_loop_uses_no_thread() -> None:
    """pytest-asyncio's loop (the stdlib's): no backend named means this loop's."""
    await serve_on_this_loop(None)


@pytest.mark.usefixtures("host_untouched")
@pytest.mark.parametrize("backend", ON_LOOP)
def test_serving_on_a_loop_of_the_backends_kind_uses_no_thread(backend: str) -> None:
    factory = asyncio.new_event_loop
    if backend == "uvloop":
        import uvloop

        factory = uvloop.new_event_loop
    loop = factory()
    try:
        loop.run_until_complete(serve_on_this_loop(backend))
    finally:
        loop.close()


async def serve_on_this_loop(backend: str | None) -> None:
    async with echod.serving(backend=backend) as server:
        assert server.thread is None
        assert threading.active_count() == 1 or all(
            not t.name.startswith("echod-") for t in threading.enumerate()
        )
        reader, writer = await asyncio.open_connection(*server.address)
        writer.write(PAYLOAD)
        await writer.drain()
        writer.write_eof()
        assert await reader.read() == PAYLOAD
        writer.close()
        await writer.wait_closed()
        stats = server.stats()
        assert (stats.bytes_in, stats.bytes_out) == (len(PAYLOAD), len(PAYLOAD))
        # A connection left open: the close drains it without blocking the loop.
        reader, writer = await asyncio.open_connection(*server.address)
        writer.write(b"x")
        assert await reader.readexactly(1) == b"x"
    assert await reader.read() == b""
    writer.close()
    assert server.closed


@pytest.mark.usefixtures("host_untouched")
@pytest.mark.parametrize("backend", [name for name in BACKENDS if name != "asyncio"])
async def test_serving_another_backend_runs_it_in_a_thread(backend: str) -> None:
    async with echod.serving(backend=backend) as server:
        assert server.thread is not None and server.thread.is_alive()
        reader, writer = await asyncio.open_connection(*server.address)
        writer.write(b"hello")
        assert await reader.readexactly(5) == b"hello"
        assert server.stats().bytes_in == 5
    assert await reader.read() == b""  # drained by the close
    writer.close()
    assert not server.thread.is_alive()


def test_a_server_that_dies_fails_its_close_with_the_traceback(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def broken(self: object, mask: int) -> None:
        raise RuntimeError("the backend broke while serving")

    monkeypatch.setattr(selector_backends.Connection, "on_event", broken)
    threads = set(threading.enumerate())
    with pytest.raises(echod.ServerError) as failure, echod.running(backend="epoll") as server:
        client = socket.create_connection(server.address)
        client.settimeout(10)
        client.sendall(b"this read kills the server")
        with contextlib.suppress(ConnectionResetError):  # its input unread: may be a reset
            assert client.recv(1) == b""  # the dying server closed it: no hang
        client.close()
        assert wait_for(lambda: not server.thread.is_alive())  # type: ignore[union-attr]
    assert "the backend broke while serving" in str(failure.value)
    assert "Traceback" in str(failure.value)
    assert isinstance(failure.value.__cause__, RuntimeError)
    assert set(threading.enumerate()) == threads


def test_a_server_that_dies_accepting_closes_the_client_it_took(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The socket accepted when the backend broke was never handed over: it is closed,
    so its client sees an end or a reset instead of waiting for the garbage collector
    (the failure, and with it the socket, stays referenced until close())."""

    def broken(self: object, sock: socket.socket) -> None:
        raise RuntimeError("the backend broke taking a client")

    monkeypatch.setattr(selector_backends.ReactorServer, "begin", broken)
    seen: list[object] = []
    with (
        pytest.raises(echod.ServerError, match="broke taking a client"),
        echod.running(backend="epoll") as server,
        socket.create_connection(server.address) as client,
    ):
        client.settimeout(10)
        try:
            seen.append(client.recv(1))
        except ConnectionResetError:
            seen.append("reset")
        except TimeoutError:
            seen.append("no answer in 10 s")
    assert seen in ([b""], ["reset"])


@pytest.mark.parametrize(
    ("settings", "error", "message"),
    [
        ({"workers": 2}, echod.ConfigError, "setting of the echod process"),
        ({"no_such_setting": 1}, echod.ConfigError, "unknown setting"),
        ({"listen": ["nowhere"]}, echod.ListenerError, "nowhere"),
        ({"backend": "nonesuch"}, echod.BackendUnavailable, "unknown backend"),
        ({"faults": ["reset-after:lots"]}, echod.ConfigError, "not a size"),
        (
            {"faults": ["delay:1s"], "backend": "threads"},
            echod.BackendUnavailable,
            "cannot inject faults",
        ),
    ],
)
def test_bad_settings_are_refused_before_anything_runs(
    settings: dict[str, object], error: type[Exception], message: str
) -> None:
    threads, fds = set(threading.enumerate()), open_fds()
    with pytest.raises(error, match=message), echod.running(**settings):  # type: ignore[arg-type]
        pass
    assert set(threading.enumerate()) == threads
    assert open_fds() <= fds


def test_the_public_names_are_listed() -> None:
    for name in ("running", "serving", "EchoServer", "ServerError", "Stats", "ConfigError"):
        assert name in echod.__all__
        assert getattr(echod, name) is not None


def test_every_public_name_has_a_home() -> None:
    """``echod.__all__`` and the lazy imports behind it agree."""
    assert sorted(echod.__all__) == sorted([*echod._HOMES, "__version__"])
