"""Server memory per connection that echoed once and went idle:
``python -m bench.echoed_once BACKEND [N] [SIZE]``.

The bench's many-connection cells keep most connections silent, so a receive buffer
that costs memory only once a read touches it never shows there. Here each of N
connections echoes one SIZE-byte message and then idles; the server's RSS growth over
them, per connection, is printed. Its use: per-connection receive buffers against a
provided buffer ring (docs/uring.md). Run it under ``flock /work/notes/bench.lock``
like any measurement; it needs N + 1,000 descriptors in each process.
"""

from __future__ import annotations

import os
import re
import resource
import socket
import subprocess
import sys
import time
from pathlib import Path

LISTENING = re.compile(r"listening on [^ ]+:(\d+)")
WARM = 100  # connections served before the baseline, so the server's tables have grown
SETTLE = 1.0  # seconds for the last echoes' frees to land before RSS is read


def raise_files(count: int) -> None:
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, count + 1000), hard))


def rss(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS line")


def echo_once(port: int, message: bytes) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=30)
    sock.sendall(message)
    received = b""
    while len(received) < len(message):
        data = sock.recv(len(message) - len(received))
        if not data:
            raise RuntimeError("the server closed before echoing")
        received += data
    return sock


def measure(backend: str, count: int, size: int) -> float:
    """Bytes of server RSS per connection that echoed ``size`` bytes once."""
    raise_files(count)
    env = {k: v for k, v in os.environ.items() if not k.startswith("ECHOD_")}
    argv = [sys.executable, "-m", "echod", "--backend", backend, "--host", "127.0.0.1"]
    server = subprocess.Popen(
        [*argv, "--port", "0"],
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        preexec_fn=lambda: raise_files(count),
    )
    clients: list[socket.socket] = []
    try:
        assert server.stderr is not None
        port = 0
        for line in server.stderr:
            if found := LISTENING.search(line):
                port = int(found.group(1))
                break
        message = b"m" * size
        clients = [echo_once(port, message) for _ in range(WARM)]
        time.sleep(SETTLE)
        before = rss(server.pid)
        clients += [echo_once(port, message) for _ in range(count)]
        time.sleep(SETTLE)
        return (rss(server.pid) - before) / count
    finally:
        for sock in clients:
            sock.close()
        server.terminate()
        server.wait(30)


def main() -> int:
    if len(sys.argv) < 2:
        print("usage: python -m bench.echoed_once BACKEND [N] [SIZE]", file=sys.stderr)
        return 2
    backend = sys.argv[1]
    count = int(sys.argv[2]) if len(sys.argv) > 2 else 10_000
    size = int(sys.argv[3]) if len(sys.argv) > 3 else 64
    per_connection = measure(backend, count, size)
    print(f"{backend}: {count} connections that echoed {size} B once: "
          f"{per_connection / 1024:.2f} KiB of server RSS each")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
