"""A correct small echo server with exactly one fault switched on by ``--fault NAME``.

Each robustness check claims to catch one kind of fault. This server shows it does: it
passes the case with no fault, and with the check's fault it fails that check alone, so
a bound that never fails, or fails only through a crash, shows up in ``make test``.

Without a fault it is what echod promises in miniature: non-blocking sockets on
``selectors``, pending output capped at a high-water mark (reading paused, resumed at the
low-water mark), half-close echoed out before the close, resets closed quietly, out of
descriptors shed with a spare descriptor, SIGTERM drained (quiet connections closed after
a second), and ``--workers N`` forked on SO_REUSEPORT sockets and replaced when they die.
It logs ``listening on HOST:PORT`` as echod does, so the same harness drives it.
"""

from __future__ import annotations

import argparse
import errno
import fcntl
import heapq
import os
import selectors
import signal
import socket
import struct
import sys
import termios
import time
import traceback
from collections.abc import Callable

# One line each: what the fault does, as the case that must catch it reads it.
FAULTS: dict[str, str] = {
    "cap-1000": "connections past 1,000 open are closed on accept",
    "idle-sweep": "wakes every millisecond and walks every connection, idle or not",
    "slow-fresh-client": "a client accepted while 100 others are open is read only 0.25 s later",
    "buffer-24m": "pauses a client at 24 MiB of unsent echo instead of 64 KiB",
    "buffer-8m": "pauses a client at 8 MiB of unsent echo instead of 64 KiB",
    "spin-on-emfile": "out of descriptors, retries accept at once without shedding",
    "accept-backoff-2s": "out of descriptors, stops accepting for 2 s, blind to freed descriptors",
    "leak-on-reset": "a reset connection is forgotten but its descriptor never closed",
    "traceback-on-reset": "a reset connection logs a traceback (then is closed)",
    "leak-fd": "a finished connection is forgotten but its descriptor never closed",
    "leak-memory": "keeps 2 KiB per connection for ever",
    "sleep-while-paused": "blocks the loop 0.2 s a turn while any client is paused",
    "drop-unsent": "drops what one send did not take",
    "no-replace": "a dead worker is not replaced",
    "close-on-sigterm": "SIGTERM closes every connection at once (exit 0)",
    "exit-1-after-drain": "drains every connection on SIGTERM, then exits 1",
}

HIGH_WATER = 64 * 1024
LOW_WATER = 16 * 1024
READ_SIZE = 65536
ACCEPT_BATCH = 64
DRAIN_QUIET = 1.0  # as echod: a connection quiet this long during a drain is closed
GONE = (errno.ECONNRESET, errno.EPIPE, errno.ETIMEDOUT, errno.ECONNABORTED)


class Connection:
    __slots__ = ("active", "eof", "pending", "reading", "since", "sock")

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.since = time.monotonic()  # last heard from, for the idle-sweep fault
        self.pending = bytearray()
        self.reading = True
        self.eof = False
        self.active = True  # touched since the last drain sweep


