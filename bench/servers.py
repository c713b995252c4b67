"""Starting and stopping the servers under test, pinned to their CPUs.

echod's contract: ``python -m echod --backend NAME --host 127.0.0.1 --port 0``
logs ``listening on 127.0.0.1:PORT`` to stderr and exits 0 on SIGTERM;
``python -m echod --list-backends`` prints one backend name a line.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
REFERENCE_SOURCE = HERE / "reference" / "echo_epoll.c"
REFERENCE_BINARY = HERE / "reference" / "echo-epoll"
REFERENCE = "c-epoll"
# The completion model's limit row (issue 17), beside the C epoll one; the ratios
# ("vs C") stay against c-epoll.
URING_SOURCE = HERE / "reference" / "echo_uring.c"
URING_BINARY = HERE / "reference" / "echo-uring"
URING_REFERENCE = "c-uring"
TLS_REFERENCE_SOURCE = HERE / "reference" / "echo_tls.c"
TLS_REFERENCE_BINARY = HERE / "reference" / "echo-tls"
# The TLS cells' limit row (issue 19): their "vs C" ratios are against it.
TLS_REFERENCE = "c-tls"
REFERENCES = (REFERENCE, URING_REFERENCE, TLS_REFERENCE)
CLIENT_SOURCE = HERE / "reference" / "echo_client.c"
CLIENT_BINARY = HERE / "reference" / "echo-client"
# The TLS handshake cells' C client (issue 19), beside echod-bench as echo-client is.
HS_CLIENT_SOURCE = HERE / "reference" / "echo_hs_client.c"
HS_CLIENT_BINARY = HERE / "reference" / "echo-hs-client"
LISTENING = re.compile(rb"listening on (?:proxy-v[12]:)?(?:tls:)?\[?([0-9a-fA-F.:]+?)\]?:(\d+)")


@dataclass(frozen=True)
class ServerSpec:
    name: str
    argv: tuple[str, ...]
    backend: str = ""
    workers: int = 1


class ServerFailed(Exception):
    """The server did not start, or did not stop cleanly."""


def pin(cpus: set[int] | None) -> Callable[[], None] | None:
    """A ``preexec_fn`` that pins the child (and all it starts) to ``cpus``."""
    if not cpus:
        return None
    chosen = set(cpus)
    return lambda: os.sched_setaffinity(0, chosen)


def echod_backends(python: str = sys.executable) -> list[str]:
    """The backends echod offers here; empty when echod is not runnable yet."""
    try:
        proc = subprocess.run(
            [python, "-m", "echod", "--list-backends"], capture_output=True, text=True, timeout=30
        )
    except (OSError, subprocess.TimeoutExpired):
        return []
    if proc.returncode != 0:
        return []
    return [line.split()[0] for line in proc.stdout.splitlines() if line.strip()]


def build(source: Path, binary: Path, libraries: tuple[str, ...] = ()) -> str | None:
    """Build one C file with the system ``cc`` unless the binary is newer; returns why
    not, or None."""
    compiler = shutil.which("cc")
    if compiler is None:
        return "no C compiler (cc) here"
    # The sources and the headers beside them (pattern.h): a change to either rebuilds.
    inputs = [source, *source.parent.glob("*.h")]
    if binary.exists() and binary.stat().st_mtime >= max(p.stat().st_mtime for p in inputs):
        return None
    proc = subprocess.run(
        [compiler, "-O2", "-Wall", "-o", str(binary), str(source), *libraries],
        capture_output=True,
        text=True,
    )
    if proc.returncode != 0:
        return f"building {source.name} failed:\n{proc.stderr.strip()}"
    return None


def build_reference() -> str | None:
    """Build the C reference server; returns a note when it cannot."""
    problem = build(REFERENCE_SOURCE, REFERENCE_BINARY)
    return None if problem is None else f"{problem}: the C reference row is skipped"


def build_uring_reference() -> str | None:
    """Build the C io_uring reference server (needs liburing); a note when it cannot."""
    problem = build(URING_SOURCE, URING_BINARY, ("-luring",))
    return None if problem is None else f"{problem}: the C uring reference row is skipped"


def build_tls_reference() -> str | None:
    """Build the C TLS reference server (OpenSSL, libssl-dev); a note when it cannot."""
    problem = build(TLS_REFERENCE_SOURCE, TLS_REFERENCE_BINARY, ("-lssl", "-lcrypto"))
    return None if problem is None else f"{problem}: the C TLS reference row is skipped"


def build_client() -> str | None:
    """Build the C client the generator ceiling is measured with; a note when it cannot."""
    problem = build(CLIENT_SOURCE, CLIENT_BINARY)
    return None if problem is None else f"{problem}: the C client's runs are skipped"


def build_hs_client() -> str | None:
    """Build the C TLS handshake client (OpenSSL, libssl-dev); a note when it cannot."""
    problem = build(HS_CLIENT_SOURCE, HS_CLIENT_BINARY, ("-lssl", "-lcrypto"))
    return None if problem is None else f"{problem}: the C handshake client's runs are skipped"


def specs(
    backends: list[str],
    with_reference: bool,
    python: str = sys.executable,
    with_uring_reference: bool = False,
    with_tls_reference: bool = False,
) -> list[ServerSpec]:
    """Every server of a run. The C TLS server's certificate and address are added per
    cell (``tls_argv``): its certificate is made for the run."""
    result = [ServerSpec(name, echod_argv(name, python), name) for name in backends]
    if with_reference:
        result.append(ServerSpec(REFERENCE, (str(REFERENCE_BINARY), "127.0.0.1", "0")))
    if with_uring_reference:
        result.append(ServerSpec(URING_REFERENCE, (str(URING_BINARY), "127.0.0.1", "0")))
    if with_tls_reference:
        result.append(ServerSpec(TLS_REFERENCE, (str(TLS_REFERENCE_BINARY),)))
    return result


def echod_argv(
    backend: str, python: str = sys.executable, listen: tuple[str, ...] = ()
) -> tuple[str, ...]:
    """echod on an ephemeral loopback port; ``listen``, if given, replaces the address
    (``--listen tls:...`` and the options it needs)."""
    address = listen or ("--host", "127.0.0.1", "--port", "0")
    return (python, "-m", "echod", "--backend", backend, *address)


def tls_argv(spec: ServerSpec, cert: Path, key: str | Path) -> tuple[str, ...]:
    """``spec`` serving TLS with ``cert`` and ``key`` on an ephemeral loopback port."""
    if spec.name == TLS_REFERENCE:
        return (*spec.argv, str(cert), str(key), "127.0.0.1", "0")
    listen = ("--listen", "tls:127.0.0.1:0", "--tls-cert", str(cert), "--tls-key", str(key))
    return echod_argv(spec.backend, spec.argv[0], listen)


def proxy_argv(spec: ServerSpec, version: str) -> tuple[str, ...]:
    """echod taking a PROXY ``version`` header first, from 127.0.0.1 only."""
    listen = ("--listen", f"proxy-{version}:127.0.0.1:0", "--proxy-from", "127.0.0.1/32")
    return echod_argv(spec.backend, spec.argv[0], listen)


def worker_specs(
    backends: tuple[str, ...], counts: tuple[int, ...], python: str = sys.executable
) -> list[ServerSpec]:
    """One server per backend and worker count, in echod's default listen mode."""
    return [
        ServerSpec(
            f"{backend} x{count}",
            (*echod_argv(backend, python), "--workers", str(count)),
            backend,
            count,
        )
        for backend in backends
        for count in counts
    ]


