"""``echod``: settings → listeners → one serving process or a supervisor, in one path.

Every mistake an operator can make on the command line or in the environment ends here
as one line on stderr and a non-zero exit status (2 for bad settings, 1 for an address
that cannot be used), never a traceback.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Callable, Mapping, Sequence
from typing import Any, NoReturn

from echod import __version__, backends
from echod.backends.base import Backend
from echod.config import OPTIONS, Config, ConfigError, from_environment
from echod.lifecycle import Stats
from echod.logs import configure_logging
from echod.net.listener_set import open_listeners
from echod.net.listeners import ListenerError
from echod.service import ServiceError, worker_process
from echod.service.arbiter import Supervisor
from echod.service.limits import check_identity, raise_nofile_limit
from echod.service.notify import Notifier, watchdog_interval
from echod.tls import TlsEndpoint, check_tls_backend
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
        default = f" (default: {option.default})" if option.default not in (None, ()) else ""
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
        "--list-backends", action="store_true", help="print the backends available here and exit"
    )
    parser.add_argument("--version", action="version", version=f"echod {__version__}")
    return parser


def load_config(argv: Sequence[str] | None, environ: Mapping[str, str]) -> tuple[Config, bool]:
    """Settings from defaults, then ``ECHOD_*`` variables, then flags."""
    args = build_parser().parse_args(argv)
    values = from_environment(environ)
    for option in OPTIONS:
        given = getattr(args, option.name)
        if given is not None:
            values[option.name] = tuple(given) if option.repeated else given
    return Config(**values), bool(args.list_backends)


def main(argv: Sequence[str] | None = None) -> int:
    try:
        config, list_only = load_config(argv, os.environ)
        if list_only:
            for name in backends.available():
                print(name)
            return 0
        backend = backends.load(config.backend or backends.default_name())
        configure_logging(config.log_level, log_format=config.log_format)
        # Certificates and keys are read now, as root if started so: a root-only key
        # stays readable after --user.
        tls = TlsEndpoint.from_config(config)
    except (ConfigError, backends.BackendUnavailable) as exc:
        print(f"echod: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    try:
        return serve(config, backend, tls)
    except KeyboardInterrupt:  # before the backend took over SIGINT
        return 130


def serve(config: Config, backend: Backend, tls: TlsEndpoint | None = None) -> int:
    """Settings → listeners → one serving process, or a supervisor and its workers."""
    workers = config.workers > 1
    try:
        listeners = open_listeners(
            config.addresses,
            config.backlog,
            per_worker=workers and config.listen_mode == "reuseport",
            metrics=config.metrics,
            tls=tls,
        )
    except ListenerError as exc:
        print(f"echod: error: {exc}", file=sys.stderr)
        return EXIT_LISTEN
    # The limit is per process, and --max-connections is per worker: the same sum holds.
    raise_nofile_limit(config.max_connections + 64 if config.max_connections else None)
    notifier = Notifier.from_env()
    try:
        check_backend(backend.name, listeners.shared)
        check_tls_backend(backend.name, listeners)
        if tls is not None:
            log.info("tls: %s", tls.describe())
        # Metrics are served by the supervisor, which never touches a client socket.
        if not workers and listeners.metrics is None:
            stats = Stats()
            worker_process.serve(
                backend,
                config,
                listeners,
                stats,
                notifier if notifier.enabled else None,
                watchdog_interval(),
            )
            return 0
        if config.user is not None:
            if listeners.per_worker:
                # Each reuseport worker binds its own socket, and a restarted one binds
                # again, which needs the root --user gives up: as nginx's master and
                # gunicorn's arbiter do, the supervisor keeps it and each worker drops
                # it once bound. The supervisor never reads a client's byte.
                check_identity(config.user, config.group)
            else:
                worker_process.become_user(backend, config)
        return Supervisor(config, backend, listeners, notifier, watchdog_interval()).run()
    except (ListenerError, ServiceError) as exc:
        print(f"echod: error: {exc}", file=sys.stderr)
        return EXIT_LISTEN
    finally:
        listeners.close()
