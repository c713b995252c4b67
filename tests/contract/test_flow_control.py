"""A client that sends without reading costs the server a bounded amount of memory."""

from __future__ import annotations

import os
import selectors
import socket
import threading
import time

from tests.support import echod, exchange, recv_exactly, reset, wait_until

CLIENTS = 20
# What each tries to push: 960 MiB in all. Loopback TCP buffers autotune to several MiB
# per direction, so the total must dwarf them for a server that buffers to show.
PER_CLIENT = 48 << 20
HIGH_WATER = 64 * 1024
# One read past the high-water mark: 64 KiB for the reactor, 256 KiB for asyncio's
# transports; the rest is slack for the interpreter's own growth.
BOUND = CLIENTS * (HIGH_WATER + 256 * 1024) + (16 << 20)


def push_until_blocked(socks: list[socket.socket], limit: int, settle: float = 1.0) -> int:
    """Send from every socket until none has made progress for ``settle`` seconds."""
    chunk = os.urandom(64 * 1024)
    sent = dict.fromkeys(socks, 0)
    selector = selectors.DefaultSelector()
    for sock in socks:
        sock.setblocking(False)
        selector.register(sock, selectors.EVENT_WRITE)
    last_progress = time.monotonic()
    while selector.get_map() and time.monotonic() - last_progress < settle:
        for key, _ in selector.select(0.1):
            sock = key.fileobj
            assert isinstance(sock, socket.socket)
            try:
                sent[sock] += sock.send(chunk)
                last_progress = time.monotonic()
            except BlockingIOError:
                continue
            if sent[sock] >= limit:
                selector.unregister(sock)
    selector.close()
    return sum(sent.values())


def test_clients_that_never_read_cannot_grow_the_server_without_bound(backend: str) -> None:
    with echod("--backend", backend, "--port", "0", "--high-water", str(HIGH_WATER)) as server:
        before = server.rss()
        hogs = [server.connect() for _ in range(CLIENTS)]
        for hog in hogs:
            hog.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
        pushed = push_until_blocked(hogs, PER_CLIENT)
        growth = server.rss() - before
        try:
            assert pushed < CLIENTS * PER_CLIENT, "nothing pushed back: the server read it all"
            assert growth < BOUND, f"server grew {growth >> 20} MiB for {CLIENTS} non-readers"
            # Meanwhile a well-behaved client is served in full.
            with server.connect() as polite:
                assert exchange(polite, b"p" * 300_000) == b"p" * 300_000
        finally:
            for hog in hogs:
                reset(hog)


def receive_queue(port: int, peer: int) -> int | None:
    """Bytes the kernel holds for the server's end of a loopback connection, unread by
    the server (``rx_queue`` of /proc/net/tcp), or None when there is no such socket."""
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with open(table) as rows:
            for row in list(rows)[1:]:
                fields = row.split()
                local, remote = fields[1].rsplit(":", 1)[1], fields[2].rsplit(":", 1)[1]
                if int(local, 16) == port and int(remote, 16) == peer:
                    return int(fields[4].split(":")[1], 16)
    return None


def test_a_paused_client_gets_every_byte_in_order_once_it_reads(backend: str) -> None:
    """Reading stops at the high-water mark and resumes below the low one, losing nothing."""
    args = ("--backend", backend, "--port", "0", "--high-water", "16K", "--low-water", "4K")
    with echod(*args) as server, server.connect() as sock:
        payload = os.urandom(24 << 20)  # far more than the kernel's buffers hold
        sender = threading.Thread(target=sock.sendall, args=(payload,))
        sender.start()
        peer = sock.getsockname()[1]
        # Read nothing yet: the server must stop reading this client. Its unread bytes pile
        # up in the kernel and stay there, sample after sample (a server that ignored the
        # marks would read the 24 MiB into its memory: an empty queue, the sender done).
        queued: list[int] = []

        def paused() -> bool:
            queued.append(receive_queue(server.port, peer) or 0)
            return len(queued) >= 10 and min(queued[-10:]) > 0

        assert wait_until(paused, timeout=20, interval=0.05), queued[-20:]
        assert sender.is_alive(), "the whole payload went: the server never paused"
        received = recv_exactly(sock, len(payload))
        sender.join()
        assert received == payload
