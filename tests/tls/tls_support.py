"""Certificates made by the ``openssl`` CLI for each test session (no key is committed),
and a TLS client that owns every byte: an ``SSLObject`` over memory BIOs on one
non-blocking socket, so it can send without reading, send close_notify and keep
reading (which ``SSLSocket.unwrap`` cannot), and never uses one SSL object from two
threads."""

from __future__ import annotations

import contextlib
import select
import socket
import ssl
import subprocess
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from echod.backends.base import unread_bytes
from tests.support import TIMEOUT, require_tool

VERSIONS = {"1.2": ssl.TLSVersion.TLSv1_2, "1.3": ssl.TLSVersion.TLSv1_3}


@dataclass(frozen=True)
class Pki:
    """A CA, server certificates for ``localhost`` and ``other.test``, and client
    certificates from that CA and from an unrelated one."""

    directory: Path

    def path(self, name: str) -> str:
        return str(self.directory / name)

    @property
    def ca(self) -> str:
        return self.path("ca.pem")

    def server_args(self) -> list[str]:
        return ["--tls-cert", self.path("server.pem"), "--tls-key", self.path("server.key")]


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(
        [require_tool("openssl"), *args], cwd=cwd, check=True, capture_output=True, timeout=60
    )


def _ca(name: str, cwd: Path) -> None:
    _openssl(
        "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
        "-keyout", f"{name}.key", "-out", f"{name}.pem", "-days", "2", "-subj", f"/CN={name}",
        "-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign",
        cwd=cwd,
    )  # fmt: skip


def leaf(name: str, ca: str, cn: str, sans: str, usage: str, cwd: Path, days: int = 2) -> None:
    _openssl(
        "req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
        "-keyout", f"{name}.key", "-out", f"{name}.csr", "-subj", f"/CN={cn}",
        cwd=cwd,
    )  # fmt: skip
    (cwd / f"{name}.ext").write_text(f"subjectAltName={sans}\nextendedKeyUsage={usage}\n")
    _openssl(
        "x509", "-req", "-in", f"{name}.csr", "-CA", f"{ca}.pem", "-CAkey", f"{ca}.key",
        "-CAcreateserial", "-out", f"{name}.pem", "-days", str(days), "-extfile", f"{name}.ext",
        cwd=cwd,
    )  # fmt: skip


def make_pki(directory: Path) -> Pki:
    _ca("ca", directory)
    _ca("rogue", directory)
    leaf("server", "ca", "localhost", "DNS:localhost,IP:127.0.0.1", "serverAuth", directory)
    leaf("other", "ca", "other.test", "DNS:other.test", "serverAuth", directory)
    leaf("client", "ca", "client", "DNS:client", "clientAuth", directory)
    leaf("intruder", "rogue", "client", "DNS:client", "clientAuth", directory)
    return Pki(directory)


def client_context(pki: Pki, version: str | None = None, cert: str | None = None) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=pki.ca)
    if version is not None:
        context.minimum_version = context.maximum_version = VERSIONS[version]
    if cert is not None:
        context.load_cert_chain(pki.path(f"{cert}.pem"), pki.path(f"{cert}.key"))
    return context


