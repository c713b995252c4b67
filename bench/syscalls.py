"""System calls and interpreter instructions per echoed message, one server at a time.

``python -m bench.syscalls`` runs each server under ``strace -f -c`` (or, with
``--callgrind``, under valgrind's callgrind) while echod-bench drives it, then divides
by the messages the server echoed. Neither tool may share a run with the CPU figures:
both slow the server many times over, which also changes how many completions or
events one wait returns. So the figures here come from separate runs, and are
counts, not times.

* Messages: echod's own tally (its ``stopped:`` line, bytes out / size), echo-uring's
  exit line, and c-epoll's ``sendto`` calls (one per message at these sizes).
* System calls per message: those of the data path (receive, send, wait, and
  ``io_uring_enter``, which ``/proc`` does not count), over the server's whole life;
  connection set-up and start-up calls are left out by name and reported apart.
* Instructions per message (callgrind, the Python backends): a long run's total less a
  short run's, over the messages the long one echoed beyond the short one.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

from bench.servers import REFERENCE_BINARY, URING_BINARY, build_reference, build_uring_reference

DATA_PATH = {
    "recvfrom", "recvmsg", "sendto", "sendmsg", "read", "write", "readv", "writev",
    "epoll_wait", "epoll_pwait", "epoll_pwait2", "poll", "ppoll", "io_uring_enter",
}  # fmt: skip
WARMUP = 0.5
# The short callgrind run whose instructions are taken off the long one's.
SHORT_SECONDS = 1.5
LISTENING = re.compile(r"listening on (?:proxy-v[12]:)?(?:tls:)?\[?([0-9a-fA-F.:]+?)\]?:(\d+)")
STOPPED = re.compile(r"stopped: .*bytes in=(\d+) out=(\d+)")
URING_ECHOED = re.compile(r"echoed (\d+) bytes")


def server_argv(name: str) -> list[str]:
    if name == "c-epoll":
        return [str(REFERENCE_BINARY), "127.0.0.1", "0"]
    if name == "c-uring":
        return [str(URING_BINARY), "127.0.0.1", "0"]
    return [sys.executable, "-m", "echod", "--backend", name, "--host", "127.0.0.1", "--port", "0"]


def pinned(cpu: int) -> Callable[[], None]:
    return lambda: os.sched_setaffinity(0, {cpu})


def wait_port(log: Path, proc: subprocess.Popen[bytes], timeout: float = 120.0) -> int:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = LISTENING.search(log.read_text(errors="replace"))
        if found:
            return int(found.group(2))
        if proc.poll() is not None:
            break
        time.sleep(0.05)
    raise RuntimeError(f"server never listened: {log.read_text()[-800:]}")


def traced_pid(wrapper_pid: int) -> int:
    """The server under strace or valgrind: the wrapper's child, or itself (valgrind)."""
    children = Path(f"/proc/{wrapper_pid}/task/{wrapper_pid}/children").read_text().split()
    return int(children[0]) if children else wrapper_pid


def drive(port: int, size: int, connections: int, seconds: float) -> dict[str, object]:
    with tempfile.TemporaryDirectory() as scratch:
        out = Path(scratch) / "figures.json"
        argv = [
            sys.executable, "-m", "loadtest", "--port", str(port), "--size", str(size),
            "--connections", str(connections), "--duration", str(seconds), "--warmup", str(WARMUP),
            "--connect-timeout", "60", "--json", str(out), "--no-progress",
        ]  # fmt: skip
        if connections > 100:
            argv += ["--active", "100"]
        subprocess.run(argv, capture_output=True, preexec_fn=pinned(1), timeout=600)
        return json.loads(out.read_text()) if out.exists() else {}


