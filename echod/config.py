"""echod's settings: one table that the command line, the environment and the docs share.

Each :class:`Option` row gives the flag, the ``ECHOD_*`` variable, the TOML key of
``--config`` files (the row's name), the parser and the default; ``cli`` builds argparse
from it and :func:`options_markdown` the README's table (a unit test keeps the two
equal). Precedence: the command line, then ``ECHOD_*`` variables, then the file, then
the defaults.
"""

from __future__ import annotations

import dataclasses
import difflib
import ipaddress
import os
import resource
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from echod.faults import Fault, FaultError, parse_fault
from echod.logs import FORMATS as LOG_FORMATS
from echod.net.addresses import ListenerError, parse_address
from echod.session import WaterMarks

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - the backport, same API
    import tomli as tomllib


class ConfigError(ValueError):
    """A setting that cannot be used; its message is one line meant for the operator."""


def fault_spec(text: str) -> Fault:
    """One ``--fault`` spec (echod.faults lists them)."""
    try:
        return parse_fault(text)
    except FaultError as exc:
        raise ConfigError(str(exc)) from None


def port_number(text: str) -> int:
    port = _integer(text)
    if not 0 <= port <= 65535:
        raise ConfigError(f"port {port} is out of range (0-65535; 0 picks a free port)")
    return port


def byte_size(text: str) -> int:
    """Bytes, with an optional K, M or G suffix (powers of 1024)."""
    units = {"k": 1 << 10, "m": 1 << 20, "g": 1 << 30}
    text = text.strip()
    scale = units.get(text[-1:].lower(), 1)
    number = _integer(text[:-1] if scale > 1 else text)
    if number < 0:
        raise ConfigError(f"size {text!r} must not be negative")
    return number * scale


def _amount(text: str, unit: str) -> float:
    """A finite number, zero or more, of ``unit`` (the word each message names)."""
    try:
        value = float(text)
    except ValueError:
        raise ConfigError(f"{text!r} is not a number of {unit}") from None
    if not 0 <= value < float("inf"):
        raise ConfigError(f"{text!r} {unit} must be zero or more")
    return value


def seconds(text: str) -> float:
    return _amount(text, "seconds")


def count(text: str) -> int:
    value = _integer(text)
    if value < 0:
        raise ConfigError(f"{value} must be zero or more")
    return value


def positive(text: str) -> int:
    value = _integer(text)
    if value < 1:
        raise ConfigError(f"{value} must be at least 1")
    return value


def worker_count(text: str) -> int:
    """A number of worker processes, or ``auto``: one per CPU this process may run on."""
    if text.strip().lower() == "auto":
        return usable_cpus()
    try:
        workers = positive(text)
    except ConfigError as exc:
        raise ConfigError(f"{exc}, or auto (one per usable CPU)") from None
    ceiling = max_workers()
    if workers > ceiling:
        raise ConfigError(
            f"{workers} workers is above the ceiling of {ceiling} here"
            " (the larger of 64 and 8 per usable CPU, within RLIMIT_NPROC)"
        )
    return workers


def max_workers() -> int:
    """The most workers echod forks: the larger of 64 and 8 per usable CPU, under RLIMIT_NPROC.

    A bound, so that a slip such as ``--workers 100000`` is refused instead of forking
    until the OOM killer fires; it leaves room for the 100,000-connection bench, which
    needs 6 workers under the per-process file limit.
    """
    ceiling = max(64, 8 * usable_cpus())
    soft, _ = resource.getrlimit(resource.RLIMIT_NPROC)
    if soft != resource.RLIM_INFINITY:
        ceiling = min(ceiling, max(soft - 1, 1))  # the supervisor is one process too
    return ceiling


def usable_cpus() -> int:
    # The affinity mask, not os.cpu_count(): under taskset, cgroup cpusets or a
    # container's CPU pinning, more workers than usable CPUs only contend.
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def packet_and_byte_rate(text: str) -> tuple[float, int]:
    """``DATAGRAMS/BYTES`` per second, e.g. ``100/1M``; 0 on either side turns it off."""
    packets, sep, size = text.partition("/")
    if not sep:
        raise ConfigError(f"{text!r} is not DATAGRAMS/BYTES per second (e.g. 100/1M)")
    return _amount(packets, "datagrams per second"), byte_size(size)


def port_list(text: str) -> tuple[int, ...]:
    """Comma-separated ports; ``none`` (or nothing) for an empty list."""
    if text.strip().lower() in ("", "none"):
        return ()
    return tuple(port_number(part) for part in text.split(","))


