"""Helpers for the UDP suites: run echod with UDP listeners, talk to it, read its counters."""

from __future__ import annotations

import re
import socket
import struct
import time
from collections.abc import Iterator
from contextlib import contextmanager

from echod import backends
from tests.support import Echod

TCP_LISTENING = re.compile(r"listening on (?!udp:)(\[[^\]]+\]|[^ :]+):(\d+)")
UDP_LISTENING = re.compile(r"listening on udp:(\[[^\]]+\]|[^ :]+):(\d+)")
UDP_BACKENDS = [name for name in backends.available() if backends.serves_udp(name)]


class UdpEchod(Echod):
    """echod with UDP listeners; ``udp`` holds (host, port) of each, in --listen order."""

    def __init__(self, *args: str, listeners: int = 1, **kwargs: object) -> None:
        super().__init__(*args, wait=False, **kwargs)  # type: ignore[arg-type]
        self.wait_for(re.compile(r"(?s)(?:listening on udp:[^\n]*\n.*?){" + str(listeners) + "}"))
        self.udp = [
            (m.group(1).strip("[]"), int(m.group(2))) for m in UDP_LISTENING.finditer(self.log)
        ]
        tcp = TCP_LISTENING.search(self.log)
        if tcp:
            self.host, self.port = tcp.group(1).strip("[]"), int(tcp.group(2))

    def stats(self) -> dict[str, int]:
        """Fresh counters, from the line a SIGUSR1 makes echod log (the first after the
        signal: a pattern counting every stats line so far grew slower with each call)."""
        line = self.report()
        udp = line[line.index("udp in=") :]
        return {key: int(value) for key, value in re.findall(r"([a-z-]+)=(\d+)", udp)}


@contextmanager
def udp_echod(*args: str, listeners: int = 1, **kwargs: object) -> Iterator[UdpEchod]:
    server = UdpEchod(*args, listeners=listeners, **kwargs)
    try:
        yield server
    finally:
        status = server.stop()
        assert status == 0, f"echod exited {status}; log:\n{server.log}"
        assert "Traceback" not in server.log, server.log


def client(host: str, bind: tuple[str, int] | None = None, timeout: float = 2.0) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_DGRAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
    if bind is not None:
        sock.bind(bind)
    sock.settimeout(timeout)
    return sock


def receive_all(sock: socket.socket, quiet: float = 0.3) -> list[bytes]:
    """Every datagram that arrives until none has for ``quiet`` seconds."""
    sock.settimeout(quiet)
    received = []
    while True:
        try:
            received.append(sock.recv(65_536))
        except TimeoutError:
            return received


def spoofed(source: tuple[str, int], destination: tuple[str, int], payload: bytes) -> None:
    """Send one IPv4 UDP datagram from any source address and port (needs root).

    A raw socket with IP_HDRINCL: the kernel fills in the checksum of the IP header;
    the UDP checksum 0 means "none" over IPv4 (RFC 768).
    """
    udp = struct.pack("!HHHH", source[1], destination[1], 8 + len(payload), 0) + payload
    header = struct.pack(
        "!BBHHHBBH4s4s",
        0x45,
        0,
        20 + len(udp),
        0,
        0,
        64,
        socket.IPPROTO_UDP,
        0,
        socket.inet_aton(source[0]),
        socket.inet_aton(destination[0]),
    )
    with socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW) as raw:
        raw.setsockopt(socket.IPPROTO_IP, socket.IP_HDRINCL, 1)
        raw.sendto(header + udp, (destination[0], 0))


def settled(server: UdpEchod, timeout: float = 10.0) -> dict[str, int]:
    """The counters once echod has read every datagram it will: ``in`` the same in two
    reports 0.1 s apart. Answers are on the clients' sockets by then (loopback delivers
    in the sender's sendto), so what a client reads next is all it will get."""
    deadline = time.monotonic() + timeout
    last = server.stats()
    while True:
        time.sleep(0.1)
        stats = server.stats()
        if stats["in"] == last["in"]:
            return stats
        assert time.monotonic() < deadline, f"echod still reading after {timeout} s: {stats}"
        last = stats


def wait_until_count(
    server: UdpEchod, key: str, at_least: int, timeout: float = 10.0
) -> dict[str, int]:
    deadline = time.monotonic() + timeout
    while True:
        stats = server.stats()
        if stats[key] >= at_least or time.monotonic() > deadline:
            return stats
        time.sleep(0.1)
