"""What one scrape reports: the supervisor's view of its workers as metric families.

Counters are the sum over worker slots of what each slot's past workers last reported
and what its current workers answered when the scrape asked, plus what the echod this
one replaced handed over on an upgrade, so they never go down when a worker is
replaced, reloaded or upgraded.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from echod import __version__
from echod.lifecycle import REFUSED, Stats
from echod.metrics import process
from echod.metrics.exposition import Family, Sample
from echod.tls_counters import FAILURE_REASONS, TlsCounters
from echod.udp.guard import UdpCounters


@dataclass(frozen=True)
class ControlFigures:
    """The control plane: reloads and upgrades, generations, and inherited totals."""

    reloads: Mapping[tuple[str, str], int]  # (kind, result) -> count
    generation: int  # configurations served, counting predecessors'
    workers: Mapping[int, int]  # generation -> workers running
    inherited: Stats  # the totals of the echod this one replaced


RELOAD_OUTCOMES = tuple(
    (kind, result) for kind in ("reload", "upgrade") for result in ("ok", "refused", "failed")
)


@dataclass(frozen=True)
class SlotFigures:
    """One worker slot: its current worker (pid None while it restarts) and counters."""

    slot: int
    pid: int | None
    open: int
    counters: Stats  # past workers' last report plus the current worker's latest
    restarts: int


def _total(name: str, help_text: str, value: float, unit: str = "") -> Family:
    return Family(name, "counter", help_text, unit, (Sample(value),))


def _labelled(name: str, help_text: str, label: str, values: Mapping[str, int]) -> Family:
    samples = tuple(Sample(v, ((label, key),)) for key, v in values.items())
    return Family(name, "counter", help_text, samples=samples)


def _per_slot(
    name: str, kind: str, help_text: str, values: Mapping[int, float], unit: str = ""
) -> Family:
    samples = tuple(Sample(v, (("worker", str(slot)),)) for slot, v in sorted(values.items()))
    return Family(name, kind, help_text, unit, samples)


def families(
    slots: Sequence[SlotFigures],
    backend: str,
    own: process.ProcessFigures | None,
    workers: Mapping[int, process.ProcessFigures],
    control: ControlFigures | None = None,
    tls_expiry: Mapping[str, float] | None = None,
) -> list[Family]:
    """Every series of one scrape; `own` is the supervisor, `workers` by slot;
    `tls_expiry` the served certificates' notAfter by name, when there is TLS."""
    total = Stats()
    if control is not None:
        total.add(control.inherited)
    for s in slots:
        total.add(s.counters)
    result = [
        Family(
            "echod_build_info",
            "gauge",
            "echod's version and the backend serving; always 1",
            samples=(Sample(1, (("version", __version__), ("backend", backend))),),
        ),
        _per_slot(
            "echod_connections_open",
            "gauge",
            "connections being served, per worker (0 while a worker restarts)",
            {s.slot: s.open for s in slots},
        ),
        _total(
            "echod_connections_accepted",
            "connections accepted and served",
            total.connections_total,
        ),
        _labelled(
            "echod_connections_refused",
            "connections accepted and closed at once, by reason: past select's FD_SETSIZE, "
            "out of descriptors or threads (shed with the spare descriptor), or refused by "
            "the admission rules (denied, per_source, connect_rate, full: at the fair share "
            "while full, proxy_peer, proxy_header), which reset them before reading",
            "reason",
            {
                "fd_setsize": total.refused_fd_setsize,
                "resources": total.refused_resources,
                **{name.removeprefix("refused_"): getattr(total, name) for name in REFUSED},
            },
        ),
        _total(
            "echod_connections_gave_way",
            "connections closed to give their slot to a source below its fair share "
            "(idle, owing nothing; --fair-share)",
            total.gave_way,
        ),
        _labelled(
            "echod_accept_errors",
            "accept() failures that were not a new client: it left first (peer_gone), or "
            "descriptors or memory ran out (exhausted)",
            "kind",
            {
                "peer_gone": total.accept_errors_peer_gone,
                "exhausted": total.accept_errors_exhausted,
            },
        ),
        _total("echod_received_bytes", "bytes read from clients", total.bytes_in, "bytes"),
        _total("echod_sent_bytes", "bytes echoed back", total.bytes_out, "bytes"),
        _total(
            "echod_flow_control_pauses",
            "times a client's reading was paused because its echo waited unsent "
            "(high-water mark; not counted by the threads backend, whose sendall blocks)",
            total.flow_paused,
        ),
        _total("echod_idle_closed", "connections closed by --idle-timeout", total.idle_closed),
        _per_slot(
            "echod_worker_restarts",
            "counter",
            "workers started in a slot after its first, after a crash or a stall",
            {s.slot: s.restarts for s in slots},
        ),
        _per_slot(
            "echod_worker_up",
            "gauge",
            "1 while a worker process runs in the slot",
            {s.slot: int(s.pid is not None) for s in slots},
        ),
    ]
    result += _udp([s.counters.udp for s in slots if s.counters.udp is not None])
    result += _control(control) if control is not None else []
    result += _tls([s.counters.tls for s in slots if s.counters.tls is not None], tls_expiry)
    result += _worker_process(workers)
    result += _process(own)
    return result


