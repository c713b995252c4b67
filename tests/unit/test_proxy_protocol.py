"""The PROXY protocol parsers, driven with byte strings: the spec's examples, each
malformed case, and hypothesis over random bytes, truncations and huge lengths."""

from __future__ import annotations

import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from echod.net.proxy_protocol import (
    MAX_V2_LENGTH,
    V1_MAX,
    V2_SIGNATURE,
    ProxyHeader,
    ProxyHeaderError,
    encode_v1,
    encode_v2,
    parse,
    parse_v1,
    parse_v2,
    wanted,
)

FFFF6 = ":".join(["ffff"] * 8)
# From the spec (proxy-protocol.txt, 2.1): the worst cases and the example.
V1_EXAMPLES = [
    (b"PROXY TCP4 255.255.255.255 255.255.255.255 65535 65535\r\n",
     ("255.255.255.255", 65535), ("255.255.255.255", 65535)),
    (f"PROXY TCP6 {FFFF6} {FFFF6} 65535 65535\r\n".encode(), (FFFF6, 65535), (FFFF6, 65535)),
    (b"PROXY TCP4 192.168.0.1 192.168.0.11 56324 443\r\n",
     ("192.168.0.1", 56324), ("192.168.0.11", 443)),
    (b"PROXY TCP6 2001:db8::1 2001:db8::2 1 0\r\n", ("2001:db8::1", 1), ("2001:db8::2", 0)),
    (b"PROXY UNKNOWN\r\n", None, None),
    (f"PROXY UNKNOWN {FFFF6} {FFFF6} 65535 65535\r\n".encode(), None, None),
]  # fmt: skip


@pytest.mark.parametrize(("line", "source", "destination"), V1_EXAMPLES)
def test_v1_examples_of_the_spec(
    line: bytes, source: tuple[str, int] | None, destination: tuple[str, int] | None
) -> None:
    assert len(line) <= V1_MAX
    header = parse_v1(line + b"payload")
    assert header == ProxyHeader(source, destination, len(line))


@pytest.mark.parametrize(
    "line",
    [
        b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\n",  # LF alone
        b"PROXY TCP4 1.2.3.4 5.6.7.8 1\r\n",  # a field missing
        b"PROXY TCP4  1.2.3.4 5.6.7.8 1 2\r\n",  # two spaces
        b"PROXY TCP5 1.2.3.4 5.6.7.8 1 2\r\n",
        b"PROXY TCP4 1.2.3.256 5.6.7.8 1 2\r\n",
        b"PROXY TCP4 ::1 ::1 1 2\r\n",  # IPv6 under TCP4
        b"PROXY TCP6 1.2.3.4 5.6.7.8 1 2\r\n",
        b"PROXY TCP4 1.2.3.4 5.6.7.8 65536 2\r\n",
        b"PROXY TCP4 1.2.3.4 5.6.7.8 01 2\r\n",  # leading zero
        b"PROXY TCP4 1.2.3.4 5.6.7.8 +1 2\r\n",
        b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2 \r\n",
        b"PROXY TCP4 1.2.3.4 5.6.7.8 1 \xff\r\n",
        b"PROXY TCP4 1.2.3.4\r5.6.7.8 1 2\r\n",
        b"proxy TCP4 1.2.3.4 5.6.7.8 1 2\r\n",
        b"GET / HTTP/1.0\r\n",
        b"PROXY UNKNOWN " + b"x" * 100 + b"\r\n",  # past 107 bytes
    ],
)
def test_v1_malformed_lines_are_refused(line: bytes) -> None:
    with pytest.raises(ProxyHeaderError):
        parse_v1(line)


def test_v1_without_crlf_in_107_bytes_is_refused_and_shorter_waits() -> None:
    assert parse_v1(b"PROXY TCP4 1.2.3.4") is None
    assert parse_v1(b"PROXY UNKNOWN " + b"x" * (V1_MAX - 15)) is None  # 106 bytes: wait
    with pytest.raises(ProxyHeaderError):
        parse_v1(b"PROXY UNKNOWN " + b"x" * (V1_MAX - 14))
    assert wanted(1, b"PROXY ") == V1_MAX - 6


def v2(command: int, family: int, body: bytes) -> bytes:
    return V2_SIGNATURE + struct.pack("!BBH", 0x20 | command, family, len(body)) + body


def test_v2_examples_written_out_by_hand() -> None:
    # PROXY, TCP over IPv4, 192.168.0.1:56324 -> 192.168.0.11:443 (the v1 example).
    raw = bytes.fromhex("0d0a0d0a000d0a515549540a 21 11 000c c0a80001 c0a8000b dc04 01bb")
    assert parse_v2(raw + b"data") == ProxyHeader(("192.168.0.1", 56324), ("192.168.0.11", 443), 28)
    six = v2(1, 0x21, bytes(15) + b"\x01" + bytes(15) + b"\x02" + b"\x00\x07\x00\x08")
    assert parse_v2(six) == ProxyHeader(("::1", 7), ("::2", 8), 52)


