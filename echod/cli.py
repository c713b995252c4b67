"""``echod``: settings → listeners → one serving process or a supervisor, in one path.

Every mistake an operator can make on the command line or in the environment ends here
as one line on stderr and a non-zero exit status (2 for bad settings, 1 for an address
that cannot be used), never a traceback.
"""

from __future__ import annotations

import argparse
import logging
import os
import socket
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, NoReturn

from echod import __version__, backends
from echod.backends.base import Backend
from echod.config import (
    CONFIG_VARIABLE,
    OPTIONS,
    Config,
    ConfigError,
    from_environment,
    from_file,
    unknown_variables,
)
from echod.lifecycle import Lifecycle, Stats
from echod.logs import configure_logging
from echod.net.activation import UPGRADE_FD_NAME, inherited_sockets
from echod.net.addresses import ListenerError, parse_address
from echod.net.listener_set import open_listeners
from echod.net.listeners import describe
from echod.service import ServiceError, worker_process
from echod.service.arbiter import Supervisor
from echod.service.channel import Channel
from echod.service.generation import Served
from echod.service.limits import raise_nofile_limit
from echod.service.notify import Notifier, watchdog_interval
from echod.tls import TlsEndpoint
from echod.udp.serving import check_backend

log = logging.getLogger("echod")

EXIT_USAGE = 2
EXIT_LISTEN = 1


class Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USAGE, f"echod: error: {message} (see echod --help)\n")


def _argument_type(parse: Callable[[str], Any]) -> Callable[[str], Any]:
    """Let argparse report a ConfigError's own message instead of a generic one."""

    def convert(text: str) -> Any:
        try:
            return parse(text)
        except ConfigError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None

    convert.__name__ = parse.__name__
    return convert


def build_parser() -> Parser:
    parser = Parser(
        prog="echod",
        description="TCP echo server (RFC 862): every byte a client sends comes back, in order.",
        epilog="Every option can also be set as ECHOD_<OPTION> in the environment "
        "(ECHOD_PORT=5000, ECHOD_BACKEND=epoll); a flag wins over its variable.",
    )
    for option in OPTIONS:
        default = f" (default: {option.shown_default})" if option.default not in (None, ()) else ""
        parser.add_argument(
            option.flag,
            dest=option.name,
            type=_argument_type(option.parse),
            choices=option.choices,
            metavar=option.metavar,
            action="append" if option.repeated else "store",
            default=None,
            help=f"{option.help}{default} [{option.env}]",
        )
    parser.add_argument(
        "--config",
        metavar="FILE",
        help="read settings from this TOML file, keys named as the options below "
        f'(high_water = "64K"); flags and ECHOD_* win over it; SIGHUP re-reads it [{CONFIG_VARIABLE}]',
    )
    parser.add_argument(
        "--check-config",
        action="store_true",
        help="check the settings (file, environment, flags) without binding or serving; "
        "exit 0 if a start or a reload would take them, 2 if not",
    )
    parser.add_argument(
        "--list-backends", action="store_true", help="print the backends available here and exit"
    )
    parser.add_argument("--version", action="version", version=f"echod {__version__}")
    return parser


@dataclass(frozen=True)
class Settings:
    """What the command line asks for: the settings, and what to do with them."""

    config: Config
    list_only: bool = False
    check_only: bool = False
    config_file: str | None = None
    overridden: tuple[str, ...] = ()  # file keys a flag or an ECHOD_* variable beats


