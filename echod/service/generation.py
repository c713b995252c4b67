"""A generation: what one set of workers serves, and how a reload builds the next.

A reload prepares the next generation whole (settings, backend, certificates,
listeners) before any worker is forked, so that a configuration that cannot be applied
is refused with nothing changed; :class:`Change` keeps what to go back to while the
new workers start (:mod:`echod.service.arbiter`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from echod import backends
from echod.backends.base import Backend
from echod.config import Config, ConfigError
from echod.loop import Timer
from echod.net.listener_set import Listeners, Named, open_listeners
from echod.service.channel import Channel
from echod.tls import TlsEndpoint, check_tls_backend
from echod.udp.serving import check_backend

Reread = Callable[[], Config]


@dataclass
class Served:
    """What one generation of workers serves: the settings, the backend, the sockets."""

    config: Config
    backend: Backend
    listeners: Listeners
    generation: int


@dataclass(eq=False)
class Change:
    """A reload or an upgrade under way, with what to go back to if it fails."""

    kind: str  # "reload" or "upgrade"
    started: float
    previous: Served
    unused: list[Named] = field(default_factory=list)  # to close once old workers are gone
    bound: list[Named] = field(default_factory=list)  # new: to close if it fails
    successor: int | None = None  # upgrade: the new process
    link: Channel | None = None  # upgrade: its channel
    timer: Timer | None = None


def prepare(reread: Reread | None, current: Served) -> tuple[Served, list[Named], list[Named]]:
    """The generation after ``current``, whole or not at all: its settings, backend and
    listeners; with the listeners ``current`` holds and no longer needs (``unused``)
    and those bound for it (``bound``). Raises ConfigError, BackendUnavailable,
    ListenerError or ServiceError with nothing changed."""
    if reread is None:
        raise ConfigError("this echod has no configuration to re-read")
    config = reread()
    backend = backends.load(config.backend or backends.default_name())
    if config.user != current.config.user or config.group != current.config.group:
        raise ConfigError(
            "--user and --group take effect only at start (the supervisor "
            "has already given up root)"
        )
    # New certificates and keys, read whole before anything changes (a reload is how
    # they are renewed: new connections get them, open ones keep theirs).
    tls = TlsEndpoint.from_config(config)
    previous = list(current.listeners)
    listeners, unused = open_listeners(
        config.addresses,
        config.backlog,
        slots=config.workers if config.listen_mode == "reuseport" else 0,
        metrics=config.metrics,
        available=previous,
        tls=tls,
    )
    bound = [named for named in listeners if named not in previous]
    try:
        check_backend(backend.name, listeners.for_slot(None))
        check_tls_backend(backend.name, listeners.serve_tls)
        if config.metrics != current.config.metrics:
            raise ConfigError("--metrics takes effect only at start, not on a reload")
    except BaseException:
        for named in bound:
            named.sock.close()
        current.listeners.layer()  # the sockets kept serve the old endpoint again
        raise
    listeners.owned_paths = sorted({*current.listeners.owned_paths, *listeners.owned_paths})
    return Served(config, backend, listeners, current.generation + 1), unused, bound
