"""Open-file limits: raise the soft limit as far as the hard one allows, or say why not."""

from __future__ import annotations

import resource


def ensure_open_files(needed: int) -> str | None:
    """Make room for ``needed`` descriptors in this process (workers inherit it).

    Returns None when there is room, otherwise a plain sentence for the user.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY or needed <= soft:
        return None
    if hard != resource.RLIM_INFINITY and needed > hard:
        return (
            f"each worker needs {needed} open files but the hard limit is {hard}: "
            "raise it (ulimit -Hn, LimitNOFILE=) or spread the connections over more --processes"
        )
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (needed, hard))
    except (ValueError, OSError) as exc:
        return f"each worker needs {needed} open files; raising the limit from {soft} failed: {exc}"
    return None
