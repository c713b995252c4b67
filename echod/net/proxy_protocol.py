"""The PROXY protocol header, versions 1 and 2, parsed strictly and without IO.

A load balancer in front of echod (HAProxy's ``send-proxy``/``send-proxy-v2``, AWS NLB,
Envoy) sends one header before the client's bytes, carrying the client's address
(https://www.haproxy.org/download/2.9/doc/proxy-protocol.txt). Each listener speaks one
version, chosen by its ``proxy-v1:``/``proxy-v2:`` prefix: the spec forbids guessing.

The parsers take the bytes received so far and say one of three things: not complete
yet (None), malformed (:class:`ProxyHeaderError`, raised as soon as the bytes so far
cannot begin a valid header), or the :class:`ProxyHeader` and how many bytes it took.
:func:`wanted` says how many more bytes may be read without reading past the header,
so a reader never takes the client's first bytes: what follows the header is payload,
and is echoed.

Accepted as the spec asks: v2 ``LOCAL`` (a balancer's own health check: the connection's
real addresses apply) and ``AF_UNSPEC``; v1 ``UNKNOWN``; v2 TLVs are checked to tile the
rest of the header and skipped (AWS's 0xEA VPC endpoint ID included). A v2 header longer
than ``MAX_V2_LENGTH`` is refused, whatever its length field claims.
"""

from __future__ import annotations

import socket
import struct
from dataclasses import dataclass

V1_PREFIX = b"PROXY "
V1_MAX = 107  # the longest v1 line, "PROXY TCP6 <39> <39> 65535 65535\r\n" plus CRLF
V2_SIGNATURE = b"\r\n\r\n\x00\r\nQUIT\n"
V2_HEADER = 16  # signature, version and command, family and transport, length
# Addresses plus TLVs: HAProxy sends a few hundred bytes at most (SSL and unique-ID
# TLVs); a longer length field is a broken or hostile peer.
MAX_V2_LENGTH = 2048
_ADDRESS_SIZES = {0x0: 0, 0x1: 12, 0x2: 36, 0x3: 216}  # UNSPEC, INET, INET6, UNIX


class ProxyHeaderError(ValueError):
    """The bytes are not a valid PROXY header of the listener's version."""


@dataclass(frozen=True)
class ProxyHeader:
    """What a header says: the client's address, or None to use the connection's own
    (v2 LOCAL, AF_UNSPEC, AF_UNIX, v1 UNKNOWN); and its length in bytes."""

    source: tuple[str, int] | None
    destination: tuple[str, int] | None
    length: int


def wanted(version: int, data: bytes) -> int:
    """How many more bytes may be read without passing the end of the header.

    v2 knows exactly; v1 ends at its CRLF, so a v1 reader must peek, and this is only
    its bound.
    """
    if version == 1:
        return max(V1_MAX - len(data), 0)
    if len(data) < V2_HEADER:
        return V2_HEADER - len(data)
    length = int.from_bytes(data[14:16], "big")
    return max(V2_HEADER + length - len(data), 0)


def parse(version: int, data: bytes) -> ProxyHeader | None:
    return parse_v1(data) if version == 1 else parse_v2(data)


# Version 1 ----------------------------------------------------------------------------
def parse_v1(data: bytes) -> ProxyHeader | None:
    """``PROXY TCP4|TCP6 SRC DST SPORT DPORT\\r\\n`` or ``PROXY UNKNOWN ...\\r\\n``."""
    head = data[: len(V1_PREFIX)]
    if head != V1_PREFIX[: len(head)]:
        raise ProxyHeaderError("not a PROXY v1 header")
    end = data.find(b"\r\n")
    if end < 0:
        if len(data) >= V1_MAX or b"\n" in data:
            raise ProxyHeaderError(f"PROXY v1 line without CRLF in {V1_MAX} bytes")
        return None
    line = data[:end]
    if end + 2 > V1_MAX:
        raise ProxyHeaderError(f"PROXY v1 line longer than {V1_MAX} bytes")
    try:
        text = line.decode("ascii")
    except UnicodeDecodeError:
        raise ProxyHeaderError("PROXY v1 line is not ASCII") from None
    if "\n" in text or "\r" in text:
        raise ProxyHeaderError("PROXY v1 line with a stray CR or LF")
    fields = text.split(" ")
    if len(fields) >= 2 and fields[1] == "UNKNOWN":
        return ProxyHeader(None, None, end + 2)  # the rest of the line is to be ignored
    if len(fields) != 6 or fields[1] not in ("TCP4", "TCP6"):
        raise ProxyHeaderError(f"malformed PROXY v1 line {text[:V1_MAX]!r}")
    family = socket.AF_INET if fields[1] == "TCP4" else socket.AF_INET6
    source = (_v1_address(family, fields[2]), _v1_port(fields[4]))
    destination = (_v1_address(family, fields[3]), _v1_port(fields[5]))
    return ProxyHeader(source, destination, end + 2)


