"""The run's parameters: one table that builds the argument parser and the docs.

``Params`` crosses into worker processes by pickling, so it holds plain values only.
"""

from __future__ import annotations

import argparse
import ipaddress
import os
import time
from dataclasses import asdict, dataclass
from datetime import datetime
from typing import Any, NoReturn

from loadtest import __version__
from loadtest.results import unwritable
from loadtest.sources import parse_sources

WORKLOADS = {
    "rr": "closed loop: send --size bytes, wait for the whole echo, repeat (--pipeline in flight)",
    "rate": "open loop at --rate messages/s in total; latency counts from when each was due",
    "churn": "connect, echo one --size message, close, repeat; connections/s and connect time "
    "(with --tls: the handshake rate, connect+handshake time)",
    "stream": "bulk: keep --pipeline chunks of --size bytes in flight each way; MB/s",
    "udp": "UDP datagrams of --size, --pipeline in flight per flow (--connections flows) or "
    "at --rate in total; loss, duplicates, reordering, corruption",
}


@dataclass(frozen=True)
class Params:
    host: str = "127.0.0.1"
    port: int = 5000
    workload: str = "rr"
    connections: int = 50
    active: int | None = None
    size: int = 64
    pipeline: int = 1
    rate: float | None = None
    duration: float = 10.0
    warmup: float = 1.0
    timeout: float = 5.0
    connect_timeout: float = 3.0
    processes: int | None = None
    server_pid: int | None = None
    json: str | None = None
    json_stream: bool = False
    start_at: float | None = None  # wall clock, Unix seconds
    connect_rate: float | None = None
    source_address: tuple[str, ...] = ()
    proxy_protocol: int | None = None  # 1 or 2: a PROXY header first on every connection
    proxy_address: str | None = None
    progress: bool = True
    tls: bool = False
    tls_ca: str | None = None
    insecure: bool = False
    tls_sni: str | None = None
    tls_min_version: str | None = None
    tls_max_version: str | None = None
    tls_resume: bool = False

    @property
    def active_connections(self) -> int:
        return self.connections if self.active is None else self.active

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, not {value}")
    return value


def _non_negative_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be at least 0, not {value}")
    return value


def _positive_float(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be above 0, not {text}")
    return value


def _non_negative_float(text: str) -> float:
    value = float(text)
    if not value >= 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, not {text}")
    return value


# --start-at further ahead than this is a typo (a date, a millisecond timestamp).
MAX_START_AHEAD_S = 24 * 3600


def start_time(text: str, now: float | None = None) -> float:
    """``--start-at``: Unix seconds or ISO 8601 with a zone, between now and a day ahead.

    A zone is required: generators on several hosts must agree on the instant,
    and a local time is read differently on each.
    """
    now = time.time() if now is None else now
    try:
        at = float(text)
    except ValueError:
        try:
            moment = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"{text!r} is neither Unix seconds nor an ISO 8601 time"
            ) from None
        if moment.tzinfo is None:
            raise argparse.ArgumentTypeError(
                f"{text!r} has no time zone: add Z or +HH:MM so every host reads the same instant"
            ) from None
        at = moment.timestamp()
    if not at > now:
        raise argparse.ArgumentTypeError(f"{text} is {now - at:,.1f} s in the past")
    if at - now > MAX_START_AHEAD_S:
        raise argparse.ArgumentTypeError(
            f"{text} is {(at - now) / 3600:,.1f} h ahead, more than {MAX_START_AHEAD_S // 3600} h"
        )
    return at


def _proxy_version(text: str) -> int:
    versions = {"v1": 1, "v2": 2}
    if text not in versions:
        raise argparse.ArgumentTypeError(f"{text!r} is not v1 or v2")
    return versions[text]


def _address(text: str) -> str:
    try:
        return str(ipaddress.ip_address(text))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an IPv4 or IPv6 address") from None


