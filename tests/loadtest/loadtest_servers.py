"""Echo servers for testing the load generator: one correct, others broken on purpose.

They run as threads of the test process on 127.0.0.1:0, one thread per
connection, so each fault is a few plain lines anyone can check by eye.
"""

from __future__ import annotations

import contextlib
import json
import socket
import subprocess
import sys
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any


class EchoServer:
    """Echoes every byte, except that ``fault`` strikes once ``after`` bytes of a connection.

    fault: None (correct), "corrupt" (flips the byte at offset ``after``),
    "drop" (closes the connection), "stall" (stops reading and writing, keeps it open).
    """

    def __init__(self, fault: str | None = None, after: int = 1000) -> None:
        self.fault = fault
        self.after = after
        self.listener = socket.create_server(("127.0.0.1", 0), backlog=512)
        self.listener.settimeout(0.1)
        self.port: int = self.listener.getsockname()[1]
        self.stopped = threading.Event()
        self.connections: list[socket.socket] = []
        self.lock = threading.Lock()
        self.thread = threading.Thread(target=self._accept, daemon=True)
        self.thread.start()

    def _accept(self) -> None:
        while not self.stopped.is_set():
            try:
                conn, _ = self.listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            with self.lock:
                self.connections.append(conn)
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        total = 0
        try:
            while True:
                data = bytearray(conn.recv(65536))
                if not data:
                    return
                end = total + len(data)
                if self.fault is not None and total <= self.after < end:
                    if self.fault == "corrupt":
                        data[self.after - total] ^= 0xFF
                    elif self.fault == "drop":
                        return
                    elif self.fault == "stall":
                        self.stopped.wait()
                        return
                conn.sendall(data)
                total = end
        except OSError:
            return
        finally:
            conn.close()

    def close(self) -> None:
        self.stopped.set()
        self.listener.close()
        with self.lock:
            for conn in self.connections:
                with contextlib.suppress(OSError):
                    conn.shutdown(socket.SHUT_RDWR)
        self.thread.join()


@dataclass
class BenchRun:
    status: int
    stdout: str
    stderr: str
    figures: dict[str, Any]


def run_bench(tmp_path: Path, *args: str, timeout: float = 30) -> BenchRun:
    """Run ``python -m loadtest`` as a user would, with --json into ``tmp_path``."""
    out = tmp_path / "figures.json"
    proc = subprocess.run(
        [sys.executable, "-m", "loadtest", "--json", str(out), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    figures = json.loads(out.read_text()) if out.exists() else {}
    return BenchRun(proc.returncode, proc.stdout, proc.stderr, figures)
