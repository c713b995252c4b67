"""``echod``: parse settings, make listeners, hand them to the chosen backend.

Every mistake an operator can make on the command line or in the environment ends here
as one line on stderr and a non-zero exit status (2 for bad settings, 1 for an address
that cannot be used), never a traceback.
"""

from __future__ import annotations

import argparse
import grp
import importlib
import logging
import os
import pwd
import socket
import sys
from collections.abc import Callable, Mapping, Sequence
from typing import Any, NoReturn

from echod import __version__, backends
from echod.backends.base import Backend
from echod.config import OPTIONS, Config, ConfigError, from_environment
from echod.lifecycle import Lifecycle
from echod.logs import configure_logging
from echod.net.listeners import (
    Address,
    ListenerError,
    bind,
    close_all,
    parse_address,
    unix_paths,
)
from echod.service import ServiceError
from echod.service.activation import inherited_sockets
from echod.service.limits import PrivilegeError, drop_privileges, raise_nofile_limit
from echod.service.notify import Notifier, watchdog_interval
from echod.service.supervisor import Supervisor, reserve
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
        configure_logging(config.log_level)
    except (ConfigError, backends.BackendUnavailable) as exc:
        print(f"echod: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    try:
        return serve(config, backend)
    except KeyboardInterrupt:  # before the backend took over SIGINT
        return 130


def serve(config: Config, backend: Backend) -> int:
    """Listeners first (they may need root), then the privilege drop, then serving."""
    reuseport = config.workers > 1 and config.listen_mode == "reuseport"
    shared: list[socket.socket] = []
    reservations: list[socket.socket] = []
    per_worker: list[Address] = []
    try:
        inherited = inherited_sockets()
        shared = [entry.sock for entry in inherited]
        # Socket-activated sockets belong to the socket unit: always shared.
        for address in [] if inherited else [parse_address(a) for a in config.addresses]:
            if reuseport and address.path is None and not address.datagram:
                reservation, resolved = reserve(address)
                reservations.append(reservation)
                per_worker.append(resolved)
            else:
                shared.append(bind(address, config.backlog))
        check_backend(backend.name, shared)
    except (ListenerError, ServiceError) as exc:
        close_all([*shared, *reservations])
        print(f"echod: error: {exc}", file=sys.stderr)
        return EXIT_LISTEN
    # The limit is per process, and --max-connections is per worker: the same sum holds.
    raise_nofile_limit(config.max_connections + 64 if config.max_connections else None)
    # Inherited sockets belong to systemd's socket unit: never unlink their paths.
    owned_paths = [] if inherited else unix_paths(shared)
    try:
        if config.user is not None:
            _preload(backend)
            if per_worker:
                # Each reuseport worker binds its own socket, and a restarted one binds
                # again, which needs the privileges --user gives up: as nginx's master
                # and gunicorn's arbiter do, the supervisor keeps them and each worker
                # drops them once bound. The supervisor never reads a client's byte.
                check_identity(config.user, config.group)
            else:
                _drop_privileges(config.user, config.group)
        notifier = Notifier.from_env()
        if config.workers > 1:
            supervisor = Supervisor(
                config, backend, shared, per_worker, reservations, notifier, watchdog_interval()
            )
            return supervisor.run()
        lifecycle = Lifecycle(
            notifier=notifier if notifier.enabled else None, watchdog_interval=watchdog_interval()
        )
        backend.serve(shared, config, lifecycle)
    except ServiceError as exc:
        print(f"echod: error: {exc}", file=sys.stderr)
        return EXIT_LISTEN
    finally:
        close_all([*shared, *reservations], remove=owned_paths)
    return 0


def _preload(backend: Backend) -> None:
    """Import now what serving would import later.

    An unprivileged process may be unable to read the interpreter's own library (a
    pyenv under a mode-700 /root, say), so a module first imported after the drop
    would fail: load the backend's lazily imported event loop while still root.
    """
    factory = getattr(backend, "loop_factory", None)
    if isinstance(factory, str):
        importlib.import_module(factory.partition(":")[0])
    for module in LAZY_IMPORTS.get(backend.name, ()):
        importlib.import_module(module)


# Modules a backend first imports inside serve(), found by diffing sys.modules around
# a serve; the --user tests catch a new one.
LAZY_IMPORTS = {"gevent": ("pprint",)}


def _drop_privileges(user: str, group: str | None) -> None:
    try:
        drop_privileges(user, group)
    except OSError as exc:  # EPERM from a seccomp filter (SystemCallFilter=~@privileged)
        raise PrivilegeError(f"--user {user}: cannot switch user: {exc.strerror}") from None
    log.info("running as user %s", user)


def check_identity(user: str, group: str | None) -> None:
    """What :func:`drop_privileges` would refuse, found before any worker is forked."""
    try:
        pwd.getpwuid(int(user)) if user.isdigit() else pwd.getpwnam(user)
    except KeyError:
        raise PrivilegeError(f"--user {user}: no such user") from None
    if group is not None:
        try:
            grp.getgrgid(int(group)) if group.isdigit() else grp.getgrnam(group)
        except KeyError:
            raise PrivilegeError(f"--group {group}: no such group") from None
    if os.geteuid() != 0:
        raise PrivilegeError(
            f"--user {user}: only root can switch users (running as uid {os.geteuid()})"
        )