def test_v2_local_unspec_and_unix_use_the_connections_own_address() -> None:
    assert parse_v2(v2(0, 0x00, b"")) == ProxyHeader(None, None, 16)  # a health check
    assert parse_v2(v2(0, 0x11, bytes(12))) == ProxyHeader(None, None, 28)  # LOCAL ignores
    assert parse_v2(v2(1, 0x00, b"")) == ProxyHeader(None, None, 16)  # AF_UNSPEC
    assert parse_v2(v2(1, 0x31, bytes(216))) == ProxyHeader(None, None, 232)  # AF_UNIX


def test_v2_tlvs_are_skipped_aws_vpce_included() -> None:
    aws = b"\xea" + struct.pack("!H", 23) + b"\x01vpce-08d2bf15fac5001c9"
    crc = b"\x03\x00\x04\x00\x00\x00\x00"
    header = encode_v2(("10.0.0.1", 4000), ("10.0.0.2", 7), tlvs=aws + crc)
    assert parse_v2(header) == ProxyHeader(("10.0.0.1", 4000), ("10.0.0.2", 7), len(header))


@pytest.mark.parametrize(
    "header",
    [
        V2_SIGNATURE + bytes([0x11, 0x11, 0, 12]) + bytes(12),  # version 1
        V2_SIGNATURE + bytes([0x22, 0x11, 0, 12]) + bytes(12),  # command 2
        V2_SIGNATURE + bytes([0x21, 0x41, 0, 12]) + bytes(12),  # family 4
        V2_SIGNATURE + bytes([0x21, 0x13, 0, 12]) + bytes(12),  # transport 3
        V2_SIGNATURE + bytes([0x21, 0x11, 0, 8]) + bytes(8),  # too short for IPv4
        V2_SIGNATURE + bytes([0x21, 0x11, 0, 14]) + bytes(12) + b"\x01\x00",  # TLV cut
        V2_SIGNATURE + bytes([0x21, 0x11, 0, 16]) + bytes(12) + b"\x01\x00\x09\x00",
        V2_SIGNATURE + bytes([0x21, 0x11, 0xFF, 0xFF]),  # 65,535 bytes claimed
        b"\r\n\r\n\x00\r\nQUIT\r",
        b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\r\n",  # v1 on a v2 listener: no guessing
    ],
)
def test_v2_malformed_headers_are_refused(header: bytes) -> None:
    with pytest.raises(ProxyHeaderError):
        parse_v2(header)


@given(st.integers(MAX_V2_LENGTH + 1, 0xFFFF), st.sampled_from([0x00, 0x11, 0x21]))
def test_v2_huge_lengths_are_refused_from_the_first_16_bytes(length: int, family: int) -> None:
    with pytest.raises(ProxyHeaderError):
        parse_v2(V2_SIGNATURE + struct.pack("!BBH", 0x21, family, length))


VALID = [line for line, _, _ in V1_EXAMPLES] + [
    encode_v1(("10.1.2.3", 1234), ("10.3.2.1", 7)),
    encode_v2(("10.1.2.3", 1234), ("10.3.2.1", 7)),
    encode_v2(("2001:db8::5", 9), ("2001:db8::6", 7), tlvs=b"\x04\x00\x02hi"),
    encode_v2(None, None),
]


@pytest.mark.parametrize("header", VALID)
def test_every_truncation_waits_and_the_whole_header_parses_alike(header: bytes) -> None:
    version = 2 if header.startswith(V2_SIGNATURE) else 1
    for cut in range(len(header)):
        assert parse(version, header[:cut]) is None, f"complete after {cut} bytes?"
        assert 0 < wanted(version, header[:cut]) <= V1_MAX + MAX_V2_LENGTH
    whole = parse(version, header)
    assert whole is not None and whole.length == len(header)
    assert parse(version, header + b"\r\nPROXY payload") == whole


@given(st.binary(max_size=300), st.sampled_from([1, 2]))
def test_random_bytes_are_refused_incomplete_or_a_header_within_them(
    data: bytes, version: int
) -> None:
    try:
        header = parse(version, data)
    except ProxyHeaderError:
        return
    if header is not None:
        assert 0 < header.length <= len(data)
        assert header.length <= (V1_MAX if version == 1 else 16 + MAX_V2_LENGTH)


@given(st.binary(max_size=200).filter(lambda b: b"\n" not in b))
def test_v1_lines_without_crlf_never_complete(tail: bytes) -> None:
    data = (b"PROXY UNKNOWN " + tail)[:200]
    try:
        assert parse_v1(data) is None
    except ProxyHeaderError:
        assert len(data) >= V1_MAX or b"\r" in data


@given(
    st.tuples(st.integers(0, 2**32 - 1), st.integers(0, 65535)),
    st.tuples(st.integers(0, 2**32 - 1), st.integers(0, 65535)),
    st.binary(max_size=40),
)
def test_v2_round_trips_any_ipv4_pair(
    source: tuple[int, int], destination: tuple[int, int], payload: bytes
) -> None:
    import ipaddress

    src = (str(ipaddress.IPv4Address(source[0])), source[1])
    dst = (str(ipaddress.IPv4Address(destination[0])), destination[1])
    for version, header in ((1, encode_v1(src, dst)), (2, encode_v2(src, dst))):
        parsed = parse(version, header + payload)
        assert parsed == ProxyHeader(src, dst, len(header))
