"""Listening sockets, made before any backend runs.

Backends only ever receive listening sockets, so the same backend serves sockets it
bound, sockets inherited from systemd, and one SO_REUSEPORT socket per worker process.
"""

from __future__ import annotations

import contextlib
import errno
import os
import socket
import stat
from collections.abc import Sequence
from typing import TYPE_CHECKING

from echod.net.addresses import Address, ListenerError

if TYPE_CHECKING:
    from echod.tls import TlsEndpoint


class ListeningSocket(socket.socket):
    """A listener that carries what its address's prefixes asked of its connections.

    ``tls`` is the :class:`~echod.tls.TlsEndpoint` every connection accepted on it is
    wrapped with, or None; ``proxy_version`` the PROXY protocol version its clients send
    first, or 0. Accepted sockets are plain ``socket.socket`` (``accept`` builds them
    from the module's class, not from ``type(self)``).
    """

    __slots__ = ("proxy_version", "tls")

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self.tls: TlsEndpoint | None = None
        self.proxy_version = 0


def tls_of(sock: socket.socket) -> TlsEndpoint | None:
    """The TLS endpoint of a listener, None for plain TCP, Unix and UDP."""
    return sock.tls if isinstance(sock, ListeningSocket) else None


def proxy_version(sock: socket.socket) -> int:
    """The PROXY protocol version a listener's clients send (0: none)."""
    return sock.proxy_version if isinstance(sock, ListeningSocket) else 0


def bind(
    address: Address,
    backlog: int,
    *,
    reuse_port: bool = False,
    unix_mode: int = 0o660,
) -> socket.socket:
    """A non-blocking listening socket for ``address``, or a :class:`ListenerError`."""
    if address.path is not None:
        return _bind_unix(address, backlog, unix_mode)
    try:
        infos = socket.getaddrinfo(
            address.host,
            address.port,
            type=socket.SOCK_DGRAM if address.datagram else socket.SOCK_STREAM,
            flags=socket.AI_PASSIVE,
        )
    except socket.gaierror as exc:
        raise ListenerError(
            f"cannot listen on {address}: host does not resolve ({exc.strerror})"
        ) from None
    family, type_, proto, _, sockaddr = infos[0]
    sock = _socket_for(address, family, type_, proto)
    try:
        if not address.datagram:  # on UDP it would let a second server share the port
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if reuse_port:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        if family == socket.AF_INET6:
            # "::" serves IPv4 too (dual stack) whatever net.ipv6.bindv6only says;
            # a specific IPv6 address is unaffected.
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        sock.bind(sockaddr)
        if not address.datagram:
            sock.listen(backlog)
    except OSError as exc:
        sock.close()
        raise ListenerError(f"cannot listen on {address}: {_explain(exc, address)}") from None
    sock.setblocking(False)
    return sock


def _socket_for(address: Address, family: int, type_: int, proto: int = 0) -> ListeningSocket:
    sock = ListeningSocket(family, type_, proto)
    sock.proxy_version = address.proxy
    return sock


def _bind_unix(address: Address, backlog: int, mode: int) -> socket.socket:
    path = address.path or ""
    _remove_stale(path)
    sock = _socket_for(address, socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        # Bind under a restrictive umask so the socket is never briefly open to all.
        old_umask = os.umask(0o777 & ~mode)
        try:
            sock.bind(path)
        finally:
            os.umask(old_umask)
        os.chmod(path, mode)
        sock.listen(backlog)
    except OSError as exc:
        sock.close()
        raise ListenerError(f"cannot listen on unix:{path}: {exc.strerror or exc}") from None
    sock.setblocking(False)
    return sock


def _remove_stale(path: str) -> None:
    """Unlink a socket file left by a process that died, but never a live one."""
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        return
    except OSError as exc:
        raise ListenerError(f"cannot listen on unix:{path}: {exc.strerror}") from None
    if not stat.S_ISSOCK(mode):
        raise ListenerError(f"cannot listen on unix:{path}: a file that is not a socket is there")
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.connect(path)
    except ConnectionRefusedError:
        os.unlink(path)
        return
    except OSError:
        return  # let bind report what is wrong
    finally:
        probe.close()
    raise ListenerError(f"cannot listen on unix:{path}: another server is listening there")


def _explain(exc: OSError, address: Address) -> str:
    if exc.errno == errno.EADDRINUSE:
        return "address already in use"
    if exc.errno in (errno.EACCES, errno.EPERM):
        if address.port < 1024:
            return "permission denied (ports below 1024 need root or CAP_NET_BIND_SERVICE)"
        return "permission denied"
    if exc.errno == errno.EADDRNOTAVAIL:
        return "no such address on this machine"
    return exc.strerror or str(exc)


def describe(sock: socket.socket) -> str:
    """The address a listener is bound to, as an operator would type it to ``--listen``,
    prefixes included (``proxy-v2:tls:127.0.0.1:7443``, ``udp:[::1]:7``)."""
    version = proxy_version(sock)
    prefix = (f"proxy-v{version}:" if version else "") + ("tls:" if tls_of(sock) else "")
    if sock.type == socket.SOCK_DGRAM:
        prefix = "udp:"
    name = sock.getsockname()
    if sock.family == socket.AF_UNIX:
        return f"{prefix}unix:{name}"
    if sock.family == socket.AF_INET6:
        return f"{prefix}[{name[0]}]:{name[1]}"
    return f"{prefix}{name[0]}:{name[1]}"


def unix_paths(listeners: Sequence[socket.socket]) -> list[str]:
    """The socket files of Unix listeners, to remove once they are closed."""
    paths = [sock.getsockname() for sock in listeners if sock.family == socket.AF_UNIX]
    return [path for path in paths if isinstance(path, str) and path]


def close_all(listeners: Sequence[socket.socket], remove: Sequence[str] = ()) -> None:
    """Close listeners (backends may have closed them already) and remove ``remove``."""
    for sock in listeners:
        sock.close()
    for path in remove:
        with contextlib.suppress(OSError):
            os.unlink(path)
