"""Scrape a running echod's /metrics over a real socket and parse it with
prometheus_client's own parsers, so every scrape a test makes is validated."""

from __future__ import annotations

import re
import socket

from prometheus_client.openmetrics.parser import (
    text_string_to_metric_families as parse_openmetrics,
)
from prometheus_client.parser import text_string_to_metric_families as parse_text

from tests.support import Echod

METRICS_AT = re.compile(r"metrics on (http://(\[[^\]]+\]|[^:/]+):(\d+)/metrics|unix:(\S+))")
TIMEOUT = 10.0

Figures = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def address_of(server: Echod) -> tuple[int, object]:
    """(family, address) of the endpoint, from echod's "metrics on ..." line."""
    match = server.wait_for(METRICS_AT)
    if match.group(4):
        return socket.AF_UNIX, match.group(4)
    host = match.group(2).strip("[]")
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    return family, (host, int(match.group(3)))


def request(
    where: tuple[int, object], raw: bytes, timeout: float = TIMEOUT
) -> tuple[str, dict[str, str], bytes]:
    """Send `raw`, read to EOF: status line, headers, body."""
    family, address = where
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout)
        sock.connect(address)  # type: ignore[arg-type]
        sock.sendall(raw)
        data = bytearray()
        while chunk := sock.recv(65536):
            data += chunk
    head, _, body = bytes(data).partition(b"\r\n\r\n")
    status, *lines = head.decode("latin-1").split("\r\n")
    headers = {k.strip().lower(): v.strip() for k, _, v in (h.partition(":") for h in lines)}
    assert int(headers["content-length"]) == len(body)
    return status, headers, body


def scrape(where: tuple[int, object], openmetrics: bool = False) -> Figures:
    """One scrape, parsed strictly; {(sample name, labels): value}."""
    accept = b"Accept: application/openmetrics-text; version=1.0.0\r\n" if openmetrics else b""
    status, headers, body = request(
        where, b"GET /metrics HTTP/1.1\r\nHost: echod\r\n" + accept + b"\r\n"
    )
    assert status == "HTTP/1.1 200 OK", status
    text = body.decode()
    if openmetrics:
        assert headers["content-type"].startswith("application/openmetrics-text; version=1.0.0")
        families = list(parse_openmetrics(text))
    else:
        assert headers["content-type"].startswith("text/plain; version=0.0.4")
        families = list(parse_text(text))
    figures: Figures = {}
    for family in families:
        for sample in family.samples:
            key = (sample.name, tuple(sorted(sample.labels.items())))
            assert key not in figures, f"duplicate series {key}"
            figures[key] = sample.value
    return figures


def value(figures: Figures, name: str, **labels: str) -> float:
    return figures[(name, tuple(sorted(labels.items())))]


def per_worker(figures: Figures, name: str) -> dict[str, float]:
    return {dict(labels)["worker"]: v for (n, labels), v in figures.items() if n == name}
