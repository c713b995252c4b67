"""echod: a TCP echo server (RFC 862) over every Python IO model.

The public API (docs/api.md): :func:`running` and :func:`serving` start an echo
server in this process; everything else in the package may change between releases.
"""

__version__ = "0.1.0"

from echod.backends import BackendUnavailable
from echod.config import ConfigError
from echod.embedding import (
    AsyncEchoServer,
    EchoServer,
    ServerError,
    ThreadedEchoServer,
    running,
    serving,
)
from echod.lifecycle import Stats
from echod.net.listeners import ListenerError

__all__ = [
    "AsyncEchoServer",
    "BackendUnavailable",
    "ConfigError",
    "EchoServer",
    "ListenerError",
    "ServerError",
    "Stats",
    "ThreadedEchoServer",
    "__version__",
    "running",
    "serving",
]
