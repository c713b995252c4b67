"""An echo client run inside the test machine, by its own /usr/bin/python3 (stdlib only).

``probe.py echo PORT SIZE`` sends SIZE bytes (every byte value, in a pattern that
shows a lost, doubled or reordered byte), half-closes and prints one JSON line: what
came back and whether it matched.

``probe.py loop PORT`` keeps a few persistent connections open and opens new ones
one after another, each echoing a message of varying size and checking every byte.
It prints ``ready`` after its first good echo; once a line arrives on stdin it makes
``--after`` more connections and prints one JSON line of counts: refused, reset,
eof (closed early), timeout, mismatch, persistent connections lost. It never runs
longer than ``--limit`` seconds, and it reads back every message before the next,
so it holds at most a few connections and bytes at once.
"""

from __future__ import annotations

import argparse
import json
import socket
import sys
import threading
import time
from collections import Counter

HOST = "127.0.0.1"
# Generous: a connection that waits in the accept queue while echod restarts on a
# loaded machine is slow, not lost; only a refusal, a reset or a wrong byte fails.
TIMEOUT = 30.0


def pattern(size: int, seed: int = 0) -> bytes:
    """Bytes whose every position differs from its neighbours' (a slip shows)."""
    return bytes((seed + i * 7 + (i >> 8)) & 0xFF for i in range(size))


def round_trip(sock: socket.socket, message: bytes) -> bytes:
    sock.sendall(message)
    received = bytearray()
    while len(received) < len(message):
        data = sock.recv(len(message) - len(received))
        if not data:
            break
        received.extend(data)
    return bytes(received)


def connect(port: int) -> socket.socket:
    sock = socket.create_connection((HOST, port), timeout=TIMEOUT)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


def echo(port: int, size: int) -> dict[str, object]:
    message = pattern(size)
    with connect(port) as sock:
        sock.sendall(message)
        sock.shutdown(socket.SHUT_WR)
        received = bytearray()
        while data := sock.recv(65536):
            received.extend(data)
    return {"sent": len(message), "received": len(received), "match": bytes(received) == message}


def outcome(exc: BaseException) -> str:
    if isinstance(exc, ConnectionRefusedError):
        return "refused"
    if isinstance(exc, (ConnectionResetError, BrokenPipeError, ConnectionAbortedError)):
        return "reset"
    if isinstance(exc, (socket.timeout, TimeoutError)):
        return "timeout"
    return f"error {type(exc).__name__}: {exc}"


def loop(port: int, persistent: int, after: int, limit: float) -> dict[str, object]:
    counts: Counter[str] = Counter()
    marked = threading.Event()

    def wait_for_mark() -> None:
        sys.stdin.readline()
        marked.set()

    threading.Thread(target=wait_for_mark, daemon=True).start()
    deadline = time.monotonic() + limit
    held = [connect(port) for _ in range(persistent)]
    lost = [False] * persistent
    ready = False
    since_mark = 0
    n = 0
    while time.monotonic() < deadline and since_mark < after:
        n += 1
        message = pattern(1 + (n * 37) % 3000, seed=n)
        try:
            with connect(port) as sock:
                received = round_trip(sock, message)
            if received == message:
                counts["ok"] += 1
            elif len(received) < len(message) and message.startswith(received):
                counts["eof"] += 1
            else:
                counts["mismatch"] += 1
        except OSError as exc:
            counts[outcome(exc)] += 1
        slot = n % persistent if persistent else -1
        if slot >= 0 and not lost[slot]:
            try:
                if round_trip(held[slot], message[:64]) != message[:64]:
                    lost[slot] = True
            except OSError:
                lost[slot] = True
        if not ready and counts["ok"]:
            ready = True
            print("ready", flush=True)
        if marked.is_set():
            since_mark += 1
    for sock in held:
        sock.close()
    counts["connections"] = n
    counts["persistent_lost"] = sum(lost)
    return {"finished": since_mark >= after, **counts}


def main() -> None:
    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers(dest="mode", required=True)
    one = sub.add_parser("echo")
    one.add_argument("port", type=int)
    one.add_argument("size", type=int)
    many = sub.add_parser("loop")
    many.add_argument("port", type=int)
    many.add_argument("--persistent", type=int, default=4)
    many.add_argument("--after", type=int, default=200)
    many.add_argument("--limit", type=float, default=120.0)
    args = parser.parse_args()
    if args.mode == "echo":
        result = echo(args.port, args.size)
    else:
        result = loop(args.port, args.persistent, args.after, args.limit)
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
