"""Where an idle connection's memory goes: ``python -m bench.conn_memory [N] [BACKEND]``.

RSS says how much each connection costs; tracemalloc says which line allocated it. One
embedded server (:func:`echod.running`) gets N idle connections that each echoed one
byte, and the Python allocations made meanwhile are grouped by the echod line that made
them, per connection. Clients live in this process too, so their allocations are
filtered out by file; the accepted socket object itself is Python's (``socket.py``).
"""

from __future__ import annotations

import gc
import resource
import socket
import sys
import tracemalloc

import echod

ECHOD_FILES = [tracemalloc.Filter(True, "*echod/*")]


def measure(count: int, backend: str) -> list[tuple[float, str]]:
    """(bytes per connection, ``file:line``), largest first; the total first of all."""
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, 2 * count + 1024), hard))
    with echod.running(backend=backend) as server:
        warm = [socket.create_connection(server.address) for _ in range(100)]
        clients: list[socket.socket] = []
        try:
            for sock in warm:  # the server's tables have grown past their start
                sock.sendall(b"x")
                sock.recv(1)
            gc.collect()
            tracemalloc.start(1)
            before = tracemalloc.take_snapshot().filter_traces(ECHOD_FILES)
            clients = [socket.create_connection(server.address) for _ in range(count)]
            for sock in clients:
                sock.sendall(b"x")
            for sock in clients:
                sock.recv(1)  # echoed: every one is a served connection now
            gc.collect()
            after = tracemalloc.take_snapshot().filter_traces(ECHOD_FILES)
            tracemalloc.stop()
        finally:
            for sock in warm + clients:
                sock.close()
    grown = [s for s in after.compare_to(before, "lineno") if s.size_diff > 0]
    rows = [(s.size_diff / count, _where(s.traceback[0])) for s in grown]
    total = sum(size for size, _ in rows)
    return [(total, "total"), *sorted(rows, reverse=True)]


def _where(frame: tracemalloc.Frame) -> str:
    return f"{frame.filename.rpartition('echod/')[2]}:{frame.lineno}"


def main(argv: list[str]) -> int:
    count = int(argv[0]) if argv else 6000
    backend = argv[1] if len(argv) > 1 else "epoll"
    rows = measure(count, backend)
    print(f"{backend}, {count:,} idle connections: Python bytes per connection by echod line")
    for size, where in rows:
        if size >= 1:
            print(f"{size:8.1f}  {where}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
