"""The C rr loop (``loadtest/_rrloop.c``) on its own, over real socket pairs.

The peer is a plain Python echo on the other end of a socketpair, so each test
controls exactly which bytes come back: the whole echo, a flipped byte, a byte
too many, or EOF.  The C side must count the first and name each of the others.
"""

from __future__ import annotations

import errno
import socket
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from loadtest.pattern import Pattern
from loadtest.pollers import LOOP_ENV, RRPoller, rrloop

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:  # tests/ is a directory of the repository, not installed
    sys.path.insert(0, str(ROOT))

from tests.support import missing  # noqa: E402

MISMATCH, CLOSED = -1, 0
PATTERN = Pattern().data
BASE = 7  # where the attached connection starts in the pattern


@pytest.fixture(autouse=True)
def _c_loop_allowed(monkeypatch: pytest.MonkeyPatch) -> None:
    """These tests are about the extension: ECHOD_BENCH_LOOP=python must not skip them."""
    monkeypatch.delenv(LOOP_ENV, raising=False)


@pytest.fixture
def poller() -> RRPoller:
    module = rrloop()
    if module is None:
        missing("loadtest._rrloop is not built (pip install -e . with a C compiler)")
    return RRPoller(module)


def test_the_extension_is_built_by_the_editable_install() -> None:
    """Under CI=true the C loop must exist: a silent fallback would halve the generator."""
    if rrloop() is None:
        missing("loadtest._rrloop is not built (pip install -e . with a C compiler)")
    from loadtest import _rrloop

    assert _rrloop.PERIOD == 65_537 and _rrloop.CHUNK == 65_536


class Peer(threading.Thread):
    """Echoes what it reads through ``alter`` until ``limit`` bytes, then closes."""

    def __init__(self, sock: socket.socket, limit: int, alter: Callable[[int, bytes], bytes]):
        super().__init__(daemon=True)
        self.sock, self.limit, self.alter = sock, limit, alter

    def run(self) -> None:
        seen = 0
        try:
            while seen < self.limit:
                data = self.sock.recv(65536)
                if not data:
                    break
                self.sock.sendall(self.alter(seen, data))
                seen += len(data)
        except OSError:
            pass
        finally:
            self.sock.close()


def drive(
    poller: RRPoller, size: int, depth: int, limit: int, alter: Callable[[int, bytes], bytes]
) -> tuple[list[tuple[int, int]], tuple[int, int, dict[int, int]], int]:
    """Attach one end, echo on the other, poll until failure or 5 s; (failures, take, fd)."""
    ours, theirs = socket.socketpair()
    ours.setblocking(False)
    for sock in (ours, theirs):  # small buffers, so big pipelined messages go out in parts
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 16384)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16384)
    peer = Peer(theirs, limit, alter)
    peer.start()
    failures: list[tuple[int, int]] = []
    fd = ours.fileno()
    poller.register(fd, poller.READ, lambda _mask: None)
    poller.attach(
        fd, PATTERN, BASE, size, depth, time.monotonic(), lambda c, d: failures.append((c, d))
    )
    deadline = time.monotonic() + 5
    while not failures and time.monotonic() < deadline:
        poller.poll(0.05)
    taken = poller._loop.take()
    poller.unregister(fd)
    ours.close()
    peer.join(5)
    return failures, taken, fd


def test_pipelined_messages_larger_than_the_socket_buffer_are_all_verified(
    poller: RRPoller,
) -> None:
    size, depth = 200_000, 3
    failures, (messages, echoed, latency), _ = drive(
        poller, size, depth, 20 * size, lambda _seen, data: data
    )
    # The peer closes after 20 messages' worth, once every echo came back: EOF, or
    # EPIPE/ECONNRESET when the next messages were already on their way out.
    assert failures and failures[0][0] in (CLOSED, errno.EPIPE, errno.ECONNRESET)
    assert failures[0][1] == messages == 20
    assert 20 * size <= echoed < (20 + depth) * size  # its last read may run past
    assert sum(latency.values()) == messages


@pytest.mark.parametrize(
    "alter",
    [
        lambda seen, data: data[:5] + bytes([data[5] ^ 1]) + data[6:] if seen == 0 else data,
        lambda seen, data: data + b"x",
        lambda seen, data: data[1:],  # one byte short, then the next echo is shifted
    ],
    ids=["flipped-byte", "extra-byte", "dropped-byte"],
)
def test_a_wrong_echo_is_a_mismatch(poller: RRPoller, alter: Callable[[int, bytes], bytes]) -> None:
    failures, (messages, _echoed, _latency), _ = drive(poller, 64, 2, 10_000, alter)
    assert failures and failures[0][0] == MISMATCH
    assert messages < 10_000 // 64


def test_a_byte_beyond_what_was_sent_is_a_mismatch_even_when_it_fits(poller: RRPoller) -> None:
    """The last echo brings the byte that would come next, then the peer closes.

    memcmp alone would pass it (it is the pattern's next byte); only the rule
    "more bytes than were sent" catches it, before the EOF.
    """

    def alter(seen: int, data: bytes) -> bytes:
        end = seen + len(data)
        return data + PATTERN[BASE + end : BASE + end + 1] if end >= 640 else data

    failures, _taken, _ = drive(poller, 64, 1, 640, alter)
    assert failures and failures[0][0] == MISMATCH


def test_after_stop_issuing_nothing_new_is_sent(poller: RRPoller) -> None:
    poller.stop_issuing()
    ours, theirs = socket.socketpair()
    ours.setblocking(False)
    fd = ours.fileno()
    poller.register(fd, poller.READ, lambda _mask: None)
    poller.attach(fd, Pattern().data, 0, 64, 4, time.monotonic(), lambda c, d: None)
    theirs.settimeout(0.2)
    with pytest.raises(TimeoutError):
        theirs.recv(1)
    assert poller.progress(fd) == (0, 0)
    poller.unregister(fd)
    ours.close()
    theirs.close()