def _control(control: ControlFigures) -> list[Family]:
    reloads = Family(
        "echod_reloads",
        "counter",
        "reloads (SIGHUP) and upgrades (SIGUSR2) by result: ok, refused (the configuration "
        "could not be applied) or failed (the new workers or code never became ready)",
        samples=tuple(
            Sample(control.reloads.get(key, 0), (("kind", key[0]), ("result", key[1])))
            for key in RELOAD_OUTCOMES
        ),
    )
    workers = Family(
        "echod_workers",
        "gauge",
        "worker processes running, by the configuration generation they serve",
        samples=tuple(
            Sample(n, (("generation", str(g)),)) for g, n in sorted(control.workers.items())
        ),
    )
    generation = Family(
        "echod_config_generation",
        "gauge",
        "configurations served: 1 at start, one more per reload",
        samples=(Sample(control.generation),),
    )
    return [reloads, generation, workers]


def _udp(parts: Sequence[UdpCounters]) -> list[Family]:
    """UDP echo's series, present only when there are UDP listeners."""
    if not parts:
        return []
    udp = UdpCounters()
    for part in parts:
        udp.add(part)
    refused = tuple(
        Sample(count, (("reason", reason.value),)) for reason, count in udp.refused.items()
    )
    return [
        _total("echod_udp_received_datagrams", "datagrams read", udp.received),
        _total("echod_udp_echoed_datagrams", "datagrams answered", udp.echoed),
        _total("echod_udp_sent_bytes", "payload bytes answered", udp.bytes_echoed, "bytes"),
        _total(
            "echod_udp_dropped_datagrams",
            "answers the kernel would not take (EAGAIN, ENOBUFS, EMSGSIZE): dropped, never queued",
            udp.dropped,
        ),
        Family(
            "echod_udp_refused_datagrams",
            "counter",
            "datagrams not answered, by guard (--udp-refuse-ports, --udp-rate, --udp-budget, ...)",
            samples=refused,
        ),
        Family(
            "echod_udp_rate_table_sources",
            "gauge",
            "sources in the per-source rate table (bounded by --udp-sources)",
            samples=(Sample(udp.sources),),
        ),
    ]


def _tls(parts: Sequence[TlsCounters], expiry: Mapping[str, float] | None) -> list[Family]:
    """TLS series, present only when there are tls: listeners."""
    if not parts and expiry is None:
        return []
    tls = TlsCounters()
    for part in parts:
        tls.add(part)
    handshakes = tuple(
        Sample(count, (("version", version), ("cipher", cipher)))
        for (version, cipher), count in sorted(tls.handshakes.items())
    )
    return [
        Family(
            "echod_tls_handshakes",
            "counter",
            "TLS handshakes completed, by protocol version and cipher",
            samples=handshakes,
        ),
        _labelled(
            "echod_tls_handshake_failures",
            "TLS handshakes that failed or timed out (--tls-handshake-timeout), by reason",
            "reason",
            {reason: tls.failures.get(reason, 0) for reason in FAILURE_REASONS},
        ),
        Family(
            "echod_tls_certificate_expiry_timestamp_seconds",
            "gauge",
            "notAfter of each certificate served (default, or its --tls-sni name), "
            "seconds since the epoch",
            samples=tuple(
                Sample(when, (("name", name),)) for name, when in sorted((expiry or {}).items())
            ),
        ),
    ]


def _worker_process(workers: Mapping[int, process.ProcessFigures]) -> list[Family]:
    cpu = {slot: f.cpu_seconds for slot, f in workers.items()}
    rss = {slot: f.resident_bytes for slot, f in workers.items() if f.resident_bytes is not None}
    fds = {slot: f.open_fds for slot, f in workers.items() if f.open_fds is not None}
    return [
        _per_slot(
            "echod_worker_cpu_seconds",
            "counter",
            "user and system CPU time of the slot's current worker process",
            cpu,
            "seconds",
        ),
        _per_slot(
            "echod_worker_resident_memory_bytes",
            "gauge",
            "resident memory of the slot's current worker process",
            rss,
            "bytes",
        ),
        _per_slot("echod_worker_open_fds", "gauge", "descriptors open in the slot's worker", fds),
    ]


def _process(own: process.ProcessFigures | None) -> list[Family]:
    """Prometheus' standard process series, for the supervisor serving the scrape."""
    if own is None:
        return []
    result = [
        _total(
            "process_cpu_seconds",
            "user and system CPU time of the supervisor",
            own.cpu_seconds,
            "seconds",
        )
    ]
    gauges = [
        ("process_resident_memory_bytes", "resident memory of the supervisor", own.resident_bytes, "bytes"),
        ("process_open_fds", "descriptors open in the supervisor", own.open_fds, ""),
        ("process_max_fds", "the supervisor's soft descriptor limit", own.max_fds, ""),
        ("process_start_time_seconds", "when the supervisor started, seconds since the epoch", own.start_time, "seconds"),
    ]  # fmt: skip
    for name, help_text, value, unit in gauges:
        if value is not None:
            result.append(Family(name, "gauge", help_text, unit, (Sample(value),)))
    return result
