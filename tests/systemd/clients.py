"""Echo clients run inside the test machine (tests/systemd/probe.py), driven from here."""

from __future__ import annotations

import json
import select
import subprocess
import time
from typing import Any

from tests.systemd.machine import PYTHON, SOURCE, Machine, MachineError

PROBE = f"{SOURCE}/tests/systemd/probe.py"


def echo(machine: Machine, port: int, size: int) -> dict[str, Any]:
    """One connection inside the machine: SIZE bytes out, everything back, compared."""
    result = machine.run(PYTHON, PROBE, "echo", str(port), str(size), check=False, timeout=60)
    if result.returncode != 0:
        raise MachineError(f"probe echo failed: {result.stdout}{result.stderr}")
    answer: dict[str, Any] = json.loads(result.stdout)
    return answer


class Loop:
    """probe.py's loop: clients that keep connecting and echoing while a test acts.

    Use as a context manager: entering waits for its first good echo; :meth:`finish`
    lets it make ``after`` more connections and returns its counts. Leaving without
    finishing ends it (by PID) within a bounded wait.
    """

    def __init__(
        self,
        machine: Machine,
        port: int,
        persistent: int = 4,
        after: int = 200,
        limit: float = 120.0,
    ) -> None:
        argv = [PYTHON, PROBE, "loop", str(port), "--persistent", str(persistent)]
        argv += ["--after", str(after), "--limit", str(limit)]
        self.proc = subprocess.Popen(
            machine.enter(*argv),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.limit = limit

    def __enter__(self) -> Loop:
        assert self.proc.stdout is not None
        ready, _, _ = select.select([self.proc.stdout], [], [], 60.0)
        line = self.proc.stdout.readline() if ready else ""
        if line.strip() != "ready":
            self.close()
            raise MachineError(f"the client loop never echoed: {line!r} {self.stderr()}")
        return self

    def finish(self) -> dict[str, Any]:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write("go on\n")
        self.proc.stdin.flush()
        try:
            out, err = self.proc.communicate(timeout=self.limit + 10)
        except subprocess.TimeoutExpired:
            self.close()
            raise MachineError("the client loop did not finish") from None
        if self.proc.returncode != 0:
            raise MachineError(f"the client loop exited {self.proc.returncode}: {err[-2000:]}")
        counts: dict[str, Any] = json.loads(out.strip().splitlines()[-1])
        return counts

    def stderr(self) -> str:
        self.close()
        assert self.proc.stderr is not None
        return self.proc.stderr.read()[-2000:]

    def close(self) -> None:
        """Stop it within a bounded wait: at EOF on stdin the probe makes ``after``
        more connections and exits. nsenter forks into the PID namespace, so killing
        nsenter's PID would leave the probe running (to its ``--limit``)."""
        if self.proc.poll() is None:
            assert self.proc.stdin is not None
            self.proc.stdin.close()
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)

    def __exit__(self, *exc: object) -> None:
        self.close()


def listening_inodes(machine: Machine, port: int) -> set[str]:
    """The inodes of the TCP sockets listening on ``port`` in the machine: the same ones
    after a restart mean the fd store handed them back, not a fresh bind.

    Read from /proc/net/tcp and tcp6 (the machine's namespace), so no ss is needed."""
    out = machine.run("cat", "/proc/net/tcp", "/proc/net/tcp6").stdout
    inodes = set()
    for line in out.splitlines():
        fields = line.split()
        # local_address is ADDRESS:PORT in hex; state 0A is LISTEN; field 9 the inode.
        if len(fields) > 9 and fields[3] == "0A" and fields[1].endswith(f":{port:04X}"):
            inodes.add(fields[9])
    return inodes


def wait_for(condition: Any, what: str, timeout: float = 60.0) -> Any:
    """Poll ``condition()`` until it returns something true; fail naming ``what``."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.1)
