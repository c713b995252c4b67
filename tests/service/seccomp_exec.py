"""Run a command under a unit's ``SystemCallFilter=``, as systemd would apply it.

systemd cannot start units here (it is not PID 1), so the filter is built the way
systemd builds it: the unit's ``SystemCallFilter=`` lines (an allow-list, then ``~``
lines taken out of it), syscall groups expanded by ``systemd-analyze syscall-filter``,
names mapped to this architecture's numbers by the C library's ``<sys/syscall.h>``
(gcc's preprocessor), every other call answered with the unit's
``SystemCallErrorNumber=`` (and other ABIs refused, as ``SystemCallArchitectures=native``).

``python -m tests.service.seccomp_exec NUMBERS -- COMMAND...`` installs a filter that
allows the comma-separated syscall numbers and execs COMMAND under it.
"""

from __future__ import annotations

import ctypes
import errno
import os
import platform
import re
import struct
import subprocess
import sys
from pathlib import Path

# x86_64 only: the numbers come from the build host's headers, the audit arch is its own.
AUDIT_ARCH = {"x86_64": 0xC000003E}
X32_SYSCALL_BIT = 0x40000000
LD, JEQ, JGE, RET = 0x20, 0x15, 0x35, 0x06
ALLOW = 0x7FFF0000
ERRNO = 0x00050000


def syscall_numbers(gcc: str) -> dict[str, int]:
    """Every syscall this architecture has, by name (``__NR_*`` from the C headers)."""
    defines = subprocess.run(
        [gcc, "-dM", "-E", "-"],
        input="#include <sys/syscall.h>\n",
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return {
        match.group(1): int(match.group(2))
        for match in re.finditer(r"#define __NR_(\w+) (\d+)", defines)
    }


def syscall_groups(systemd_analyze: str) -> dict[str, list[str]]:
    """``@group`` → its members (names and nested groups) as this systemd defines them."""
    listing = subprocess.run(
        [systemd_analyze, "syscall-filter"], capture_output=True, text=True, check=True
    ).stdout
    groups: dict[str, list[str]] = {}
    current: list[str] = []
    for line in listing.splitlines():
        if line.startswith("@"):
            current = groups.setdefault(line.strip(), [])
        elif line.strip() and not line.strip().startswith("#") and line.startswith(" "):
            current.append(line.strip())
    return groups


def expand(names: list[str], groups: dict[str, list[str]]) -> set[str]:
    out: set[str] = set()
    for name in names:
        if name.startswith("@"):
            out |= expand(groups[name], groups)
        else:
            out.add(name)
    return out


def unit_filter(unit: Path, groups: dict[str, list[str]]) -> tuple[set[str], int]:
    """The syscall names a unit allows, and the errno it answers the others with."""
    allowed: set[str] | None = None
    error = errno.EPERM
    for line in unit.read_text().splitlines():
        key, _, value = line.partition("=")
        if key == "SystemCallFilter":
            if value.startswith("~"):
                assert allowed is not None, "a deny-list before any allow-list"
                allowed -= expand(value[1:].split(), groups)
            else:
                allowed = (allowed or set()) | expand(value.split(), groups)
        elif key == "SystemCallErrorNumber":
            error = getattr(errno, value)
    assert allowed is not None, f"{unit} has no SystemCallFilter="
    return allowed, error


def install(allowed: list[int], error: int) -> None:
    arch = AUDIT_ARCH[platform.machine()]
    deny = (RET, 0, 0, ERRNO | error)
    program = [
        (LD, 0, 0, 4),
        (JEQ, 1, 0, arch),
        deny,  # another ABI
        (LD, 0, 0, 0),
        (JGE, 0, 1, X32_SYSCALL_BIT),
        deny,  # x32 calls on x86_64
    ]
    for number in allowed:
        program += [(JEQ, 0, 1, number), (RET, 0, 0, ALLOW)]
    program.append(deny)
    filters = ctypes.create_string_buffer(b"".join(struct.pack("HBBI", *i) for i in program))
    fprog = struct.pack("HxxxxxxP", len(program), ctypes.addressof(filters))
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(38, 1, 0, 0, 0) != 0:  # PR_SET_NO_NEW_PRIVS
        raise OSError(ctypes.get_errno(), "PR_SET_NO_NEW_PRIVS")
    if libc.prctl(22, 2, ctypes.c_char_p(fprog), 0, 0) != 0:  # PR_SET_SECCOMP, FILTER
        raise OSError(ctypes.get_errno(), "PR_SET_SECCOMP")


def main(argv: list[str]) -> None:
    numbers, error, separator, *command = argv
    assert separator == "--", "usage: NUMBERS ERRNO -- COMMAND..."
    install([int(n) for n in numbers.split(",")], int(error))
    os.execv(command[0], command)


if __name__ == "__main__":
    main(sys.argv[1:])