class Server:
    """One process serving one listener until SIGTERM has drained it."""

    def __init__(self, listener: socket.socket, fault: str, graceful: float) -> None:
        self.listener = listener
        self.fault = fault
        self.graceful = graceful
        self.high_water = HIGH_WATER
        if fault.startswith("buffer-"):
            self.high_water = int(fault[len("buffer-") : -1]) << 20
        self.selector = selectors.DefaultSelector()
        self.connections: dict[int, Connection] = {}
        self.timers: list[tuple[float, int, Callable[[], None]]] = []
        self.timer_seq = 0
        self.spare: int | None = os.open(os.devnull, os.O_RDONLY)
        self.leaked: list[object] = []  # what a leaking fault keeps for ever
        self.draining = False
        self.stop_by = 0.0
        self.wakeup_r, self.wakeup_w = socket.socketpair()
        self.wakeup_r.setblocking(False)
        self.wakeup_w.setblocking(False)
        signal.set_wakeup_fd(self.wakeup_w.fileno())
        signal.signal(signal.SIGTERM, lambda *_: None)
        signal.signal(signal.SIGINT, lambda *_: None)
        self.selector.register(self.wakeup_r, selectors.EVENT_READ, self.on_signal)
        self.selector.register(listener, selectors.EVENT_READ, self.on_accept)
        if fault == "idle-sweep":
            self.later(0.001, self.sweep_every_ms)

    # -- timers ------------------------------------------------------------------------
    def later(self, delay: float, action: Callable[[], None]) -> None:
        self.timer_seq += 1
        heapq.heappush(self.timers, (time.monotonic() + delay, self.timer_seq, action))

    def run(self) -> None:
        while not (self.draining and (not self.connections or time.monotonic() > self.stop_by)):
            timeout = None
            if self.timers:
                timeout = max(0.0, self.timers[0][0] - time.monotonic())
            if self.draining:
                timeout = min(timeout if timeout is not None else DRAIN_QUIET, DRAIN_QUIET)
            for key, events in self.selector.select(timeout):
                key.data(key.fileobj, events)
            now = time.monotonic()
            while self.timers and self.timers[0][0] <= now:
                heapq.heappop(self.timers)[2]()
            if self.fault == "sleep-while-paused" and any(
                not c.reading and not c.eof for c in self.connections.values()
            ):
                time.sleep(0.2)

    def sweep_every_ms(self) -> None:
        """The fault: a one-hour idle timeout found by walking every connection each
        millisecond, where a timer per connection would cost nothing until one is due."""
        expired = time.monotonic() - 3600
        for conn in list(self.connections.values()):
            if conn.since < expired and not conn.pending:
                self.close(conn)
        self.later(0.001, self.sweep_every_ms)

    # -- accepting -----------------------------------------------------------------------
    def on_accept(self, _: object, __: int) -> None:
        for _ in range(ACCEPT_BATCH):
            try:
                sock, _addr = self.listener.accept()
            except BlockingIOError:
                return
            except OSError as exc:
                if exc.errno in (errno.EMFILE, errno.ENFILE):
                    self.out_of_descriptors()
                # ECONNABORTED and the like: that client is gone, the next may not be.
                return
            self.admit(sock)

    def out_of_descriptors(self) -> None:
        if self.fault == "spin-on-emfile":
            return  # the listener stays readable: the loop comes straight back here
        if self.fault == "accept-backoff-2s":
            self.selector.unregister(self.listener)
            self.later(2.0, self.resume_accepting)
            return
        # As libuv: give up the spare descriptor to accept and close the waiting clients,
        # so they learn at once instead of hanging; accept again on the next wakeup.
        if self.spare is not None:
            os.close(self.spare)
            self.spare = None
        while True:
            try:
                self.listener.accept()[0].close()
            except OSError:
                break
        try:
            self.spare = os.open(os.devnull, os.O_RDONLY)
        except OSError:
            self.spare = None

    def resume_accepting(self) -> None:
        if not self.draining:
            self.selector.register(self.listener, selectors.EVENT_READ, self.on_accept)

    def admit(self, sock: socket.socket) -> None:
        if self.fault == "cap-1000" and len(self.connections) >= 1000:
            sock.close()
            return
        sock.setblocking(False)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        conn = Connection(sock)
        self.connections[sock.fileno()] = conn
        if self.fault == "leak-memory":
            self.leaked.append(os.urandom(2048))
        if self.fault == "slow-fresh-client" and len(self.connections) > 100:
            self.later(0.25, lambda: self.watch(conn))
        else:
            self.watch(conn)

    def watch(self, conn: Connection) -> None:
        if conn.sock.fileno() in self.connections:
            self.selector.register(conn.sock, selectors.EVENT_READ, self.on_client)

    # -- one connection ------------------------------------------------------------------
    def on_client(self, sock: socket.socket, events: int) -> None:
        conn = self.connections[sock.fileno()]
        conn.active, conn.since = True, time.monotonic()
        try:
            if events & selectors.EVENT_WRITE:
                self.flush(conn)
            if events & selectors.EVENT_READ and conn.reading:
                data = sock.recv(READ_SIZE)
                if not data:
                    conn.eof, conn.reading = True, False
                else:
                    conn.pending += data
                    self.flush(conn)
        except OSError as exc:
            if exc.errno not in GONE:
                raise
            self.close(conn, reset=True)
            return
        if conn.eof and not conn.pending:
            self.close(conn)
            return
        self.rewatch(conn)

    def flush(self, conn: Connection) -> None:
        if not conn.pending:
            return
        try:
            sent = conn.sock.send(conn.pending)
        except BlockingIOError:
            sent = 0
        if self.fault == "drop-unsent":
            sent = len(conn.pending)
        del conn.pending[:sent]

    def rewatch(self, conn: Connection) -> None:
        """Read unless too much waits unsent (hysteresis), write while anything does."""
        if conn.reading and len(conn.pending) >= self.high_water:
            conn.reading = False
        elif not conn.reading and not conn.eof and len(conn.pending) <= LOW_WATER:
            conn.reading = True
        mask = (selectors.EVENT_READ if conn.reading else 0) | (
            selectors.EVENT_WRITE if conn.pending else 0
        )
        key = self.selector.get_map().get(conn.sock)
        if key is None:
            self.selector.register(conn.sock, mask, self.on_client)
        elif mask != key.events:
            self.selector.modify(conn.sock, mask, self.on_client)

    def close(self, conn: Connection, reset: bool = False) -> None:
        del self.connections[conn.sock.fileno()]
        if self.selector.get_map().get(conn.sock) is not None:
            self.selector.unregister(conn.sock)
        if reset and self.fault == "traceback-on-reset":
            traceback.print_exc()  # called from the handler of the reset's OSError
        if (reset and self.fault == "leak-on-reset") or (not reset and self.fault == "leak-fd"):
            self.leaked.append(conn.sock.detach())  # the number survives, the descriptor open
            return
        conn.sock.close()

    # -- stopping ------------------------------------------------------------------------
    def on_signal(self, _: object, __: int) -> None:
        signums = self.wakeup_r.recv(64)
        if not any(s in (signal.SIGTERM, signal.SIGINT) for s in signums) or self.draining:
            return
        self.draining = True
        self.stop_by = time.monotonic() + self.graceful
        if self.selector.get_map().get(self.listener) is not None:
            self.selector.unregister(self.listener)
        self.listener.close()
        if self.fault == "close-on-sigterm":
            for conn in list(self.connections.values()):
                self.close(conn)
            return
        self.later(DRAIN_QUIET, self.drain_sweep)

    def drain_sweep(self) -> None:
        """Close what has nothing left to echo and stayed quiet a whole sweep."""
        for conn in list(self.connections.values()):
            unread = struct.unpack("i", fcntl.ioctl(conn.sock, termios.FIONREAD, b"\0" * 4))[0]
            if not conn.active and not conn.pending and conn.reading and not unread:
                self.close(conn)
            conn.active = False
        self.later(DRAIN_QUIET, self.drain_sweep)


