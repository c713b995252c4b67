"""RLIMIT_NOFILE at start-up, and --user."""

from __future__ import annotations

import json
import platform
import subprocess
import sys
import textwrap

import pytest

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="Linux process limits")

# Each case runs in its own interpreter: limits and uids are per process.
PRELUDE = textwrap.dedent(
    """
    import json, logging, resource, sys
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    from echod.service.limits import PrivilegeError, drop_privileges, raise_nofile_limit
    """
)

# A seccomp filter that refuses to set any rlimit with EPERM, as systemd's
# SystemCallFilter=~@resources with SystemCallErrorNumber=EPERM refuses
# setrlimit(2). glibc sets limits with prlimit64(2), so that is the call
# refused here, when its new-limit argument (args[2]) is not NULL.
SECCOMP_DENY_SET_RLIMIT = textwrap.dedent(
    """
    import ctypes, errno, struct
    ARCH, PRLIMIT64 = {"x86_64": (0xC000003E, 302), "aarch64": (0xC00000B7, 261)}[MACHINE]
    LD, JEQ, RET = 0x20, 0x15, 0x06
    ALLOW, DENY = 0x7FFF0000, 0x00050000 | errno.EPERM
    program = [
        (LD, 0, 0, 4), (JEQ, 0, 7, ARCH),        # other ABI: allow
        (LD, 0, 0, 0), (JEQ, 0, 5, PRLIMIT64),   # other call: allow
        (LD, 0, 0, 32), (JEQ, 0, 2, 0),          # new limit low word
        (LD, 0, 0, 36), (JEQ, 1, 0, 0),          # new limit high word
        (RET, 0, 0, DENY), (RET, 0, 0, ALLOW),
    ]
    filters = ctypes.create_string_buffer(b"".join(struct.pack("HBBI", *i) for i in program))
    fprog = struct.pack("HxxxxxxP", len(program), ctypes.addressof(filters))
    libc = ctypes.CDLL(None, use_errno=True)
    assert libc.prctl(38, 1, 0, 0, 0) == 0  # PR_SET_NO_NEW_PRIVS
    assert libc.prctl(22, 2, ctypes.c_char_p(fprog), 0, 0) == 0, ctypes.get_errno()
    """
)


def run(script: str) -> tuple[dict[str, object], str]:
    result = subprocess.run(
        [sys.executable, "-c", PRELUDE + textwrap.dedent(script)],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 0, result.stderr
    report: dict[str, object] = json.loads(result.stdout)
    return report, result.stderr


def test_soft_limit_is_raised_to_the_hard_limit() -> None:
    report, stderr = run(
        """
        resource.setrlimit(resource.RLIMIT_NOFILE, (256, 4096))
        returned = raise_nofile_limit(wanted=1000)
        print(json.dumps({"returned": returned, "now": resource.getrlimit(resource.RLIMIT_NOFILE)}))
        """
    )
    assert report == {"returned": [4096, 4096], "now": [4096, 4096]}
    assert "WARNING" not in stderr


def test_a_hard_limit_below_what_is_wanted_is_warned_about() -> None:
    report, stderr = run(
        """
        resource.setrlimit(resource.RLIMIT_NOFILE, (256, 512))
        print(json.dumps({"returned": raise_nofile_limit(wanted=10000)}))
        """
    )
    assert report == {"returned": [512, 512]}
    assert "WARNING open-file limit is 512 but the configuration needs about 10000" in stderr


def test_a_refused_setrlimit_is_survived() -> None:
    machine = platform.machine()
    if machine not in ("x86_64", "aarch64"):
        pytest.skip(f"seccomp test filter written for x86_64 and aarch64, not {machine}")
    setup = f"""
        MACHINE = {machine!r}
        resource.setrlimit(resource.RLIMIT_NOFILE, (256, 4096))
        """
    check = """
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (300, 4096))
            filtered = False
        except ValueError:  # CPython's resource module reports EPERM so
            filtered = True
        returned = raise_nofile_limit(wanted=1000)
        print(json.dumps({"filtered": filtered, "returned": returned}))
        """
    report, stderr = run(textwrap.dedent(setup) + SECCOMP_DENY_SET_RLIMIT + textwrap.dedent(check))
    assert report == {"filtered": True, "returned": [256, 4096]}
    assert "cannot raise the open-file limit from 256 to 4096" in stderr
    assert "WARNING open-file limit is 256 but the configuration needs about 1000" in stderr


root_only = pytest.mark.usefixtures("as_root")  # switching users needs root


@root_only
def test_drop_privileges_becomes_the_user_for_good() -> None:
    report, _ = run(
        """
        import os, pwd
        drop_privileges("nobody")
        try:
            os.setuid(0)
            regained = True
        except PermissionError:
            regained = False
        nobody = pwd.getpwnam("nobody")
        print(json.dumps({
            "ids": [os.getuid(), os.geteuid(), os.getgid(), os.getegid()],
            "expected": [nobody.pw_uid] * 2 + [nobody.pw_gid] * 2,
            "groups": os.getgroups(),
            "regained": regained,
        }))
        """
    )
    assert report["ids"] == report["expected"]
    assert report["groups"] == []
    assert report["regained"] is False


@root_only
def test_drop_privileges_takes_an_explicit_group() -> None:
    report, _ = run(
        """
        import grp, os
        drop_privileges("nobody", "nogroup")
        print(json.dumps({"gid": os.getgid(), "expected": grp.getgrnam("nogroup").gr_gid}))
        """
    )
    assert report["gid"] == report["expected"]


@pytest.mark.parametrize(
    ("call", "message"),
    [
        ('drop_privileges("no-such-user-echod")', "--user no-such-user-echod: no such user"),
        (
            'drop_privileges("nobody", "no-such-group-echod")',
            "--group no-such-group-echod: no such group",
        ),
    ],
)
def test_unknown_names_are_one_clear_error(call: str, message: str) -> None:
    report, _ = run(
        f"""
        try:
            {call}
        except PrivilegeError as exc:
            print(json.dumps({{"error": str(exc)}}))
        """
    )
    assert report == {"error": message}


@root_only
def test_only_root_can_switch_users() -> None:
    report, _ = run(
        """
        import os
        os.setgid(65534)
        os.setuid(65534)
        try:
            drop_privileges("root")
        except PrivilegeError as exc:
            print(json.dumps({"error": str(exc)}))
        """
    )
    assert report == {"error": "--user root: only root can switch users (running as uid 65534)"}
