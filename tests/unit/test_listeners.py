"""Listen addresses as operators write them, and listeners made from them."""

from __future__ import annotations

import gc
import os
import socket
import warnings
from pathlib import Path

import pytest

from echod.net.listener_set import open_listeners
from echod.net.listeners import (
    Address,
    ListenerError,
    bind,
    close_all,
    describe,
    parse_address,
    proxy_version,
    unix_paths,
)


@pytest.mark.parametrize(
    ("text", "address"),
    [
        ("127.0.0.1:5000", Address("127.0.0.1", 5000)),
        ("[::1]:7", Address("::1", 7)),
        ("[::]:0", Address("::", 0)),
        (":9", Address("0.0.0.0", 9)),
        ("localhost:80", Address("localhost", 80)),
        ("unix:/run/echod.sock", Address(path="/run/echod.sock")),
        ("proxy-v1:127.0.0.1:5000", Address("127.0.0.1", 5000, proxy=1)),
        ("proxy-v2:[::1]:7", Address("::1", 7, proxy=2)),
        ("proxy-v2:unix:/run/echod.sock", Address(path="/run/echod.sock", proxy=2)),
    ],
)
def test_parses_the_address_forms(text: str, address: Address) -> None:
    assert parse_address(text) == address
    assert str(address) == text or text == ":9"


@pytest.mark.parametrize(
    "text",
    ["5000", "::1:5000", "[::1]5000", "host:port", "h:70000", "unix:", "proxy-v3:h:7",
     "proxy-v2:udp:h:7", "proxy-v2+tls:h:7", "proxy-v2:"],
)  # fmt: skip
def test_refuses_malformed_addresses(text: str) -> None:
    with pytest.raises(ListenerError):
        parse_address(text)


def test_binds_a_non_blocking_listener_on_an_ephemeral_port() -> None:
    sock = bind(Address("127.0.0.1", 0), backlog=128)
    try:
        assert not sock.getblocking()
        assert describe(sock).startswith("127.0.0.1:")
        assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR)
    finally:
        sock.close()


def test_address_in_use_is_one_clear_message() -> None:
    first = bind(Address("127.0.0.1", 0), backlog=8)
    port = first.getsockname()[1]
    try:
        with pytest.raises(ListenerError, match="address already in use"):
            bind(Address("127.0.0.1", port), backlog=8)
    finally:
        first.close()


def test_unresolvable_host_is_one_clear_message() -> None:
    with pytest.raises(ListenerError, match="does not resolve"):
        bind(Address("no-such-host.invalid", 0), backlog=8)


def test_ipv6_any_is_dual_stack() -> None:
    if not socket.has_ipv6:
        pytest.skip("no IPv6 on this machine")
    try:
        sock = bind(Address("::", 0), backlog=8)
    except ListenerError as exc:
        pytest.skip(f"cannot bind [::] here: {exc}")
    try:
        assert sock.getsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY) == 0
        port = sock.getsockname()[1]
        socket.create_connection(("127.0.0.1", port), timeout=5).close()  # IPv4 reaches it
    finally:
        sock.close()


def test_unix_listener_gets_its_mode_and_replaces_a_stale_socket(tmp_path: Path) -> None:
    path = str(tmp_path / "echod.sock")
    stale = socket.socket(socket.AF_UNIX)
    stale.bind(path)
    stale.close()  # the file stays behind, as after a crash
    sock = bind(parse_address(f"unix:{path}"), backlog=8, unix_mode=0o600)
    assert os.stat(path).st_mode & 0o777 == 0o600
    assert describe(sock) == f"unix:{path}"
    with pytest.raises(ListenerError, match="another server is listening"):
        bind(parse_address(f"unix:{path}"), backlog=8)
    close_all([sock], remove=unix_paths([sock]))
    assert not os.path.exists(path)


def test_unix_listener_will_not_replace_a_regular_file(tmp_path: Path) -> None:
    path = tmp_path / "not-a-socket"
    path.write_text("data")
    with pytest.raises(ListenerError, match="not a socket"):
        bind(parse_address(f"unix:{path}"), backlog=8)
    assert path.read_text() == "data"


def test_a_proxy_listener_says_its_version_and_keeps_it_per_worker() -> None:
    with bind(parse_address("proxy-v2:127.0.0.1:0"), 16) as sock:
        assert proxy_version(sock) == 2
        client = socket.create_connection(sock.getsockname(), timeout=2)
        accepted, _ = sock.accept()
        assert proxy_version(accepted) == 0  # accepted sockets are plain sockets
        accepted.close()
        client.close()
    listeners = open_listeners(["proxy-v1:127.0.0.1:0"], 16, per_worker=True)
    try:
        (address,) = listeners.per_worker
        assert address.proxy == 1 and address.port != 0
        (own,) = listeners.bind_own(16)
        assert proxy_version(own) == 1
        own.close()
    finally:
        listeners.close()


def test_per_worker_addresses_are_reserved_not_listened_on(tmp_path: Path) -> None:
    unix = tmp_path / "echod.sock"
    listeners = open_listeners(["127.0.0.1:0", f"unix:{unix}"], 16, per_worker=True)
    try:
        # TCP goes per worker (port 0 resolved once, for every worker); Unix is shared.
        (address,) = listeners.per_worker
        assert address.host == "127.0.0.1" and address.port != 0
        assert [describe(sock) for sock in listeners.shared] == [f"unix:{unix}"]
        # The reservation holds the port against other programs, yet queues no client.
        with socket.socket() as other, pytest.raises(OSError):
            other.bind(("127.0.0.1", address.port))
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection(("127.0.0.1", address.port), timeout=2).close()
        # What a worker binds is a listener on that very port.
        sockets = listeners.bind_own(16)
        try:
            assert describe(sockets[-1]) == f"127.0.0.1:{address.port}"
            socket.create_connection(("127.0.0.1", address.port), timeout=2).close()
        finally:
            close_all(sockets[len(listeners.shared) :])
    finally:
        listeners.close()
    assert not unix.exists(), "the Unix socket file outlived its listener"


def test_without_workers_every_address_is_bound_and_shared() -> None:
    listeners = open_listeners(["127.0.0.1:0"], 16, per_worker=False)
    try:
        assert listeners.per_worker == [] and listeners.reservations == []
        (sock,) = listeners.shared
        socket.create_connection(sock.getsockname(), timeout=2).close()
    finally:
        listeners.close()


def test_a_failing_address_closes_the_ones_opened_before_it() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        # A socket dropped without close() is closed by the garbage collector with a
        # ResourceWarning: that warning is the leak. Garbage left by earlier tests (a
        # subprocess's pipe, say) is collected first so that its warnings are not counted.
        gc.collect()
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", ResourceWarning)
            with pytest.raises(ListenerError, match="address already in use"):
                open_listeners(["127.0.0.1:0", f"127.0.0.1:{port}"], 16, per_worker=False)
            gc.collect()
        leaked = [str(w.message) for w in caught if w.category is ResourceWarning]
        assert [message for message in leaked if "socket" in message] == []
