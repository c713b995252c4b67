"""Process limits and privileges set once at start-up."""

from __future__ import annotations

import grp
import logging
import os
import pwd
import resource
import sys

from echod.service import ServiceError

log = logging.getLogger(__name__)

# The ceiling for a soft limit when the hard one is RLIM_INFINITY: Linux caps
# RLIMIT_NOFILE at fs.nr_open, macOS at OPEN_MAX.
_NR_OPEN = "/proc/sys/fs/nr_open"
_LINUX_NR_OPEN_DEFAULT = 1 << 20
_MACOS_OPEN_MAX = 10240


class PrivilegeError(ServiceError):
    """``--user``/``--group`` cannot be honoured."""


def raise_nofile_limit(wanted: int | None = None) -> tuple[int, int]:
    """Raise the soft RLIMIT_NOFILE as far as the hard limit; return (soft, hard).

    Every connection is an fd, and the common soft default of 1024 is far
    below what a busy echo server holds. `wanted` is the number of fds the
    configuration implies (connections plus listeners plus slack); a warning
    is logged when the limit stays below it. A refusal (EPERM from a seccomp
    filter such as systemd's ``SystemCallFilter=~@resources`` with
    ``SystemCallErrorNumber=EPERM``) is logged, not raised: the unit's
    ``LimitNOFILE=`` has set the limit already.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = hard if hard != resource.RLIM_INFINITY else _infinite_hard_ceiling()
    if soft != resource.RLIM_INFINITY and soft < target:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        except (OSError, ValueError) as exc:  # CPython raises ValueError for EPERM
            log.info("cannot raise the open-file limit from %d to %d: %s", soft, target, exc)
        else:
            soft = target
    if wanted is not None and soft != resource.RLIM_INFINITY and soft < wanted:
        log.warning(
            "open-file limit is %d but the configuration needs about %d; "
            "connections beyond it will fail with EMFILE (raise LimitNOFILE= or ulimit -n)",
            soft,
            wanted,
        )
    return soft, hard


def _infinite_hard_ceiling() -> int:
    if sys.platform == "darwin":
        return _MACOS_OPEN_MAX
    try:
        with open(_NR_OPEN) as f:
            return int(f.read())
    except (OSError, ValueError):
        # ProcSubset=pid hides /proc/sys; the kernel default is a fair guess.
        return _LINUX_NR_OPEN_DEFAULT


def _identity(user: str, group: str | None) -> tuple[int, int]:
    """The uid and gid ``--user``/``--group`` name; PrivilegeError for unknown ones."""
    try:
        entry = pwd.getpwuid(int(user)) if user.isdigit() else pwd.getpwnam(user)
    except KeyError:
        raise PrivilegeError(f"--user {user}: no such user") from None
    gid = entry.pw_gid
    if group is not None:
        try:
            gid = grp.getgrgid(int(group)).gr_gid if group.isdigit() else grp.getgrnam(group).gr_gid
        except KeyError:
            raise PrivilegeError(f"--group {group}: no such group") from None
    return entry.pw_uid, gid


def check_identity(user: str, group: str | None = None) -> None:
    """What :func:`drop_privileges` would refuse, found before any worker is forked."""
    uid, gid = _identity(user, group)
    if os.geteuid() != 0 and (os.geteuid(), os.getegid()) != (uid, gid):
        raise PrivilegeError(
            f"--user {user}: only root can switch users (running as uid {os.geteuid()})"
        )


def drop_privileges(user: str, group: str | None = None) -> None:
    """Become `user` (name or uid) and `group` (default: the user's own group).

    The one place echod gives up root: call it once the serving process's listeners
    are all bound (port 7 needs root). A second call as that user is a no-op, so a
    worker forked from a supervisor that dropped already may call it too.
    Supplementary groups are cleared first (setgroups needs root), then the gid, then
    the uid, the only order in which each step is still allowed. Raises
    PrivilegeError when the user or group is unknown, we are not root, or the kernel
    refuses (EPERM from a seccomp filter such as ``SystemCallFilter=~@privileged``);
    under systemd prefer ``User=``/``DynamicUser=`` to this.
    """
    uid, gid = _identity(user, group)
    if os.geteuid() != 0:
        check_identity(user, group)
        return  # already this user
    try:
        os.setgroups([])
        os.setgid(gid)
        os.setuid(uid)
    except OSError as exc:
        raise PrivilegeError(f"--user {user}: cannot switch user: {exc.strerror}") from None
    if uid != 0:
        try:
            os.setuid(0)
        except PermissionError:
            pass
        else:
            raise PrivilegeError(f"--user {user}: could regain root after setuid({uid})")
    log.info("running as user %s", user)
