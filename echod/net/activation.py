"""Listening sockets handed over by the service manager (socket activation).

The protocol of sd_listen_fds(3): the manager opens the sockets, then starts
us with them at fds 3, 4, ... (``SD_LISTEN_FDS_START``) and sets
``LISTEN_PID`` (the process they are meant for), ``LISTEN_FDS`` (how many) and
``LISTEN_FDNAMES`` (colon-separated names, from ``FileDescriptorName=``).

The fds are duplicates of ones the manager keeps open, and the socket options
are shared with its copy: never call shutdown(2) on them (that would stop the
listener for every later activation too); close() is fine.
"""

from __future__ import annotations

import os
import socket
import stat
from collections.abc import MutableMapping

from echod.net.addresses import ListenerError, parse_scheme
from echod.net.listener_set import Named
from echod.net.listeners import ListeningSocket

SD_LISTEN_FDS_START = 3
_VARIABLES = ("LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES")


class ActivationError(ListenerError):
    """The inherited fds or the variables describing them are unusable."""


# The channel an old echod hands its successor with its listeners (an upgrade).
UPGRADE_FD_NAME = "echod.upgrade"


def inherited_sockets(
    environ: MutableMapping[str, str] = os.environ, unset: bool = True
) -> list[Named]:
    """The listening sockets passed to this process, or [] if none.

    Each is named by ``FileDescriptorName=`` of its socket unit (systemd defaults it to
    the unit name, "echod.socket"; "unknown" stands in when LISTEN_FDNAMES is unset), or
    by the echod that handed it on (:mod:`echod.net.listener_set`).

    Each is non-blocking and close-on-exec. With `unset` the three variables
    are removed from `environ` whatever the outcome, as sd_listen_fds(3) does,
    so a child process never takes fds meant for its parent as its own.
    Raises ActivationError, with one line naming the culprit, when the
    variables are malformed or an fd is not a listening stream socket.
    """
    try:
        return _inherited_sockets(environ)
    finally:
        if unset:
            for name in _VARIABLES:
                environ.pop(name, None)


def _inherited_sockets(environ: MutableMapping[str, str]) -> list[Named]:
    listen_pid = environ.get("LISTEN_PID")
    if listen_pid is None:
        return []
    if _parse_int("LISTEN_PID", listen_pid) != os.getpid():
        # Meant for another process, typically our parent: ours to ignore.
        return []
    count = _parse_int("LISTEN_FDS", environ.get("LISTEN_FDS", "0"))
    fdnames = environ.get("LISTEN_FDNAMES")
    names = fdnames.split(":") if fdnames is not None else ["unknown"] * count
    if len(names) != count:
        raise ActivationError(
            f"LISTEN_FDNAMES={fdnames!r} has {len(names)} names but LISTEN_FDS={count}"
        )
    inherited: list[Named] = []
    try:
        for fd, name in enumerate(names, SD_LISTEN_FDS_START):
            inherited.append(Named(_listening_socket(fd, name), name))
    except BaseException:
        # Leave the fds as we found them: the error is the caller's to report.
        for entry in inherited:
            entry.sock.detach()
        raise
    return inherited


def _listening_socket(fd: int, name: str) -> socket.socket:
    where = f"inherited fd {fd} ({name!r})"
    try:
        mode = os.fstat(fd).st_mode
    except OSError as exc:
        raise ActivationError(f"{where} is not open: {exc.strerror}") from None
    if not stat.S_ISSOCK(mode):
        raise ActivationError(f"{where} is not a socket")
    # family, type and proto are read from the fd itself (getsockopt).
    sock = ListeningSocket(fileno=fd)
    if name == UPGRADE_FD_NAME and sock.type == socket.SOCK_SEQPACKET:
        sock.set_inheritable(False)
        return sock
    if name.startswith("proxy-"):  # FileDescriptorName=proxy-v2, as --listen spells it
        try:
            sock.proxy_version, _ = parse_scheme(name)  # +tls: is_tls_name
        except ListenerError as exc:
            sock.detach()
            raise ActivationError(f"{where}: {exc}") from None
    try:
        # A datagram socket (ListenDatagram=) is served as UDP echo, told apart by its type.
        if sock.type not in (socket.SOCK_STREAM, socket.SOCK_DGRAM):
            raise ActivationError(
                f"{where} is {sock.type.name}, not SOCK_STREAM or SOCK_DGRAM: "
                "use ListenStream= or ListenDatagram= in the socket unit"
            )
        if sock.type == socket.SOCK_STREAM and not sock.getsockopt(
            socket.SOL_SOCKET, socket.SO_ACCEPTCONN
        ):
            raise ActivationError(f"{where} is a stream socket that is not listening")
    except BaseException:
        sock.detach()
        raise
    sock.setblocking(False)
    sock.set_inheritable(False)
    return sock


def _parse_int(variable: str, value: str) -> int:
    # Digits only: int() would also take " 3", "+3" and "3_0".
    if not (value.isascii() and value.isdigit()):
        raise ActivationError(f"{variable}={value!r} is not a non-negative integer")
    return int(value)