def listen_address(text: str) -> str:
    """A well-formed ``--listen`` address, kept as given; binding it is later (exit 1)."""
    try:
        parse_address(text)
    except ListenerError as exc:
        raise ConfigError(str(exc)) from None
    return text


def metrics_address(text: str) -> str:
    """A well-formed ``--metrics`` address: HTTP is served over TCP or a Unix socket."""
    if listen_address(text).startswith("udp:"):
        raise ConfigError(f"{text!r}: metrics are served over TCP or unix:/PATH, not UDP")
    return text


def cidr(text: str) -> str:
    """A network (``10.0.0.0/8``, ``2001:db8::/32``) or one address, as written."""
    try:
        ipaddress.ip_network(text.strip(), strict=False)
    except ValueError:
        raise ConfigError(f"{text!r} is not an address or CIDR network") from None
    return text.strip()


def connect_rate(text: str) -> float:
    """New connections per second; 0 turns the limit off."""
    return _amount(text, "connections per second")


def prefix_v6(text: str) -> int:
    value = _integer(text)
    if not 1 <= value <= 128:
        raise ConfigError(f"IPv6 prefix length {value} is out of range (1-128)")
    return value


def _integer(text: str) -> int:
    try:
        return int(text.strip(), 10)
    except ValueError:
        raise ConfigError(f"{text!r} is not a whole number") from None


@dataclass(frozen=True)
class SniEntry:
    """``--tls-sni NAME=CERT[,KEY]``: the certificate served to clients asking for NAME."""

    name: str  # lower case, no trailing dot; "*.example.com" matches one label
    cert: str
    key: str | None = None


def sni_entry(text: str) -> SniEntry:
    name, sep, files = text.partition("=")
    cert, _, key = files.partition(",")
    if not sep or not name.strip() or not cert:
        raise ConfigError(f"{text!r} is not NAME=CERT[,KEY]")
    return SniEntry(name.strip().lower().rstrip("."), cert, key or None)


def tls_version(text: str) -> str:
    text = text.strip().removeprefix("TLSv").removeprefix("tlsv")
    if text not in TLS_VERSIONS:
        raise ConfigError(f"TLS version {text!r} is not one of {', '.join(TLS_VERSIONS)}")
    return text


def alpn_list(text: str) -> tuple[str, ...]:
    return tuple(part.strip() for part in text.split(",") if part.strip())


TLS_VERSIONS = ("1.2", "1.3")
LOG_LEVELS = ("debug", "info", "warning", "error")
LISTEN_MODES = ("shared", "reuseport")
SWITCHES = ("on", "off")


@dataclass(frozen=True)
class Option:
    """One setting: how it is spelt on the command line and in the environment."""

    name: str
    parse: Callable[[str], Any]
    default: Any
    help: str
    metavar: str | None = None
    choices: Sequence[str] | None = None
    repeated: bool = False  # --listen a --listen b; ECHOD_LISTEN="a b"

    @property
    def flag(self) -> str:
        return "--" + self.name.replace("_", "-")

    @property
    def env(self) -> str:
        return "ECHOD_" + self.name.upper()

    @property
    def shown_default(self) -> str:
        """The default as an operator would type it (sizes in K, none as a dash)."""
        if self.default in (None, ()):
            return "—"
        if self.parse is packet_and_byte_rate:
            return f"{self.default[0]:g}/{self.default[1] >> 20}M"
        if self.parse is port_list:
            return ",".join(map(str, self.default))
        if self.parse is byte_size and self.default and self.default % (1 << 20) == 0:
            return f"{self.default >> 20}M"
        if self.parse is byte_size and self.default % 1024 == 0:
            return f"{self.default // 1024}K"
        if isinstance(self.default, float) and self.default.is_integer():
            return str(int(self.default))
        return str(self.default)