def serve_workers(args: argparse.Namespace, reservation: socket.socket) -> None:
    """Fork ``--workers`` processes, each on its own SO_REUSEPORT socket; replace the dead."""
    host, port = reservation.getsockname()[:2]
    ready_r, ready_w = os.pipe()

    def spawn(first: bool) -> int:
        pid = os.fork()
        if pid:
            return pid
        status = 1
        try:
            signal.signal(signal.SIGTERM, signal.SIG_DFL)  # not the parent's forwarder
            reservation.close()
            listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            listener.bind((host, port))
            listener.listen(4096)
            listener.setblocking(False)
            if first:  # the parent waits for the first ones only
                os.close(ready_r)
                os.write(ready_w, b".")
                os.close(ready_w)
            Server(listener, args.fault, args.graceful_timeout).run()
            status = 0
        finally:
            os._exit(status)  # a worker must never go on as the parent

    signal.signal(signal.SIGTERM, lambda *_: None)
    workers = {spawn(first=True) for _ in range(args.workers)}
    os.close(ready_w)
    for _ in workers:
        os.read(ready_r, 1)
    os.close(ready_r)
    print(f"ready: {args.workers} workers", file=sys.stderr, flush=True)
    stopping = False

    def forward(signum: int, _: object) -> None:
        nonlocal stopping
        stopping = True
        for pid in workers:
            os.kill(pid, signum)

    signal.signal(signal.SIGTERM, forward)
    while workers:
        pid, _status = os.wait()
        workers.discard(pid)
        if not stopping and args.fault != "no-replace":
            workers.add(spawn(first=False))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--graceful-timeout", type=float, default=30.0)
    parser.add_argument("--fault", choices=["none", *FAULTS], default="none")
    args = parser.parse_args()
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    if args.workers > 1:
        # Bound, never listening: holds the port the workers' sockets share.
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    listener.bind((args.host, args.port))
    if args.workers > 1:
        print(f"listening on {args.host}:{listener.getsockname()[1]}", file=sys.stderr, flush=True)
        serve_workers(args, listener)
        return
    listener.listen(4096)
    listener.setblocking(False)
    print(f"listening on {args.host}:{listener.getsockname()[1]}", file=sys.stderr, flush=True)
    Server(listener, args.fault, args.graceful_timeout).run()
    if args.fault == "exit-1-after-drain":
        sys.exit(1)


if __name__ == "__main__":
    main()