def run_one(
    tool: list[str], name: str, size: int, connections: int, seconds: float, stop_early: bool
) -> dict[str, object]:
    """One server under ``tool`` driven for ``seconds``, then SIGTERM.

    ``stop_early`` sends SIGTERM half a second before the load ends: valgrind holds a
    signal while the server waits in io_uring_enter with no timeout, so an idle uring
    server under it never stops; under load its waits return, and the drain lets the
    clients finish.
    """
    with tempfile.TemporaryDirectory() as scratch:
        log = Path(scratch) / "server.log"
        with log.open("wb") as sink:
            proc = subprocess.Popen(
                [*tool, *server_argv(name)],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=sink,
                preexec_fn=pinned(0),
            )
        port = wait_port(log, proc)
        stopper = None
        if stop_early:
            stopper = threading.Timer(
                WARMUP + seconds - 0.5, os.kill, (traced_pid(proc.pid), signal.SIGTERM)
            )
            stopper.start()
        figures = drive(port, size, connections, seconds)
        if stopper is not None:
            stopper.join()
        else:
            os.kill(traced_pid(proc.pid), signal.SIGTERM)
        proc.wait(600)
        text = log.read_text(errors="replace")
        return {"log": text, "figures": figures}


def strace_counts(text: str) -> dict[str, int]:
    counts: dict[str, int] = {}
    for line in text.splitlines():
        parts = line.split()
        if len(parts) >= 5 and parts[-1].isidentifier() and parts[3].isdigit():
            counts[parts[-1]] = int(parts[3])
    return counts


def messages(name: str, size: int, log: str, counts: dict[str, int]) -> int:
    if name == "c-epoll":
        return counts.get("sendto", 0)
    if name == "c-uring":
        found = URING_ECHOED.search(log)
        return int(found.group(1)) // size if found else 0
    stopped = STOPPED.findall(log)
    return int(stopped[-1][1]) // size if stopped else 0


def syscalls(name: str, size: int, connections: int, seconds: float) -> dict[str, object]:
    with tempfile.NamedTemporaryFile(suffix=".strace") as out:
        tool = ["strace", "-f", "-c", "-o", out.name, "--"]
        result = run_one(tool, name, size, connections, seconds, stop_early=False)
        counts = strace_counts(Path(out.name).read_text())
    count = messages(name, size, str(result["log"]), counts)
    data = sum(n for call, n in counts.items() if call in DATA_PATH)
    other = sum(n for call, n in counts.items() if call not in DATA_PATH and call != "total")
    return {
        "server": name, "size": size, "connections": connections, "messages": count,
        "data_path_per_msg": round(data / count, 3) if count else None,
        "by_call_per_msg": {c: round(n / count, 3) for c, n in counts.items() if c in DATA_PATH and count},
        "other_calls": other,
    }  # fmt: skip


def instructions(name: str, size: int, connections: int, seconds: float) -> dict[str, object]:
    """The difference of a long run and a short one over the messages between them, so
    start-up, connecting and stopping cancel out."""

    def total(run_seconds: float) -> tuple[int, int]:
        with tempfile.TemporaryDirectory() as scratch:
            out = Path(scratch) / "callgrind.out"
            tool = ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}"]
            result = run_one(tool, name, size, connections, run_seconds, stop_early=True)
            found = re.search(r"^summary: (\d+)", out.read_text(), re.M)
            assert found, "no callgrind summary"
            return int(found.group(1)), messages(name, size, str(result["log"]), {})

    short_ir, short_count = total(SHORT_SECONDS)
    ir, count = total(seconds)
    more = count - short_count
    return {
        "server": name, "size": size, "connections": connections, "messages": more,
        "instructions_per_msg": round((ir - short_ir) / more) if more > 0 else None,
    }  # fmt: skip


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.syscalls", description=__doc__)
    parser.add_argument("--servers", default="epoll,uring,c-epoll,c-uring")
    parser.add_argument("--sizes", default="64,1024")
    parser.add_argument("--connections", default="100,10000")
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--callgrind", action="store_true", help="instructions, not syscalls")
    args = parser.parse_args()
    for problem in (build_reference(), build_uring_reference()):
        if problem:
            print(f"bench.syscalls: {problem}", file=sys.stderr)
    measure = instructions if args.callgrind else syscalls
    for connections in map(int, args.connections.split(",")):
        for size in map(int, args.sizes.split(",")):
            for name in args.servers.split(","):
                print(json.dumps(measure(name, size, connections, args.seconds)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