class RunningServer:
    """One server process, its port and its stderr log."""

    def __init__(
        self, spec: ServerSpec, cpus: set[int] | None, start_timeout: float = 15.0
    ) -> None:
        self.spec = spec
        # The log outlives this call: the server writes to it until stop().
        prefix = f"bench-{spec.name}-"
        self.log = tempfile.NamedTemporaryFile(prefix=prefix, suffix=".log", delete=False)  # noqa: SIM115
        self.proc = subprocess.Popen(
            spec.argv,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=self.log,
            preexec_fn=pin(cpus),
        )
        # Whether stop() had to SIGKILL it: the cell is then faulty (✗ in every table).
        self.killed = False
        self.port = self._wait_for_port(start_timeout)

    def _wait_for_port(self, timeout: float) -> int:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            text = Path(self.log.name).read_bytes()
            found = LISTENING.search(text)
            if found:
                return int(found.group(2))
            if self.proc.poll() is not None:
                break
            time.sleep(0.02)
        self.kill()
        raise ServerFailed(f"{self.spec.name} did not report its port: {self.stderr()[-500:]}")

    @property
    def pid(self) -> int:
        return self.proc.pid

    def stderr(self) -> str:
        return Path(self.log.name).read_text(errors="replace")

    def stop(self, timeout: float = 10.0) -> int:
        """SIGTERM and wait; the exit status is the server's word on a clean stop."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.killed = True
                self.kill()
        self.log.close()
        os.unlink(self.log.name)
        return self.proc.returncode

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
