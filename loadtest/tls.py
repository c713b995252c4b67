"""TLS for echod-bench: the client context, the handshake's own state, and send/recv
that speak the plain sockets' dialect.

Connections are written for non-blocking plain sockets, where "try again later" is
``BlockingIOError``. A non-blocking ``SSLSocket`` says it as ``SSLWantReadError`` or
``SSLWantWriteError`` instead, and a broken record as an ``SSLError`` whose errno is
OpenSSL's error code, not an errno: :func:`plain_calls` translates both, so the
workloads' hot paths run unchanged over TLS (one Python frame more per call, against
a record's encryption). ``SSL_write`` is all or nothing and must be retried with the
same bytes: ``flush`` retries from the same offset of the same pattern, with as many
bytes or more, which OpenSSL allows (ACCEPT_MOVING_WRITE_BUFFER, which Python sets).

The C loop (``_rrloop.c``) reads and writes the socket itself and cannot speak TLS,
so a TLS run always takes the Python loop, and the JSON's ``loop`` says so.
"""

from __future__ import annotations

import errno
import socket
import ssl
from collections.abc import Callable
from typing import Any

VERSIONS = {"1.2": ssl.TLSVersion.TLSv1_2, "1.3": ssl.TLSVersion.TLSv1_3}
LOOP_NOTE = " (Python: the C loop does not speak TLS)"
_AGAIN = (ssl.SSLWantReadError, ssl.SSLWantWriteError)


class TlsSetupError(ValueError):
    """A --tls-* setting that cannot be used; one line."""


def client_context(
    ca: str | None, insecure: bool, min_version: str | None, max_version: str | None = None
) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    if insecure:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    else:
        try:
            context.load_verify_locations(ca)
        except (OSError, ssl.SSLError) as exc:
            raise TlsSetupError(f"--tls-ca {ca}: {getattr(exc, 'strerror', None) or exc}") from None
    if min_version is not None:
        context.minimum_version = VERSIONS[min_version]
    if max_version is not None:
        context.maximum_version = VERSIONS[max_version]
    return context


def plain_calls(
    sock: ssl.SSLSocket,
) -> tuple[Callable[[Any], int], Callable[[int], bytes], Callable[[Any], int]]:
    """``send``, ``recv`` and ``recv_into`` raising what a plain socket would."""
    ssl_send, ssl_recv, ssl_recv_into = sock.send, sock.recv, sock.recv_into

    def send(data: Any) -> int:
        try:
            return ssl_send(data)
        except _AGAIN:
            raise BlockingIOError from None
        except ssl.SSLError:
            raise OSError(errno.EPROTO, "TLS error") from None

    def recv(size: int) -> bytes:
        try:
            return ssl_recv(size)
        except _AGAIN:
            raise BlockingIOError from None
        except ssl.SSLError:
            raise OSError(errno.EPROTO, "TLS error") from None

    def recv_into(buffer: Any) -> int:
        try:
            return ssl_recv_into(buffer)
        except _AGAIN:
            raise BlockingIOError from None
        except ssl.SSLError:
            raise OSError(errno.EPROTO, "TLS error") from None

    return send, recv, recv_into


def probe(
    context: ssl.SSLContext, sock: socket.socket, server_hostname: str | None
) -> ssl.SSLSocket:
    """The preflight's blocking handshake (the socket's timeout bounds it)."""
    return context.wrap_socket(sock, server_hostname=server_hostname)