def load_config(argv: Sequence[str] | None, environ: Mapping[str, str]) -> Settings:
    """Settings from defaults, then the ``--config`` file, then ``ECHOD_*``, then flags."""
    args = build_parser().parse_args(argv)
    path = args.config or environ.get(CONFIG_VARIABLE) or None
    from_file_ = from_file(path) if path else {}
    given = from_environment(environ)
    for option in OPTIONS:
        value = getattr(args, option.name)
        if value is not None:
            given[option.name] = tuple(value) if option.repeated else value
    overridden = tuple(sorted(key for key in from_file_ if key in given))
    config = Config(**{**from_file_, **given})
    return Settings(config, bool(args.list_backends), bool(args.check_config), path, overridden)


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        settings = load_config(argv, os.environ)
        config = settings.config
        unknown = unknown_variables(os.environ)
        if unknown:
            print(f"echod: warning: ignoring unknown {', '.join(unknown)}", file=sys.stderr)
        if settings.list_only:
            for name in backends.available():
                print(name)
            # Standard output stays one available name per line (the bench and the
            # tests parse it); what is here but refused says why on stderr.
            for name, reason in backends.refused():
                print(f"echod: {name} unavailable: {reason}", file=sys.stderr)
            return 0
        backend = backends.load(config.backend or backends.default_name())
        backends.check_faults(backend.name, config.fault)
        # Certificates and keys are read now, as root if started so: a root-only key
        # stays readable after --user; --check-config reads them too.
        tls = TlsEndpoint.from_config(config)
        if settings.check_only:
            return check(settings, backend)
        configure_logging(config.log_level, log_format=config.log_format)
    except (ConfigError, ListenerError, backends.BackendUnavailable) as exc:
        print(f"echod: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    warn_overridden(settings)
    try:
        return serve(settings, backend, argv, tls)
    except KeyboardInterrupt:  # before the backend took over SIGINT
        return 130


def warn_overridden(settings: Settings) -> None:
    """File keys that cannot take effect, at start and on every reload (a reload re-reads
    the file, never the command line or the environment)."""
    for key in settings.overridden:
        log.warning(
            "%s: %s is overridden by the command line or ECHOD_*: the file's value has no effect",
            settings.config_file,
            key,
        )


def reread(argv: Sequence[str]) -> Config:
    """What SIGHUP applies: the same command line and environment, the file read again."""
    settings = load_config(argv, os.environ)
    warn_overridden(settings)
    config = settings.config
    # A reload onto a backend that cannot carry --fault is refused, as a start is.
    backends.check_faults(config.backend or backends.default_name(), config.fault)
    return config


def check(settings: Settings, backend: Backend) -> int:
    """``--check-config``: what start-up and a reload would refuse, without binding."""
    config = settings.config
    for text in config.addresses:
        parse_address(text)
    if config.metrics is not None:
        parse_address(config.metrics)
    datagram = any(parse_address(text).datagram for text in config.addresses)
    check_backend(backend.name, [socket.socket(type=socket.SOCK_DGRAM)] if datagram else [])
    source = settings.config_file or "the command line and environment"
    print(
        f"echod: configuration ok ({source}): backend {backend.name}, "
        f"{config.workers} worker(s), listening on {' '.join(config.addresses)}"
    )
    return 0


def supervised(settings: Settings) -> bool:
    """A supervisor runs whenever echod can be reloaded or has more than one process:
    with --workers above 1, --metrics or --config (the units give --config)."""
    config = settings.config
    return config.workers > 1 or config.metrics is not None or settings.config_file is not None


def serve(
    settings: Settings, backend: Backend, argv: Sequence[str], tls: TlsEndpoint | None
) -> int:
    """Settings → listeners → one serving process, or a supervisor and its workers."""
    config = settings.config
    try:
        inherited = inherited_sockets()
        predecessor = next((n for n in inherited if n.name == UPGRADE_FD_NAME), None)
        inherited = [n for n in inherited if n is not predecessor]
        with_supervisor = supervised(settings) or predecessor is not None
        listeners, unused = open_listeners(
            config.addresses,
            config.backlog,
            slots=config.workers if with_supervisor and config.listen_mode == "reuseport" else 0,
            metrics=config.metrics,
            available=inherited,
            tls=tls,
        )
    except ListenerError as exc:
        print(f"echod: error: {exc}", file=sys.stderr)
        return EXIT_LISTEN
    for named in unused:  # handed on by an earlier echod, not in this configuration
        log.info(
            "closing inherited %s (%s): not in this configuration", named.name, describe(named.sock)
        )
        named.sock.close()
    # The limit is per process, and --max-connections is per worker: the same sum holds.
    raise_nofile_limit(config.max_connections + 64 if config.max_connections else None)
    notifier = Notifier.from_env()
    supervisor: Supervisor | None = None
    try:
        worker_process.check_serving(backend, listeners, config)
        if tls is not None:
            log.info("tls: %s", tls.describe())
        if not with_supervisor:
            lifecycle = Lifecycle(
                Stats(), notifier if notifier.enabled else None, watchdog_interval()
            )
            worker_process.serve(backend, config, listeners.for_slot(None), lifecycle)
            return 0
        worker_process.become_user(backend, config)
        supervisor = Supervisor(
            Served(config, backend, listeners, generation=1),
            notifier,
            watchdog_interval(),
            reread=lambda: reread(argv),
            argv=argv,
            predecessor=Channel(predecessor.sock) if predecessor is not None else None,
        )
        return supervisor.run()
    except (ListenerError, ServiceError) as exc:
        print(f"echod: error: {exc}", file=sys.stderr)
        return EXIT_LISTEN
    finally:
        # After an upgrade the successor serves the same Unix socket files.
        handed_over = supervisor is not None and supervisor.handed_over
        (supervisor.listeners if supervisor is not None else listeners).close(
            remove_paths=not handed_over
        )
