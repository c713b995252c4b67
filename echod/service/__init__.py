"""OS glue for running echod as a service: systemd readiness and watchdog
(`notify`), socket activation (`activation`), and process limits and
privileges (`limits`).

Everything here is stdlib only and a no-op outside systemd, so the same
binary runs from a shell, a container or a unit file.
"""

from __future__ import annotations


class ServiceError(ValueError):
    """The service environment is unusable (bad inherited fds, unknown user).

    The CLI prints ``str(error)`` as one line and exits non-zero; the message
    names the variable or the option at fault.
    """
