"""OS glue for running echod as a service: systemd readiness and watchdog
(`notify`), process limits and privileges (`limits`), the supervisor (`arbiter`)
and one serving process (`worker_process`). Sockets inherited by socket activation
are listeners, so they are read in :mod:`echod.net.activation`.

Everything here is stdlib only and a no-op outside systemd, so the same
binary runs from a shell, a container or a unit file.
"""

from __future__ import annotations


class ServiceError(ValueError):
    """The service environment is unusable (bad inherited fds, unknown user).

    The CLI prints ``str(error)`` as one line and exits non-zero; the message
    names the variable or the option at fault.
    """
