"""Listen addresses as the operator writes them, parsed without a socket.

``config`` validates every address with :func:`parse_address` before anything is
bound; :mod:`echod.net.listeners` binds what it returns.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass


class ListenerError(OSError):
    """A listener that cannot be made; the message is one line for the operator."""


# Listener prefixes for the PROXY protocol (echod.net.proxy_protocol): one version per
# listener, never guessed. Written the same in a socket unit's FileDescriptorName=.
PROXY_PREFIXES = {"proxy-v1": 1, "proxy-v2": 2}


@dataclass(frozen=True)
class Address:
    """Where to listen: a TCP or UDP host and port, or a Unix stream socket path."""

    host: str = ""
    port: int = 0
    path: str | None = None
    datagram: bool = False  # udp:HOST:PORT
    tls: bool = False  # tls:HOST:PORT, tls:unix:/PATH
    proxy: int = 0  # PROXY protocol version its clients send first (proxy-v1:, proxy-v2:)

    def __str__(self) -> str:
        prefix = (f"proxy-v{self.proxy}:" if self.proxy else "") + ("tls:" if self.tls else "")
        if self.path is not None:
            return f"{prefix}unix:{self.path}"
        udp = "udp:" if self.datagram else ""
        return (
            f"{prefix}{udp}[{self.host}]:{self.port}"
            if ":" in self.host
            else f"{prefix}{udp}{self.host}:{self.port}"
        )


def parse_scheme(text: str) -> tuple[int, bool]:
    """The PROXY version of a ``proxy-vN`` scheme, and whether TLS follows the header:
    ``proxy-v2+tls`` (the same as ``proxy-v2:tls:``; a socket unit's FileDescriptorName=
    can spell only this one, since systemd refuses ':' in names)."""
    first, plus, rest = text.partition("+")
    version = PROXY_PREFIXES.get(first, 0)
    if not version:
        raise ListenerError(f"unknown listener scheme {text!r} (proxy-v1, proxy-v2)")
    if plus and rest != "tls":
        raise ListenerError(f"listener scheme {text!r}: after '+' only 'tls' is known")
    return version, bool(plus)


def parse_address(text: str) -> Address:
    """``host:port``, ``[v6]:port``, ``:port`` (all IPv4 addresses) or ``unix:/path``;
    ``udp:`` before a host and port makes it a UDP listener, ``tls:`` before a stream
    address a TLS one, and ``proxy-v1:`` or ``proxy-v2:`` before a TCP or Unix address one
    whose clients send a PROXY header. Each prefix strips itself and parses the rest, so
    they compose."""
    if text.startswith("tls:"):
        address = parse_address(text[4:])
        if address.datagram:
            raise ListenerError(
                f"listen address {text!r}: TLS is served over TCP, not UDP (no DTLS)"
            )
        if address.tls:
            raise ListenerError(f"listen address {text!r} says tls: twice")
        return dataclasses.replace(address, tls=True)
    if text.startswith("proxy-"):
        scheme, _, rest = text.partition(":")
        version, tls = parse_scheme(scheme)
        address = parse_address(f"tls:{rest}" if tls else rest)
        if address.datagram:
            raise ListenerError(f"listen address {text!r}: the PROXY protocol is for TCP")
        return dataclasses.replace(address, proxy=version)
    if text.startswith("udp:"):
        if text.startswith("udp:unix:"):
            raise ListenerError(f"address {text!r}: UDP listens on HOST:PORT, not a path")
        return dataclasses.replace(_host_and_port(text[4:], text), datagram=True)
    if text.startswith("unix:"):
        path = text[5:]
        if not path:
            raise ListenerError(f"address {text!r} has no path after 'unix:'")
        return Address(path=path)
    return _host_and_port(text, text)


def _host_and_port(text: str, given: str) -> Address:
    """``text`` without its ``udp:``; messages quote the address as ``given``."""
    if text.startswith("["):
        host, sep, rest = text[1:].partition("]")
        if not sep or not rest.startswith(":"):
            raise ListenerError(f"address {given!r} is not of the form [V6]:PORT")
        port_text = rest[1:]
    else:
        host, sep, port_text = text.rpartition(":")
        if not sep or ":" in host:
            raise ListenerError(
                f"address {given!r} is not HOST:PORT, [V6]:PORT, unix:/PATH or udp:HOST:PORT"
            )
    try:
        port = int(port_text)
    except ValueError:
        raise ListenerError(f"address {given!r}: port {port_text!r} is not a number") from None
    if not 0 <= port <= 65535:
        raise ListenerError(f"address {given!r}: port {port} is out of range (0-65535)")
    return Address(host=host or "0.0.0.0", port=port)