def _v1_address(family: int, text: str) -> str:
    try:
        return socket.inet_ntop(family, socket.inet_pton(family, text))
    except (OSError, ValueError):
        raise ProxyHeaderError(f"PROXY v1 address {text!r} is not valid") from None


def _v1_port(text: str) -> int:
    # Digits only, no sign or leading zero: int() would take " 7", "+7", "0_7".
    if not (text.isascii() and text.isdigit()) or (text != "0" and text[0] == "0"):
        raise ProxyHeaderError(f"PROXY v1 port {text!r} is not a number")
    port = int(text)
    if port > 65535:
        raise ProxyHeaderError(f"PROXY v1 port {port} is out of range")
    return port


# Version 2 ----------------------------------------------------------------------------
def parse_v2(data: bytes) -> ProxyHeader | None:
    """The binary header: signature, command, family, length, addresses, TLVs."""
    head = data[: len(V2_SIGNATURE)]
    if head != V2_SIGNATURE[: len(head)]:
        raise ProxyHeaderError("not a PROXY v2 header")
    if len(data) < V2_HEADER:
        return None
    version_command, family_transport, length = struct.unpack_from("!BBH", data, 12)
    if version_command >> 4 != 2:
        raise ProxyHeaderError(f"PROXY v2 header of version {version_command >> 4}")
    command = version_command & 0xF
    if command > 1:
        raise ProxyHeaderError(f"PROXY v2 command {command} is neither LOCAL nor PROXY")
    family, transport = family_transport >> 4, family_transport & 0xF
    if family not in _ADDRESS_SIZES or transport > 2:
        raise ProxyHeaderError(f"PROXY v2 family/transport 0x{family_transport:02x}")
    if length > MAX_V2_LENGTH:
        raise ProxyHeaderError(f"PROXY v2 header of {length} bytes (at most {MAX_V2_LENGTH})")
    size = _ADDRESS_SIZES[family]
    if length < size:
        raise ProxyHeaderError(f"PROXY v2 length {length} cannot hold its addresses")
    if len(data) < V2_HEADER + length:
        return None
    _check_tlvs(data[V2_HEADER + size : V2_HEADER + length])
    total = V2_HEADER + length
    if command == 0 or family in (0x0, 0x3):  # LOCAL, AF_UNSPEC, AF_UNIX
        return ProxyHeader(None, None, total)
    block = data[V2_HEADER : V2_HEADER + size]
    if family == 0x1:
        src, dst, sport, dport = struct.unpack("!4s4sHH", block)
        inet = socket.AF_INET
    else:
        src, dst, sport, dport = struct.unpack("!16s16sHH", block)
        inet = socket.AF_INET6
    return ProxyHeader(
        (socket.inet_ntop(inet, src), sport), (socket.inet_ntop(inet, dst), dport), total
    )


def _check_tlvs(tlvs: bytes) -> None:
    """TLVs must tile what follows the addresses exactly; their contents are skipped."""
    offset = 0
    while offset < len(tlvs):
        if offset + 3 > len(tlvs):
            raise ProxyHeaderError("PROXY v2 TLV cut short")
        (value_length,) = struct.unpack_from("!H", tlvs, offset + 1)
        offset += 3 + value_length
        if offset > len(tlvs):
            raise ProxyHeaderError("PROXY v2 TLV longer than the header")


def encode_v1(source: tuple[str, int], destination: tuple[str, int]) -> bytes:
    """A v1 header (for echod-bench and the tests)."""
    family = "TCP6" if ":" in source[0] else "TCP4"
    return f"PROXY {family} {source[0]} {destination[0]} {source[1]} {destination[1]}\r\n".encode()


def encode_v2(
    source: tuple[str, int] | None, destination: tuple[str, int] | None, tlvs: bytes = b""
) -> bytes:
    """A v2 header: PROXY with the addresses, or LOCAL when ``source`` is None."""
    if source is None or destination is None:
        return V2_SIGNATURE + struct.pack("!BBH", 0x20, 0x00, len(tlvs)) + tlvs
    if ":" in source[0]:
        inet, family, layout = socket.AF_INET6, 0x21, "!16s16sHH"
    else:
        inet, family, layout = socket.AF_INET, 0x11, "!4s4sHH"
    block = struct.pack(
        layout,
        socket.inet_pton(inet, source[0]),
        socket.inet_pton(inet, destination[0]),
        source[1],
        destination[1],
    )
    body = block + tlvs
    return V2_SIGNATURE + struct.pack("!BBH", 0x21, family, len(body)) + body