def _sources(text: str) -> tuple[str, ...]:
    try:
        return parse_sources(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _tls_version(text: str) -> str:
    text = text.strip().removeprefix("TLSv")
    if text not in ("1.2", "1.3"):
        raise argparse.ArgumentTypeError(f"{text!r} is not 1.2 or 1.3")
    return text


# (flag, Params field, type, help).  Defaults come from Params itself.
OPTIONS: tuple[tuple[str, str, Any, str], ...] = (
    ("--host", "host", str, "server address (name, IPv4 or IPv6)"),
    ("--port", "port", int, "server port"),
    (
        "--workload",
        "workload",
        str,
        "what to send; " + "; ".join(f"{k}: {v}" for k, v in WORKLOADS.items()),
    ),
    ("--connections", "connections", _positive_int, "connections held open in total"),
    (
        "--active",
        "active",
        _non_negative_int,
        "how many of the connections send (the rest stay idle); default all",
    ),
    ("--size", "size", _positive_int, "bytes per message (chunk size for stream)"),
    ("--pipeline", "pipeline", _positive_int, "messages in flight per connection"),
    ("--rate", "rate", _positive_float, "messages/s in total; implies --workload rate"),
    ("--duration", "duration", _positive_float, "seconds measured, after the warmup"),
    ("--warmup", "warmup", _non_negative_float, "seconds run but left out of the figures"),
    (
        "--timeout",
        "timeout",
        _positive_float,
        "seconds without echo progress before a connection counts as stalled",
    ),
    ("--connect-timeout", "connect_timeout", _positive_float, "seconds a connect may take"),
    (
        "--processes",
        "processes",
        _positive_int,
        "worker processes; default the CPUs this process may use",
    ),
    (
        "--server-pid",
        "server_pid",
        _positive_int,
        "sample this process and its children's CPU and memory",
    ),
    ("--json", "json", str, "write every figure, the parameters and the environment to this file"),
    (
        "--start-at",
        "start_at",
        start_time,
        "wall-clock time the warmup starts (Unix seconds or ISO 8601 with a zone), "
        "so generators on several hosts measure the same window",
    ),
    (
        "--connect-rate",
        "connect_rate",
        _positive_float,
        "connections opened per second while connecting (ramp-up); default as fast as "
        "256 connects in flight per process allow",
    ),
    (
        "--source-address",
        "source_address",
        _sources,
        "local addresses to connect from, a list (127.0.0.2,127.0.0.3) or range "
        "(127.0.0.2-127.0.0.9), spread over the connections; each allows ~28k "
        "connections to one server port",
    ),
    ("--tls-ca", "tls_ca", str, "with --tls: verify the server's certificate against these CAs (PEM)"),
    ("--tls-sni", "tls_sni", str, "with --tls: server name sent (SNI) and verified; default --host"),
    ("--tls-min-version", "tls_min_version", _tls_version, "with --tls: oldest version offered (1.2, 1.3)"),
    ("--tls-max-version", "tls_max_version", _tls_version, "with --tls: newest version offered (1.2, 1.3)"),
    (
        "--proxy-protocol",
        "proxy_protocol",
        _proxy_version,
        "send a PROXY protocol header (v1 or v2) first on every connection, as a load "
        "balancer would to echod's proxy-v1:/proxy-v2: listeners",
    ),
    (
        "--proxy-address",
        "proxy_address",
        _address,
        "with --proxy-protocol: the client address the header carries; default each "
        "connection's own",
    ),
)  # fmt: skip


class Parser(argparse.ArgumentParser):
    """Usage errors are one line and exit 2, like every other bad input."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message}\n")


def build_parser() -> argparse.ArgumentParser:
    defaults = Params()
    parser = Parser(
        prog="echod-bench",
        description="Load generator for TCP echo servers: every echoed byte is checked. "
        "'echod-bench merge A.json B.json ...' adds results of several runs.",
        epilog="Exit status: 0 clean run, 1 transport errors (resets, timeouts, refused), "
        "2 bad input or unreachable server, 3 echoed data did not match what was sent, "
        "4 bytes sent were never echoed (lost) and no mismatch.",
    )
    for flag, name, kind, help_text in OPTIONS:
        default = getattr(defaults, name)
        shown = "" if default in (None, ()) else f" (default {default})"
        if name == "workload":
            parser.add_argument(
                flag,
                dest=name,
                choices=sorted(WORKLOADS),
                default=None,
                help=help_text + " (default rr)",
            )
        else:
            parser.add_argument(flag, dest=name, type=kind, default=default, help=help_text + shown)
    parser.add_argument(
        "--json-stream",
        dest="json_stream",
        action="store_true",
        help="one JSON line per second on stdout, the result as the last line (the table "
        "goes to stderr)",
    )
    parser.add_argument("--churn", action="store_true", help="shorthand for --workload churn")
    parser.add_argument("--udp", action="store_true", help="shorthand for --workload udp")
    parser.add_argument(
        "--tls",
        action="store_true",
        help="speak TLS to the server (needs --tls-ca or --insecure); every byte is still "
        "verified; runs the Python loop",
    )
    parser.add_argument(
        "--insecure",
        action="store_true",
        help="with --tls: accept any certificate (no verification)",
    )
    parser.add_argument(
        "--tls-resume",
        dest="tls_resume",
        action="store_true",
        help="with --tls and churn: resume each connection's previous TLS session",
    )
    parser.add_argument(
        "--no-progress",
        dest="progress",
        action="store_false",
        help="no live line even on a terminal",
    )
    parser.add_argument("--version", action="version", version=f"echod-bench {__version__}")
    return parser


def parse(argv: list[str] | None) -> Params:
    """Parse and reconcile the flags; contradictions exit 2 through argparse."""
    parser = build_parser()
    args = parser.parse_args(argv)
    workload = args.workload
    if args.churn:
        if workload not in (None, "churn"):
            parser.error(f"--churn contradicts --workload {workload}")
        workload = "churn"
    if args.udp:
        if workload not in (None, "udp"):
            parser.error(f"--udp contradicts --workload {workload}")
        workload = "udp"
    if args.rate is not None and workload != "udp":  # udp takes --rate as its open loop
        if workload not in (None, "rate"):
            parser.error(f"--rate applies to the rate workload, not {workload}")
        workload = "rate"
    workload = workload or "rr"
    if workload == "rate" and args.rate is None:
        parser.error("--workload rate needs --rate MESSAGES_PER_SECOND")
    if args.active is not None and args.active > args.connections:
        parser.error(f"--active {args.active} is more than --connections {args.connections}")
    if workload in ("churn",) and args.active is not None:
        parser.error("--active applies to workloads that hold connections open, not churn")
    if not 0 < args.port < 65536:
        parser.error(f"--port must be 1..65535, not {args.port}")
    values = {name: getattr(args, name) for _, name, _, _ in OPTIONS}
    if workload == "churn" and args.connect_rate is not None:
        parser.error("--connect-rate paces the ramp-up of held connections, not churn")
    if args.proxy_protocol and workload == "udp":
        parser.error("--proxy-protocol is for TCP workloads, not udp")
    if args.proxy_address is not None and not args.proxy_protocol:
        parser.error("--proxy-address needs --proxy-protocol")
    if args.json_stream and args.json == "-":
        parser.error("--json - and --json-stream both write to stdout")
    problem = unwritable(args.json) if args.json else None
    if problem:
        parser.error(problem)
    tls_given = [flag for flag, name in TLS_FLAGS if getattr(args, name)]
    if not args.tls and tls_given:
        parser.error(f"{tls_given[0]} needs --tls")
    if args.tls:
        if workload == "udp":
            parser.error("--tls applies to TCP workloads, not udp")
        if (args.tls_ca is None) == (not args.insecure):
            parser.error("--tls needs either --tls-ca FILE or --insecure")
        if args.tls_resume and workload != "churn":
            parser.error("--tls-resume applies to churn (a handshake per connection)")
    values["workload"] = workload
    values["progress"] = args.progress
    values["tls"] = args.tls
    values["insecure"] = args.insecure
    values["tls_resume"] = args.tls_resume
    values["json_stream"] = args.json_stream
    return Params(**values)


TLS_FLAGS = (
    ("--tls-ca", "tls_ca"),
    ("--insecure", "insecure"),
    ("--tls-sni", "tls_sni"),
    ("--tls-min-version", "tls_min_version"),
    ("--tls-max-version", "tls_max_version"),
    ("--tls-resume", "tls_resume"),
)


def default_processes() -> int:
    """The CPUs this process may run on, which respects taskset and cgroup pinning."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1
