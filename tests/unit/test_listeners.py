"""Listen addresses as operators write them, and listeners made from them."""

from __future__ import annotations

import gc
import os
import socket
import warnings
from pathlib import Path

import pytest

from echod.net.addresses import Address, ListenerError, parse_address
from echod.net.listener_set import Named, is_tls_name, open_listeners
from echod.net.listeners import (
    ListeningSocket,
    bind,
    close_all,
    describe,
    proxy_version,
    unix_paths,
)
from tests.support import missing, require_ipv6


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
        ("proxy-v2:tls:127.0.0.1:7", Address("127.0.0.1", 7, tls=True, proxy=2)),
    ],
)
def test_parses_the_address_forms(text: str, address: Address) -> None:
    assert parse_address(text) == address
    assert str(address) == text or text == ":9"


def test_proxy_plus_tls_is_the_header_then_the_handshake() -> None:
    # The one spelling a socket unit's FileDescriptorName= can carry (no ':' there).
    assert parse_address("proxy-v1+tls:h:7") == parse_address("proxy-v1:tls:h:7")
    assert parse_address("proxy-v2+tls:h:7") == Address("h", 7, tls=True, proxy=2)
    assert is_tls_name("proxy-v2+tls") and not is_tls_name("proxy-v2")


@pytest.mark.parametrize(
    "text",
    ["5000", "::1:5000", "[::1]5000", "host:port", "h:70000", "unix:", "proxy-v3:h:7",
     "proxy-v2:udp:h:7", "proxy-v2+udp:h:7", "proxy-v2+tls:tls:h:7", "proxy-v2:"],
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
    require_ipv6()
    try:
        sock = bind(Address("::", 0), backlog=8)
    except ListenerError as exc:
        missing(f"cannot bind [::] here: {exc}")
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
    listeners, _ = open_listeners(["proxy-v1:127.0.0.1:0"], 16, slots=2)
    try:
        assert [proxy_version(sock) for sock in listeners.for_slot(2)] == [1]
        # Taken back by a successor (an upgrade) as plain listeners, the configuration
        # says it again.
        handed = [Named(ListeningSocket(fileno=os.dup(n.sock.fileno())), n.name) for n in listeners]
        again, _ = open_listeners(
            [f"proxy-v1:127.0.0.1:{listeners.slots[1][0].sock.getsockname()[1]}"],
            16,
            slots=2,
            available=handed,
        )
        assert [proxy_version(sock) for sock in again.for_slot(1)] == [1]
        again.close()
    finally:
        listeners.close()


def test_each_worker_slot_has_its_own_listening_socket_on_one_port(tmp_path: Path) -> None:
    unix = tmp_path / "echod.sock"
    listeners, unused = open_listeners(["127.0.0.1:0", f"unix:{unix}"], 16, slots=2)
    try:
        assert unused == []
        # TCP goes per slot (port 0 resolved once, for every slot); Unix is shared.
        assert [named.name for named in listeners.shared] == ["echod.shared"]
        assert [describe(named.sock) for named in listeners.shared] == [f"unix:{unix}"]
        (one,), (two,) = listeners.slots[1], listeners.slots[2]
        assert (one.name, two.name) == ("echod.reuseport.1", "echod.reuseport.2")
        port = one.sock.getsockname()[1]
        assert port != 0 and two.sock.getsockname()[1] == port
        # Both listen: a client queues on one of them even before any worker exists.
        with socket.create_connection(("127.0.0.1", port), timeout=2):
            pass
        # A worker in slot 2 is handed the shared socket and its own, not slot 1's.
        assert listeners.for_slot(2) == [listeners.shared[0].sock, two.sock]
        # The port is held against programs that do not join the reuseport group.
        with socket.socket() as other, pytest.raises(OSError):
            other.bind(("127.0.0.1", port))
    finally:
        listeners.close()
    assert not unix.exists(), "the Unix socket file outlived its listener"


def test_held_sockets_are_taken_again_by_name_and_address() -> None:
    first, _ = open_listeners(["127.0.0.1:0"], 16, slots=2)
    port = first.slots[1][0].sock.getsockname()[1]
    try:
        # A reload to three slots keeps slots 1 and 2's sockets (and their queues).
        again, unused = open_listeners([f"127.0.0.1:{port}"], 16, slots=3, available=list(first))
        assert unused == []
        assert again.slots[1][0] is first.slots[1][0] and again.slots[2][0] is first.slots[2][0]
        assert again.slots[3][0].sock.getsockname()[1] == port
        # Back to one shared socket: the reuseport ones are left for the caller to close.
        shared, unused = open_listeners([f"127.0.0.1:{port}"], 16, available=list(again))
        assert {named.name for named in unused} == {f"echod.reuseport.{k}" for k in (1, 2, 3)}
        assert [named.name for named in shared.shared] == ["echod.shared"]
        shared.close()
        again.slots[3][0].sock.close()
    finally:
        first.close()


def test_a_socket_units_sockets_are_served_as_given() -> None:
    with socket.socket() as unit_socket:
        unit_socket.bind(("127.0.0.1", 0))
        unit_socket.listen()
        given = Named(unit_socket, "echo")
        listeners, unused = open_listeners(["127.0.0.1:1"], 16, slots=2, available=[given])
        assert listeners.from_systemd and not listeners.per_worker and unused == []
        assert listeners.shared == [given]


def test_without_workers_every_address_is_bound_and_shared() -> None:
    listeners, _ = open_listeners(["127.0.0.1:0"], 16)
    try:
        assert not listeners.per_worker
        (named,) = listeners.shared
        socket.create_connection(named.sock.getsockname(), timeout=2).close()
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
                open_listeners(["127.0.0.1:0", f"127.0.0.1:{port}"], 16)
            gc.collect()
        leaked = [str(w.message) for w in caught if w.category is ResourceWarning]
        assert [message for message in leaked if "socket" in message] == []
