"""Hypothesis-generated interleavings over several connections, run against a live server.

A schedule is a list of steps — send, partial read, half-close, reset, pause — over a
few connections. The driver runs it with non-blocking sockets, keeping what the server
did not take yet in a client-side outbox, then finishes every surviving connection
(flush, half-close, read to EOF) and checks it got exactly its own bytes, in order.
"""

from __future__ import annotations

import contextlib
import os
import selectors
import socket
import time
from dataclasses import dataclass, field

from hypothesis import HealthCheck, Phase, example, given, settings
from hypothesis import strategies as st

from tests.support import reset

from .harness import Server

CONNECTIONS = 6
STEPS = 40

Step = tuple[str, int, int]  # (action, connection, size or milliseconds)

connection = st.integers(0, CONNECTIONS - 1)
# Sizes either side of what matters: one byte, the 64 KiB high-water mark and one read,
# and 4 MiB, past loopback's socket buffers, so the server must pause a connection.
sizes = st.one_of(
    st.integers(1, 300),
    st.sampled_from([4096, 65535, 65536, 65537, 4 << 20]),
    st.integers(1, 300_000),
)
send = st.tuples(st.just("send"), connection, sizes)
read = st.tuples(st.just("read"), connection, sizes)
steps = st.one_of(
    send,
    send,
    read,
    read,
    st.tuples(st.just("shut"), connection, st.just(0)),
    st.tuples(st.just("reset"), connection, st.just(0)),
    st.tuples(st.just("pause"), st.just(0), st.integers(0, 20)),
)
schedules = st.tuples(st.integers(1, CONNECTIONS), st.lists(steps, max_size=STEPS))


@dataclass
class Client:
    """One connection as the schedule drives it."""

    sock: socket.socket
    sent: bytearray = field(default_factory=bytearray)
    received: bytearray = field(default_factory=bytearray)
    outbox: bytes = b""
    shut_requested: bool = False
    shut: bool = False
    gone: bool = False  # reset by the schedule: its bytes are nobody's business
    eof: bool = False

    def flush(self) -> None:
        if self.outbox:
            with contextlib.suppress(BlockingIOError):
                self.outbox = self.outbox[self.sock.send(self.outbox) :]
        if self.shut_requested and not self.outbox and not self.shut:
            self.sock.shutdown(socket.SHUT_WR)
            self.shut = True

    def read(self, size: int) -> None:
        with contextlib.suppress(BlockingIOError):
            data = self.sock.recv(size)
            self.received += data
            self.eof = not data


@dataclass
class Report:
    schedules: int = 0
    connections: int = 0
    bytes: int = 0
    failure: str = ""


def execute(server: Server, count: int, plan: list[Step], report: Report, patience: float) -> None:
    """Run one schedule; AssertionError (with the schedule) if a survivor's echo differs."""
    clients = []
    for _ in range(count):
        sock = socket.create_connection((server.host, server.port), timeout=5)
        sock.setblocking(False)
        clients.append(Client(sock))
    try:
        for action, index, size in plan:
            client = clients[index % count]
            if action == "pause":
                time.sleep(size / 1000)
                continue
            if client.gone or client.eof:
                continue
            if action == "send" and not client.shut_requested:
                data = os.urandom(size)
                client.sent += data
                client.outbox += data
            elif action == "read":
                client.read(size)
            elif action == "shut":
                client.shut_requested = True
            elif action == "reset":
                reset(client.sock)
                client.gone = True
                continue
            client.flush()
        finish([c for c in clients if not c.gone], patience)
        for number, client in enumerate(clients):
            if client.gone:
                continue
            got = "the same bytes" if client.received == client.sent else "different bytes"
            assert client.received == client.sent and client.eof, (
                f"connection {number} sent {len(client.sent)} bytes, got {len(client.received)} "
                f"({got}){'' if client.eof else ' and no EOF'}; "
                f"schedule: {count} connections, {plan}"
            )
            report.bytes += len(client.sent)
        report.schedules += 1
        report.connections += count
    finally:
        for client in clients:
            client.sock.close()


def finish(clients: list[Client], patience: float) -> None:
    """Flush every outbox, half-close, and read until EOF (or ``patience`` s run out)."""
    selector = selectors.DefaultSelector()
    for client in clients:
        client.shut_requested = True
        if not client.eof:
            selector.register(client.sock, selectors.EVENT_READ | selectors.EVENT_WRITE, client)
    deadline = time.monotonic() + patience
    while selector.get_map() and time.monotonic() < deadline:
        for key, events in selector.select(0.1):
            client = key.data
            try:
                if events & selectors.EVENT_WRITE:
                    client.flush()
                if events & selectors.EVENT_READ:
                    client.read(256 * 1024)
            except OSError:
                client.eof = True  # reset by the server: the check below reports it
            if client.eof:
                selector.unregister(client.sock)
            elif client.shut and key.events & selectors.EVENT_WRITE:
                selector.modify(client.sock, selectors.EVENT_READ, client)
    selector.close()


def check(server: Server, examples: int, shrink: bool, patience: float) -> Report:
    """Run ``examples`` generated schedules; the (shrunk) failing one ends up in the report.

    ``patience``: seconds the survivors of a schedule have to be echoed in full and
    closed, a few MiB on loopback.
    """
    report = Report()
    phases = [Phase.explicit, Phase.generate, *([Phase.shrink] if shrink else [])]

    @settings(
        max_examples=examples,
        deadline=None,
        database=None,
        phases=phases,
        suppress_health_check=list(HealthCheck),
        print_blob=False,
    )
    # Run first, whatever is generated: 16 MiB unread, past what loopback's buffers hold
    # (send buffers autotune to 4 MiB), so the server must keep the echo it could not
    # send; and a reset beside a connection mid-transfer.
    @example((1, [("send", 0, 4 << 20), ("pause", 0, 20)] * 4 + [("shut", 0, 0)]))
    @example((2, [("send", 0, 300_000), ("send", 1, 65537), ("reset", 0, 0), ("read", 1, 4096)]))
    @given(schedules)
    def every_survivor_gets_its_bytes(generated: tuple[int, list[Step]]) -> None:
        execute(server, *generated, report, patience)

    try:
        every_survivor_gets_its_bytes()
    except AssertionError as exc:
        report.failure = str(exc).splitlines()[0][:600]
    except OSError as exc:
        report.failure = f"{type(exc).__name__}: {exc}"
    return report
