"""Helpers the suites share: run the real ``echod``, and talk to it over real sockets."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
LISTENING = re.compile(r"listening on (\[[^\]]+\]|[^ :]+):(\d+)")
TIMEOUT = 20.0
SYSTEMD_VARS = ("NOTIFY_SOCKET", "LISTEN_", "WATCHDOG_", "JOURNAL_STREAM", "ECHOD_")


class Echod:
    """``python -m echod`` in a subprocess, with its stderr collected as it runs."""

    def __init__(
        self,
        *args: str,
        env: dict[str, str] | None = None,
        wrapper: Sequence[str] = (),
        wait: bool = True,
    ) -> None:
        # A test's own server must not pick up a systemd environment the runner has.
        inherited = {k: v for k, v in os.environ.items() if not k.startswith(SYSTEMD_VARS)}
        full_env = {**inherited, "PYTHONUNBUFFERED": "1", **(env or {})}
        self.proc = subprocess.Popen(
            [*wrapper, sys.executable, "-m", "echod", *args],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=full_env,
            cwd=ROOT,
        )
        self.pid = self.proc.pid
        self._lines: list[str] = []
        self._changed = threading.Condition()
        self._reader = threading.Thread(target=self._collect, daemon=True)
        self._reader.start()
        self.port = 0
        self.host = "127.0.0.1"
        if wait:
            match = self.wait_for(LISTENING)
            self.host, self.port = match.group(1).strip("[]"), int(match.group(2))

    def _collect(self) -> None:
        assert self.proc.stderr is not None
        for raw in self.proc.stderr:
            with self._changed:
                self._lines.append(raw.decode(errors="replace"))
                self._changed.notify_all()
        with self._changed:
            self._changed.notify_all()

    @property
    def log(self) -> str:
        with self._changed:
            return "".join(self._lines)

    def wait_for(self, pattern: re.Pattern[str] | str, timeout: float = TIMEOUT) -> re.Match[str]:
        """Block until the log matches ``pattern``; fail with the log if it never does."""
        regex = re.compile(pattern) if isinstance(pattern, str) else pattern
        deadline = time.monotonic() + timeout
        with self._changed:
            while True:
                match = regex.search("".join(self._lines))
                if match:
                    return match
                remaining = deadline - time.monotonic()
                if remaining <= 0 or (self.proc.poll() is not None and not self._reader.is_alive()):
                    raise AssertionError(f"echod never logged {regex.pattern!r}; log:\n{self.log}")
                self._changed.wait(min(remaining, 0.2))

    def connect(self, timeout: float = TIMEOUT) -> socket.socket:
        sock = socket.create_connection((self.host, self.port), timeout=timeout)
        return sock

    def signal(self, signum: int) -> None:
        self.proc.send_signal(signum)

    def stop(self, timeout: float = TIMEOUT) -> int:
        """SIGTERM, then the exit status (SIGKILL and failure if it hangs)."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            status = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise AssertionError(
                f"echod did not stop within {timeout}s; log:\n{self.log}"
            ) from None
        self._reader.join(5)
        return status

    def open_fds(self) -> int:
        return len(os.listdir(f"/proc/{self.pid}/fd"))

    def settled_fds(self, quiet: float = 0.3) -> int:
        """The descriptor count once connections from earlier tests finished closing."""
        previous = self.open_fds()
        while True:
            time.sleep(quiet)
            current = self.open_fds()
            if current == previous:
                return current
            previous = current

    def rss(self) -> int:
        """Resident memory in bytes, from /proc."""
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
        raise AssertionError("no VmRSS line")

    def cpu_seconds(self) -> float:
        fields = Path(f"/proc/{self.pid}/stat").read_text().rsplit(")", 1)[1].split()
        ticks = os.sysconf("SC_CLK_TCK")
        return (int(fields[11]) + int(fields[12])) / ticks

    def __enter__(self) -> Echod:
        return self

    def __exit__(self, *exc: object) -> None:
        if self.proc.poll() is None:
            self.stop()
        if self.proc.stdout:
            self.proc.stdout.close()
        if self.proc.stderr:
            self.proc.stderr.close()


@contextlib.contextmanager
def echod(*args: str, **kwargs: object) -> Iterator[Echod]:
    """A running echod that must stop cleanly (exit 0, no traceback) when the block ends."""
    server = Echod(*args, **kwargs)  # type: ignore[arg-type]
    try:
        yield server
    finally:
        status = server.stop()
        assert status == 0, f"echod exited {status}; log:\n{server.log}"
        assert "Traceback" not in server.log, server.log


def exchange(sock: socket.socket, payload: bytes, chunk: int = 256 * 1024) -> bytes:
    """Send ``payload`` while reading, half-close, and return everything until EOF."""
    received = bytearray()

    def read() -> None:
        while True:
            data = sock.recv(chunk)
            if not data:
                return
            received.extend(data)

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    view = memoryview(payload)
    for start in range(0, len(payload), chunk):
        sock.sendall(view[start : start + chunk])
    sock.shutdown(socket.SHUT_WR)
    reader.join(TIMEOUT * 3)
    assert not reader.is_alive(), "echo did not end with EOF"
    return bytes(received)


def recv_exactly(sock: socket.socket, size: int) -> bytes:
    data = bytearray()
    while len(data) < size:
        chunk = sock.recv(size - len(data))
        if not chunk:
            raise AssertionError(f"EOF after {len(data)} of {size} bytes")
        data.extend(chunk)
    return bytes(data)


def reset(sock: socket.socket) -> None:
    """Close with an RST instead of a FIN (SO_LINGER with a zero timeout)."""
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
    sock.close()


def wait_until(
    condition: Callable[[], object], timeout: float = TIMEOUT, interval: float = 0.05
) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(interval)
    return bool(condition())
