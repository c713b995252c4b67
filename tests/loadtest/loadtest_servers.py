"""Echo servers for testing the load generator: one correct, others broken on purpose.

They run as threads of the test process on 127.0.0.1:0, one thread per
connection (two with ``delay`` or a freeze), so each fault is a few plain lines
anyone can check by eye.
"""

from __future__ import annotations

import contextlib
import json
import queue
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# Faults that strike on every connection once it has passed ``after`` bytes.
EVERY_CONNECTION = ("corrupt", "drop", "stall", "first_n")
# Faults that strike once per server, on the first connection to pass ``after`` bytes.
ONCE = (
    "stall_one",
    "drop_bytes",
    "duplicate",
    "swap",
    "wrong_connection",
    "extra",
    "close_early",
)


class EchoServer:
    """Echoes every byte, except that ``fault`` strikes once ``after`` bytes of a connection.

    fault (every connection): None (correct), "corrupt" (flips the byte at offset
    ``after``), "drop" (closes the connection), "stall" (stops reading and
    writing, keeps it open), "first_n" (echoes only the first ``after`` bytes,
    then reads and discards the rest).
    fault (once per server): "stall_one" (that connection stops echoing but keeps
    reading, open), "drop_bytes" (three bytes from the middle of a read are not
    echoed), "duplicate" (a read is echoed twice), "swap" (the two halves of a
    read are echoed in the wrong order), "wrong_connection" (a read is answered
    with bytes another connection sent), "extra" (16 bytes nobody sent follow an
    echo), "close_early" (half a read is echoed, then the connection closed).
    ``delay``: every read is echoed that many seconds after it arrived.
    ``freeze_at``/``freeze_for``: nothing is echoed from ``freeze_at`` seconds
    after the first byte served, for ``freeze_for`` seconds.
    """

    def __init__(
        self,
        fault: str | None = None,
        after: int = 1000,
        delay: float = 0.0,
        freeze_at: float | None = None,
        freeze_for: float = 0.0,
    ) -> None:
        assert fault is None or fault in EVERY_CONNECTION + ONCE, fault
        self.fault = fault
        self.after = after
        self.delay = delay
        self.freeze_at = freeze_at
        self.freeze_for = freeze_for
        self.first_byte_at: float | None = None
        self.struck = False
        self.recent: dict[int, bytes] = {}  # a read per connection, for wrong_connection
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

    def _strikes(self, conn: socket.socket, total: int, end: int) -> bool:
        """Whether the fault strikes on this read (which spans stream bytes total..end)."""
        if self.fault is None or not total <= self.after < end:
            return False
        if self.fault in EVERY_CONNECTION:
            return True
        with self.lock:
            if self.struck:
                return False
            if self.fault == "wrong_connection" and not any(
                k != conn.fileno() for k in self.recent
            ):
                return False
            self.struck = True
            return True

    def _serve(self, conn: socket.socket) -> None:
        total = 0
        mute = False  # stall_one and first_n: read on, echo nothing
        timed = self.delay > 0 or self.freeze_at is not None
        outbox: queue.Queue[tuple[float, bytes] | None] = queue.Queue()
        if timed:
            threading.Thread(target=self._send_later, args=(conn, outbox), daemon=True).start()
        try:
            while True:
                data = bytearray(conn.recv(65536))
                if not data:
                    return
                now = time.monotonic()
                if self.first_byte_at is None:
                    self.first_byte_at = now
                end = total + len(data)
                replies = [bytes(data)]
                if self._strikes(conn, total, end):
                    fault = self.fault
                    if fault == "corrupt":
                        data[self.after - total] ^= 0xFF
                        replies = [bytes(data)]
                    elif fault == "drop":
                        return
                    elif fault == "stall":
                        self.stopped.wait()
                        return
                    elif fault == "first_n":
                        replies = [bytes(data[: self.after - total])]
                        mute = True
                    elif fault == "stall_one":
                        replies = []
                        mute = True
                    elif fault == "drop_bytes":
                        middle = len(data) // 2
                        replies = [bytes(data[: middle - 1] + data[middle + 2 :])]
                    elif fault == "duplicate":
                        replies = [bytes(data), bytes(data)]
                    elif fault == "swap":
                        half = len(data) // 2
                        replies = [bytes(data[half:] + data[:half])]
                    elif fault == "wrong_connection":
                        with self.lock:
                            other = next(v for k, v in self.recent.items() if k != conn.fileno())
                        replies = [(other * (len(data) // len(other) + 1))[: len(data)]]
                    elif fault == "extra":
                        replies = [bytes(data), b"\xa5" * 16]
                    elif fault == "close_early":
                        conn.sendall(data[: len(data) // 2])
                        return
                elif mute:
                    replies = []
                if self.fault == "wrong_connection":
                    with self.lock:
                        self.recent[conn.fileno()] = bytes(data)
                total = end
                for reply in replies:
                    if timed:
                        outbox.put((now + self.delay, reply))
                    else:
                        conn.sendall(reply)
        except OSError:
            return
        finally:
            outbox.put(None)
            if not timed:
                conn.close()

    def _send_later(
        self, conn: socket.socket, outbox: queue.Queue[tuple[float, bytes] | None]
    ) -> None:
        """Echo each read at its time, holding everything back while frozen."""
        try:
            while (item := outbox.get()) is not None:
                at, reply = item
                if self.freeze_at is not None and self.first_byte_at is not None:
                    frozen_from = self.first_byte_at + self.freeze_at
                    frozen_until = frozen_from + self.freeze_for
                    if frozen_from <= max(at, time.monotonic()) < frozen_until:
                        at = frozen_until
                pause = at - time.monotonic()
                if pause > 0:
                    time.sleep(pause)
                conn.sendall(reply)
        except OSError:
            pass
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