OPTIONS: tuple[Option, ...] = (
    Option("host", str, "127.0.0.1", "address to listen on (IPv4, IPv6 or a name)", "HOST"),
    Option("port", port_number, 7, "TCP port; 0 picks a free one (RFC 862 uses 7)", "PORT"),
    Option(
        "listen",
        listen_address,
        (),
        "listen on HOST:PORT, [V6]:PORT, unix:/PATH, udp:HOST:PORT or tls:HOST:PORT instead of --host/--port; proxy-v1: or proxy-v2: before a TCP or Unix address: clients send a PROXY header first; repeat for more",
        "ADDRESS",
        repeated=True,
    ),
    Option("backend", str, None, "IO model serving connections; unset: the best selector here (epoll on Linux)", "NAME"),
    Option("backlog", positive, 4096, "listen queue length (capped by net.core.somaxconn)", "N"),
    Option("high_water", byte_size, 64 * 1024, "stop reading a client once this much of its echo waits unsent", "BYTES"),
    Option("low_water", byte_size, 16 * 1024, "resume reading once its unsent echo drains to this", "BYTES"),
    Option("max_connections", count, 0, "connections served at once by each worker; past it --fair-share decides who is served, or with it off new ones wait in the backlog (0 = no cap)", "N"),
    Option("idle_timeout", seconds, 0.0, "close a connection silent this long (0 = never)", "SECONDS"),
    Option("graceful_timeout", seconds, 30.0, "on SIGTERM, how long open connections may go on before they are closed", "SECONDS"),
    Option("log_level", str.lower, "info", "least severe message logged", "LEVEL", choices=LOG_LEVELS),
    Option("log_format", str.lower, "text", "log lines as text (the journal's dialect under systemd) or one JSON object per line", "FORMAT", choices=LOG_FORMATS),
    Option("workers", worker_count, 1, "processes serving connections under one supervisor; auto = one per usable CPU", "N|auto"),
    Option("listen_mode", str.lower, "reuseport", "with workers: a SO_REUSEPORT socket per worker (even spread), or one accept queue all share (TCP only; Unix and systemd sockets are always shared)", "MODE", choices=LISTEN_MODES),
    Option("udp_rate", packet_and_byte_rate, (100.0, 1 << 20), "UDP: answers per source address, DATAGRAMS/BYTES per second (0/0 = no limit)", "N/BYTES"),
    Option("udp_burst", seconds, 2.0, "UDP: seconds of --udp-rate a quiet source may send at once", "SECONDS"),
    Option("udp_budget", byte_size, 8 << 20, "UDP: bytes per second answered in total, whatever the sources (0 = no limit)", "BYTES"),
    Option("udp_sources", positive, 4096, "UDP: source addresses whose rate is tracked; past it a new source takes over the least recently seen one's bucket", "N"),
    Option("udp_refuse_ports", port_list, (53, 123, 161, 389, 1900, 5353, 11211), "UDP: source ports never answered besides those below 1024 and echod's own (none = only those)", "PORTS"),
    Option("metrics", metrics_address, None, "serve Prometheus metrics at http://ADDRESS/metrics (HOST:PORT or unix:/PATH); runs the supervisor even with one worker", "ADDRESS"),
    Option("tls_cert", str, None, "tls: listeners: certificate chain (PEM, leaf first; may hold the key too)", "FILE"),
    Option("tls_key", str, None, "tls: listeners: private key (PEM) when not in --tls-cert", "FILE"),
    Option("tls_client_ca", str, None, "tls: require client certificates signed by these CAs (PEM): mutual TLS", "FILE"),
    Option("tls_min_version", tls_version, "1.2", "tls: oldest protocol version accepted", "VERSION", choices=TLS_VERSIONS),
    Option("tls_sni", sni_entry, (), "tls: serve CERT (and KEY) to clients asking for NAME (SNI; *.domain matches one label); repeat for more", "NAME=CERT[,KEY]", repeated=True),
    Option("tls_sni_dir", str, None, "tls: serve each certificate in DIR (*.pem, *.crt; key inside or NAME.key) to the names it carries (subjectAltName, else CN); re-read on reload; needs echod[tls]", "DIR"),
    Option("tls_alpn", alpn_list, (), "tls: ALPN protocols offered, comma-separated (the one chosen is logged at debug)", "PROTOCOLS"),
    Option("tls_handshake_timeout", seconds, 10.0, "tls: close a connection whose handshake is not done this long after accept", "SECONDS"),
    Option("allow", cidr, (), "accept TCP connections and answer UDP datagrams only from these networks (after --deny); repeat for more", "CIDR", repeated=True),
    Option("deny", cidr, (), "refuse TCP connections and UDP datagrams from these networks, before anything is read; repeat for more", "CIDR", repeated=True),
    Option("max_connections_per_source", count, 0, "connections one source may hold at once, per worker (0 = no limit)", "N"),
    Option("connect_rate_per_source", connect_rate, 0.0, "new connections per second one source may open, per worker (0 = no limit)", "N"),
    Option("connect_burst_per_source", seconds, 2.0, "seconds of --connect-rate-per-source a quiet source may open at once", "SECONDS"),
    Option("source_prefix_v6", prefix_v6, 64, "IPv6 clients in one prefix of this length count as one source", "BITS"),
    Option("fair_share", str.lower, "on", "when full (--max-connections or out of descriptors), a source below its share takes the longest-idle slot of the source holding the most", "SWITCH", choices=SWITCHES),
    Option("proxy_from", cidr, (), "peers trusted to send a PROXY protocol header (proxy-v1: and proxy-v2: listeners); any other is reset before reading; repeat for more", "CIDR", repeated=True),
    Option("proxy_timeout", seconds, 5.0, "how long a PROXY header may take to arrive before the connection is reset", "SECONDS"),
    Option("fault", fault_spec, (), "FOR TESTING CLIENTS: misbehave on purpose: delay:TIME, bandwidth:SIZE/s, drop-byte:N, reset-after:N, close-after:N or stall-after:N (docs/api.md); repeat for more", "SPEC", repeated=True),
    Option("fault_every", positive, 1, "with --fault: the faults strike the first of every N connections (1 = all)", "N"),
    Option("user", str, None, "switch to this user (name or uid) once listeners are bound; needs root", "USER"),
    Option("group", str, None, "with --user: switch to this group instead of the user's own", "GROUP"),
)  # fmt: skip


