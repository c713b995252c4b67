"""echod: a TCP echo server (RFC 862) over every Python IO model.

The public API (docs/api.md): :func:`running` and :func:`serving` start an echo
server in this process; everything else in the package may change between releases.
The names below are imported when first used, so ``import echod`` (the command line,
every worker, every pytest run with the plugin) costs nothing until they are.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

if TYPE_CHECKING:
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
    from echod.net.addresses import ListenerError

# Public name → the module that defines it (``__all__`` lists the same names).
_HOMES = {
    "AsyncEchoServer": "echod.embedding",
    "BackendUnavailable": "echod.backends",
    "ConfigError": "echod.config",
    "EchoServer": "echod.embedding",
    "ListenerError": "echod.net.addresses",
    "ServerError": "echod.embedding",
    "Stats": "echod.lifecycle",
    "ThreadedEchoServer": "echod.embedding",
    "running": "echod.embedding",
    "serving": "echod.embedding",
}

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


def __getattr__(name: str) -> Any:
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module 'echod' has no attribute {name!r}")
    return getattr(importlib.import_module(home), name)
