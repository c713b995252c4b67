"""A throwaway machine with systemd as PID 1: the host's own root booted by systemd-nspawn.

``--volatile=yes`` puts a tmpfs at ``/`` with the host's ``/usr`` read-only under it,
so ``/etc``, ``/opt`` and ``/var`` start empty and vanish with the container: the
units, ``/etc/echod/echod.toml`` and the venv are installed into that tmpfs, where a
test may also rewrite them. ``--private-network`` gives it a loopback of its own, so
port 7 there is nobody else's. Everything inside is reached with ``nsenter`` into the
container's PID 1 (the "leader"), as root.

The venv is built the way ``systemd/install.sh`` builds one (``python3 -m venv``, then
pip), from a wheel of this checkout: the test's own venv cannot be bound in, since its
editable install and interpreter live at host paths (often under ``/root`` or
``/tmp``) that the units' ``ProtectHome=`` and ``PrivateTmp=`` hide from the service.
"""

from __future__ import annotations

import contextlib
import os
import shlex
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

from tests.support import ROOT, missing, require_tool

# Where the repository and the wheel appear inside the machine (read-only binds).
SOURCE = "/opt/echod/src"
WHEELS = "/opt/echod/wheel"
VENV = "/opt/echod/venv"
# The guest's interpreter: the host's /usr, which the units' venv is built from.
PYTHON = "/usr/bin/python3"
# A target with journald, sysinit and sockets.target but no getty, cron or sshd:
# nothing the tests do not ask for runs in there.
BOOT_TARGET = "basic.target"
BOOT_TIMEOUT = 60.0
STOP_TIMEOUT = 20.0


class MachineError(AssertionError):
    """The container did not boot, or a command in it failed."""