def options_markdown() -> str:
    """The README's option table, built from :data:`OPTIONS` so the docs cannot drift."""
    rows = ["| flag | variable | default | meaning |", "|---|---|---|---|"]
    for option in OPTIONS:
        choices = f" ({', '.join(option.choices)})" if option.choices else ""
        flag = f"{option.flag} {option.metavar}" if option.metavar else option.flag
        flag = flag.replace("|", "\\|")
        rows.append(
            f"| `{flag}` | `{option.env}` | `{option.shown_default}` | {option.help}{choices} |"
        )
    return "\n".join(rows)


@dataclass(frozen=True)
class Config:
    """Validated settings of one echod process."""

    host: str = "127.0.0.1"
    port: int = 7
    listen: tuple[str, ...] = ()
    backend: str | None = None
    backlog: int = 4096
    high_water: int = 64 * 1024
    low_water: int = 16 * 1024
    max_connections: int = 0
    idle_timeout: float = 0.0
    graceful_timeout: float = 30.0
    log_level: str = "info"
    log_format: str = "text"
    workers: int = 1
    # reuseport by measurement: 1,000 connections over 2 workers split at worst 467/533
    # with it and 246/754 with one shared queue (epoll, asyncio, uvloop, threads).
    listen_mode: str = "reuseport"
    metrics: str | None = None
    user: str | None = None
    group: str | None = None
    udp_rate: tuple[float, int] = (100.0, 1 << 20)
    udp_burst: float = 2.0
    udp_budget: int = 8 << 20
    udp_sources: int = 4096
    udp_refuse_ports: tuple[int, ...] = (53, 123, 161, 389, 1900, 5353, 11211)
    tls_cert: str | None = None
    tls_key: str | None = None
    tls_client_ca: str | None = None
    tls_min_version: str = "1.2"
    tls_sni: tuple[SniEntry, ...] = ()
    tls_sni_dir: str | None = None
    tls_alpn: tuple[str, ...] = ()
    tls_handshake_timeout: float = 10.0
    allow: tuple[str, ...] = ()
    deny: tuple[str, ...] = ()
    max_connections_per_source: int = 0
    connect_rate_per_source: float = 0.0
    connect_burst_per_source: float = 2.0
    source_prefix_v6: int = 64
    fair_share: str = "on"
    proxy_from: tuple[str, ...] = ()
    proxy_timeout: float = 5.0
    fault: tuple[Fault, ...] = ()
    fault_every: int = 1

    def __post_init__(self) -> None:
        try:
            self.marks  # noqa: B018  # validates the pair
        except ValueError as exc:
            raise ConfigError(f"{exc} (high {self.high_water} B, low {self.low_water} B)") from None
        if self.log_level not in LOG_LEVELS:
            raise ConfigError(f"log level {self.log_level!r} is not one of {', '.join(LOG_LEVELS)}")
        if self.log_format not in LOG_FORMATS:
            raise ConfigError(
                f"log format {self.log_format!r} is not one of {', '.join(LOG_FORMATS)}"
            )
        if self.listen_mode not in LISTEN_MODES:
            raise ConfigError(
                f"listen mode {self.listen_mode!r} is not one of {', '.join(LISTEN_MODES)}"
            )
        if self.workers < 1:
            raise ConfigError(f"workers must be at least 1, not {self.workers}")
        if self.workers > max_workers():
            raise ConfigError(f"{self.workers} workers is above the ceiling of {max_workers()}")
        if self.fair_share not in SWITCHES:
            raise ConfigError(f"fair share {self.fair_share!r} is not one of on, off")
        proxied = [text for text in self.listen if text.startswith("proxy-")]
        if proxied and not self.proxy_from:
            raise ConfigError(
                f"--listen {proxied[0]} needs --proxy-from: the peers trusted to send the header"
            )
        if self.group is not None and self.user is None:
            raise ConfigError("--group needs --user")
        if self.tls_min_version not in TLS_VERSIONS:
            raise ConfigError(f"TLS version {self.tls_min_version!r} is not one of 1.2, 1.3")
        tls = [address for address in self.listen if address.startswith("tls:")]
        if tls and self.tls_cert is None:
            raise ConfigError(f"listen address {tls[0]!r} needs --tls-cert (and --tls-key)")

    @property
    def marks(self) -> WaterMarks:
        return WaterMarks(self.high_water, self.low_water)

    @property
    def addresses(self) -> tuple[str, ...]:
        """Where to listen: --listen if given, else --host and --port."""
        if self.listen:
            return self.listen
        host = f"[{self.host}]" if ":" in self.host else self.host
        return (f"{host}:{self.port}",)

    def replace(self, **changes: Any) -> Config:
        return dataclasses.replace(self, **changes)


