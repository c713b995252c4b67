"""The exposition format and the request parser, alone: no sockets."""

from __future__ import annotations

import pytest
from prometheus_client.openmetrics.parser import (
    text_string_to_metric_families as parse_openmetrics,
)
from prometheus_client.parser import text_string_to_metric_families as parse_text

from echod.lifecycle import Stats
from echod.metrics.endpoint import Exposition, answer
from echod.metrics.exposition import Family, Sample, render
from echod.metrics.figures import SlotFigures, families
from echod.metrics.process import read

FAMILIES = [
    Family("echod_received_bytes", "counter", "bytes read", "bytes", (Sample(12),)),
    Family(
        "echod_connections_open",
        "gauge",
        'open, "per" worker\\slot\nsecond line',
        samples=(Sample(3, (("worker", "1"),)), Sample(0.5, (("worker", 'a"b\\c\nd'),))),
    ),
]


def test_text_format_parses_and_keeps_labels_and_values() -> None:
    parsed = {f.name: f for f in parse_text(render(FAMILIES))}
    assert parsed["echod_received_bytes"].type == "counter"
    assert [(s.name, s.value) for s in parsed["echod_received_bytes"].samples] == [
        ("echod_received_bytes_total", 12)
    ]
    samples = parsed["echod_connections_open"].samples
    assert [(s.labels["worker"], s.value) for s in samples] == [("1", 3), ('a"b\\c\nd', 0.5)]
    assert parsed["echod_connections_open"].documentation == 'open, "per" worker\\slot\nsecond line'


def test_openmetrics_parses_strictly_with_units_and_eof() -> None:
    text = render(FAMILIES, openmetrics=True)
    assert text.endswith("# EOF\n")
    parsed = {f.name: f for f in parse_openmetrics(text)}
    assert parsed["echod_received_bytes"].unit == "bytes"
    assert parsed["echod_received_bytes"].samples[0].name == "echod_received_bytes_total"


def test_the_openmetrics_parser_would_catch_a_missing_eof() -> None:
    with pytest.raises(ValueError):
        list(parse_openmetrics(render(FAMILIES, openmetrics=True).replace("# EOF\n", "")))


def test_every_service_family_parses_in_both_formats() -> None:
    first = Stats(connections_total=10, refused_resources=1, bytes_in=640, bytes_out=640)
    first.flow_paused, first.idle_closed, first.accept_errors_peer_gone = 4, 2, 1
    second = Stats(connections_total=7, refused_fd_setsize=5, bytes_in=70, bytes_out=70)
    second.accept_errors_exhausted = 6
    slots = [SlotFigures(1, 100, 2, first, 0), SlotFigures(2, None, 0, second, 3)]
    own = read()
    assert own is not None
    result = families(slots, "epoll", own, {1: own})
    for text, parse in ((render(result), parse_text), (render(result, True), parse_openmetrics)):
        samples = {
            (s.name, tuple(sorted(s.labels.items()))): s.value
            for family in parse(text)
            for s in family.samples
        }
        assert samples[("echod_connections_accepted_total", ())] == 17
        assert samples[("echod_received_bytes_total", ())] == 710
        refused = "echod_connections_refused_total"
        assert samples[(refused, (("reason", "resources"),))] == 1
        assert samples[(refused, (("reason", "fd_setsize"),))] == 5
        errors = "echod_accept_errors_total"
        assert samples[(errors, (("kind", "peer_gone"),))] == 1
        assert samples[(errors, (("kind", "exhausted"),))] == 6
        assert samples[("echod_flow_control_pauses_total", ())] == 4
        assert samples[("echod_idle_closed_total", ())] == 2
        assert samples[("echod_worker_restarts_total", (("worker", "2"),))] == 3
        assert samples[("echod_worker_up", (("worker", "2"),))] == 0
        assert samples[("process_open_fds", ())] > 0
        assert samples[("process_cpu_seconds_total", ())] > 0


@pytest.mark.parametrize(
    ("head", "openmetrics"),
    [
        (b"GET /metrics HTTP/1.1\r\nHost: x", False),
        (b"GET /metrics?x=1 HTTP/1.0", False),
        (
            b"GET /metrics HTTP/1.1\r\nAccept: application/openmetrics-text;version=1.0.0,"
            b"text/plain;q=0.5",
            True,
        ),
    ],
)
def test_a_scrape_asks_for_the_exposition_in_its_format(head: bytes, openmetrics: bool) -> None:
    assert answer(head) == Exposition(openmetrics)


@pytest.mark.parametrize(
    ("head", "status", "payload"),
    [
        (b"GET / HTTP/1.1", "404 Not Found", b"metrics are at /metrics\n"),
        (b"POST /metrics HTTP/1.1", "405 Method Not Allowed", b"GET /metrics\n"),
        (b"\x16\x03\x01 tls hello", "400 Bad Request", b"bad request\n"),
        (b"GET /metrics", "400 Bad Request", b"bad request\n"),
    ],
)
def test_other_requests_are_answered_at_once(head: bytes, status: str, payload: bytes) -> None:
    assert answer(head) == (status, "text/plain", payload)