def build_wheel(into: Path) -> Path:
    """A wheel of this checkout, built offline (the test venv's setuptools) from a copy
    of the tracked files, so the build leaves nothing in the tree."""
    tree = into / "tree"
    listed = subprocess.run(
        ["git", "ls-files", "-co", "--exclude-standard"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout
    for name in filter(None, listed.split("\n")):
        if (ROOT / name).is_file():
            (tree / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, tree / name)
    out = into / "wheel"
    pip = [sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation"]
    result = subprocess.run(
        [*pip, "--wheel-dir", str(out), str(tree)], capture_output=True, text=True, timeout=300
    )
    wheels = sorted(out.glob("echod-*.whl"))
    if result.returncode != 0 or not wheels:
        raise MachineError(f"pip wheel failed: {result.stderr[-2000:]}")
    return wheels[-1]


class Machine:
    """One booted container; :meth:`run` executes a command inside it.

    The nspawn process is this test run's child; :meth:`stop` ends it by its PID
    (SIGTERM: nspawn powers the container off) and, should that hang, kills it and
    the container's PID 1, which takes every process of its PID namespace along.
    """

    def __init__(self, nspawn: subprocess.Popen[bytes], log: Path) -> None:
        self.nspawn = nspawn
        self.log = log
        self.leader = 0
        self.boot_seconds = 0.0

    @classmethod
    def boot(
        cls, binds: Sequence[tuple[Path, str]], log: Path, target: str = BOOT_TARGET
    ) -> Machine:
        nspawn = require_tool("systemd-nspawn")
        require_tool("nsenter")
        if os.geteuid() != 0:
            missing("systemd-nspawn needs root")
        command = [
            nspawn,
            "--directory=/",
            "--volatile=yes",
            "--private-network",
            "--register=no",
            "--keep-unit",
            f"--machine=echod-test-{os.getpid()}",
            *(f"--bind-ro={host}:{guest}" for host, guest in binds),
            "--boot",
            f"systemd.unit={target}",
            # A volatile /etc is a first boot; the wizard would wait on the console.
            "systemd.firstboot=no",
        ]
        started = time.monotonic()
        with log.open("wb") as out:
            proc = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=out, stderr=out)
        machine = cls(proc, log)
        try:
            machine._wait_for_systemd(started + BOOT_TIMEOUT)
        except BaseException:
            machine.stop()
            raise
        machine.boot_seconds = time.monotonic() - started
        return machine

    def _wait_for_systemd(self, deadline: float) -> None:
        """Until the guest's PID 1 is systemd and its boot job has finished."""
        children = Path(f"/proc/{self.nspawn.pid}/task/{self.nspawn.pid}/children")
        while time.monotonic() < deadline:
            if self.nspawn.poll() is not None:
                raise MachineError(
                    f"systemd-nspawn exited {self.nspawn.returncode}:\n{self.console}"
                )
            with contextlib.suppress(OSError, ValueError, IndexError):
                leader = int(children.read_text().split()[0])
                # Until its exec the leader is still a copy of nspawn.
                if Path(f"/proc/{leader}/comm").read_text().strip() == "systemd":
                    self.leader = leader
                    left = max(1.0, deadline - time.monotonic())
                    state = self.run(
                        "systemctl", "is-system-running", "--wait", check=False, timeout=left
                    ).stdout.strip()
                    if state in ("running", "degraded"):
                        return
                    if state not in ("", "offline", "initializing", "starting"):
                        raise MachineError(f"boot ended {state!r}:\n{self.console}")
            time.sleep(0.05)
        raise MachineError(f"systemd did not come up in {BOOT_TIMEOUT}s:\n{self.console}")

    @property
    def console(self) -> str:
        return self.log.read_text(errors="replace")[-4000:]

    def enter(self, *argv: str) -> list[str]:
        """The host command that runs ``argv`` inside the machine, as its root."""
        if not self.leader:
            raise MachineError("the machine is not up")
        return ["nsenter", f"--target={self.leader}", "--all", *argv]

    def run(
        self, *argv: str, check: bool = True, timeout: float = 60.0, input: str | None = None
    ) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(
            self.enter(*argv), capture_output=True, text=True, timeout=timeout, input=input
        )
        if check and result.returncode != 0:
            raise MachineError(
                f"{shlex.join(argv)} exited {result.returncode}:\n{result.stdout}{result.stderr}"
            )
        return result

    def sh(
        self, script: str, check: bool = True, timeout: float = 60.0
    ) -> subprocess.CompletedProcess[str]:
        return self.run("/bin/sh", "-ec", script, check=check, timeout=timeout)

    def write(self, path: str, text: str) -> None:
        self.run("/bin/sh", "-ec", f'mkdir -p "$(dirname {path})"; cat > {path}', input=text)

    def show(self, unit: str, *properties: str) -> dict[str, str]:
        """``systemctl show`` properties of a unit."""
        out = self.run("systemctl", "show", unit, *(f"--property={p}" for p in properties)).stdout
        return dict(line.split("=", 1) for line in out.splitlines() if "=" in line)

    def journal(self, unit: str) -> str:
        return self.run(
            "journalctl", "--no-pager", "--output=cat", f"--unit={unit}", check=False
        ).stdout

    def stop(self) -> None:
        """Power the container off; bounded, and by PID only."""
        if self.nspawn.poll() is None:
            self.nspawn.send_signal(signal.SIGTERM)
            try:
                self.nspawn.wait(STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                self.nspawn.kill()
                self.nspawn.wait(STOP_TIMEOUT)
                # The guest's PID 1 outlives a killed nspawn (it is reparented);
                # killing it ends its whole PID namespace. Only here: once nspawn
                # has exited by itself, that PID may already be someone else's.
                if self.leader:
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(self.leader, signal.SIGKILL)
        self.leader = 0


@contextlib.contextmanager
def booted(binds: Sequence[tuple[Path, str]], log: Path) -> Iterator[Machine]:
    machine = Machine.boot(binds, log)
    try:
        yield machine
    finally:
        machine.stop()