BY_NAME = {option.name: option for option in OPTIONS}
CONFIG_VARIABLE = "ECHOD_CONFIG"  # --config


def _parse(option: Option, text: str) -> Any:
    """One value as the flag would take it, choices checked."""
    value = option.parse(text)
    if option.choices and value not in option.choices:
        raise ConfigError(f"choose from {', '.join(option.choices)}")
    return value


def from_environment(environ: Mapping[str, str] = os.environ) -> dict[str, Any]:
    """Settings given as ``ECHOD_*`` variables, parsed by the same rules as the flags."""
    values: dict[str, Any] = {}
    for option in OPTIONS:
        raw = environ.get(option.env)
        if raw is None or raw == "":
            continue
        try:
            if option.repeated:
                values[option.name] = tuple(_parse(option, part) for part in raw.split())
            else:
                values[option.name] = _parse(option, raw)
        except ConfigError as exc:
            raise ConfigError(f"{option.env}={raw!r}: {exc}") from None
    return values


def from_file(path: str) -> dict[str, Any]:
    """Settings from a TOML file (``--config``).

    Its keys are the options' names (``high_water``, ``listen_mode``); a value is the
    text the flag takes (``"64K"``, ``"auto"``) or a TOML integer, float or, for a
    repeated option such as ``listen``, an array. An unknown key, a bad value or a bad
    type is a :class:`ConfigError` naming the file and the key.
    """
    try:
        with open(path, "rb") as file:
            table = tomllib.load(file)
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read it: {exc.strerror or exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: not valid TOML: not UTF-8 text") from None
    values: dict[str, Any] = {}
    for key, raw in table.items():
        option = BY_NAME.get(key)
        if option is None:
            near = difflib.get_close_matches(key, BY_NAME, n=1)
            hint = f" (did you mean {near[0]!r}?)" if near else ""
            raise ConfigError(f"{path}: unknown key {key!r}{hint}")
        try:
            if option.repeated:
                items = raw if isinstance(raw, list) else [raw]
                values[key] = tuple(_parse(option, _toml_text(item)) for item in items)
            else:
                values[key] = _parse(option, _toml_text(raw))
        except ConfigError as exc:
            raise ConfigError(f"{path}: {key}: {exc}") from None
    return values


def _toml_text(value: object) -> str:
    """A TOML scalar as the text its flag would take."""
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        kind = "boolean" if isinstance(value, bool) else type(value).__name__
        raise ConfigError(f"expected a string or a number, not a TOML {kind}")
    return value if isinstance(value, str) else repr(value)


# Read by echod-bench, which may share echod's environment.
FOREIGN_PREFIXES = ("ECHOD_BENCH_",)


def unknown_variables(environ: Mapping[str, str] = os.environ) -> list[str]:
    """``ECHOD_*`` variables no option reads (a typo such as ``ECHOD_PROT``), each with
    the nearest known name if there is one, for a warning at start-up."""
    known = [option.env for option in OPTIONS] + [CONFIG_VARIABLE]
    unknown = []
    for name in sorted(environ):
        if not name.startswith("ECHOD_") or name in known or name.startswith(FOREIGN_PREFIXES):
            continue
        near = difflib.get_close_matches(name, known, n=1)
        unknown.append(f"{name} (did you mean {near[0]}?)" if near else name)
    return unknown