class TlsClient:
    """One TLS connection driven by hand: every record in and out goes through here."""

    def __init__(
        self,
        address: tuple[str, int],
        context: ssl.SSLContext,
        server_hostname: str = "localhost",
        receive_buffer: int | None = None,
    ) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        if receive_buffer is not None:  # before connect, so the window starts small
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, receive_buffer)
        self.sock.settimeout(TIMEOUT)
        self.sock.connect(address)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.sock.setblocking(False)
        self.incoming = ssl.MemoryBIO()
        self.outgoing = ssl.MemoryBIO()
        self.tls = context.wrap_bio(self.incoming, self.outgoing, server_hostname=server_hostname)
        self.backlog = bytearray()  # ciphertext not yet taken by the socket
        self.closed_by_peer = False  # the server's close_notify arrived
        self.eof = False  # the TCP connection ended

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> TlsClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # Plumbing --------------------------------------------------------------------------
    def _wait(self, write: bool) -> tuple[bool, bool]:
        readable, writable, _ = select.select(
            [self.sock], [self.sock] if write else [], [], TIMEOUT
        )
        if not readable and not writable:
            raise TimeoutError("the server neither sent nor took anything")
        return bool(readable), bool(writable)

    def _push(self) -> int:
        self.backlog += self.outgoing.read()
        if not self.backlog:
            return 0
        try:
            sent = self.sock.send(self.backlog)
        except BlockingIOError:
            return 0
        del self.backlog[:sent]
        return sent

    def _pull(self) -> None:
        try:
            data = self.sock.recv(1 << 18)
        except BlockingIOError:
            return
        if data:
            self.incoming.write(data)
        else:
            self.eof = True
            self.incoming.write_eof()

    def handshake(self) -> None:
        while True:
            try:
                self.tls.do_handshake()
                self._push()
                while self.backlog:
                    self._wait(True)
                    self._push()
                return
            except ssl.SSLWantReadError:
                self._push()
                if self._wait(bool(self.backlog))[0]:
                    self._pull()

    def decrypted(self, into: bytearray) -> None:
        """Whatever plaintext the records received so far hold."""
        while True:
            try:
                chunk = self.tls.read(1 << 18)
            except ssl.SSLWantReadError:
                return
            except ssl.SSLZeroReturnError:
                self.closed_by_peer = True
                return
            if not chunk:
                return
            into += chunk

    # What tests call -------------------------------------------------------------------
    def exchange(self, payload: bytes) -> bytes:
        """Send ``payload`` while reading; return the echo once it is all back (or EOF)."""
        view = memoryview(payload)
        offset = 0
        received = bytearray()
        while len(received) < len(payload) and not (self.eof or self.closed_by_peer):
            while offset < len(payload) and len(self.backlog) < (1 << 18):
                offset += self.tls.write(view[offset : offset + (1 << 16)])
                self.backlog += self.outgoing.read()
            readable, writable = self._wait(bool(self.backlog))
            if writable:
                self._push()
            if readable:
                self._pull()
                self.decrypted(received)
        return bytes(received)

    def send_without_reading(self, payload: bytes, quiet: float = 0.5) -> int:
        """Encrypt all of ``payload`` and push ciphertext until the server stops taking
        it for ``quiet`` seconds; returns the plaintext bytes the server has taken."""
        self.backlog += self._encrypt(payload)
        total = len(self.backlog)
        while self.backlog:
            _, writable, _ = select.select([], [self.sock], [], quiet)
            if not writable or not self._push():
                break
        return len(payload) * (total - len(self.backlog)) // max(total, 1)

    def _encrypt(self, payload: bytes) -> bytes:
        view = memoryview(payload)
        for offset in range(0, len(payload), 1 << 16):
            self.tls.write(view[offset : offset + (1 << 16)])
        return self.outgoing.read()

    def receive(self, size: int) -> bytes:
        """Push what is held back while reading, until ``size`` bytes came back (or EOF)."""
        received = bytearray()
        while len(received) < size and not (self.eof or self.closed_by_peer):
            readable, writable = self._wait(bool(self.backlog))
            if writable:
                self._push()
            if readable:
                self._pull()
                self.decrypted(received)
        return bytes(received)

    def wait_until_quiet(self, quiet: float = 0.3) -> None:
        """Until nothing more arrives for ``quiet`` seconds (reading none of it)."""
        previous = -1
        while (queued := unread_bytes(self.sock.fileno())) != previous:
            previous = queued
            select.select([], [], [], quiet)

    def close_notify(self) -> None:
        """Send close_notify and keep the connection open for reading (half-close)."""
        with contextlib.suppress(ssl.SSLWantReadError):  # the server's has not come yet
            self.tls.unwrap()
        self.backlog += self.outgoing.read()

    def read_to_end(self, expected: int | None = None) -> bytes:
        """Push what is held back and read until the server's close_notify or EOF."""
        received = bytearray()
        while not (self.eof or self.closed_by_peer):
            readable, writable = self._wait(bool(self.backlog))
            if writable:
                self._push()
            if readable:
                self._pull()
                try:
                    self.decrypted(received)
                except ssl.SSLError:
                    break  # e.g. TLS 1.2: application data after our close_notify
            if expected is not None and len(received) > expected:
                break
        return bytes(received)


@contextlib.contextmanager
def threaded_tls_echo(
    context_for: Callable[[], ssl.SSLContext],
    alter: Callable[[bytes, int], bytes] = lambda data, _echoed: data,
) -> Iterator[int]:
    """A blocking TLS echo, a thread per connection, on a loopback port it yields: for
    a fault echod never has. ``context_for`` gives each connection its context;
    ``alter`` sees each chunk and how many bytes were echoed before it."""
    listener = socket.create_server(("127.0.0.1", 0))

    def serve(conn: socket.socket) -> None:
        with contextlib.suppress(OSError), context_for().wrap_socket(conn, server_side=True) as tls:
            echoed = 0
            while data := tls.recv(65536):
                tls.sendall(alter(data, echoed))
                echoed += len(data)

    def accept() -> None:
        with contextlib.suppress(OSError):
            while True:
                conn, _ = listener.accept()
                threading.Thread(target=serve, args=(conn,), daemon=True).start()

    threading.Thread(target=accept, daemon=True).start()
    try:
        yield listener.getsockname()[1]
    finally:
        listener.close()


def flip_first(data: bytes) -> bytes:
    return bytes([data[0] ^ 1]) + data[1:]
