"""The bench runner: every server through every cell, interleaved over rounds.

Each cell gets a fresh server (so RSS per connection is measured from a clean
start), pinned to CPU 0 while the generator runs pinned to the other CPUs.
Servers take turns cell by cell, and their order rotates every round, so a slow
drift of the machine spreads over all of them instead of landing on one.
The workers cell is the exception: its servers and the generator run unpinned.
In the cells marked ``c_client`` the minimal C client drives each server right after
echod-bench does, pinned the same way: the pair is what the generator ceiling and
each row's echod-bench / C client are computed from.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import re
import resource
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from bench import certs, report
from bench.generators import (
    GENERATORS,
    c_client_argv,
    c_client_counts,
    c_client_figures,
    echod_bench_argv,
    server_figures,
)
from bench.matrix import FULL, FULL_TIMING, OPT_IN, QUICK, QUICK_TIMING, Cell, Timing
from bench.query import C_CLIENT, ECHOD_BENCH, skipped
from bench.servers import (
    REFERENCE,
    REFERENCES,
    TLS_REFERENCE,
    RunningServer,
    ServerFailed,
    ServerSpec,
    build_client,
    build_hs_client,
    build_reference,
    build_tls_reference,
    build_uring_reference,
    echod_backends,
    pin,
    proxy_argv,
    specs,
    tls_argv,
    worker_specs,
)
from loadtest.monitor import NoSuchServer, TreeSampler

RESULTS = Path(__file__).resolve().parent / "results"
# Other load this machine is known to run (the robustness suite, test runs): a bench
# cell that overlaps it measures both, so the runner notes it (see ``foreign_load``).
FOREIGN_LOAD = re.compile(r"tests[./]robust|pytest")


def foreign_load() -> set[str]:
    """Command lines of other processes generating load now (a cheap /proc scan).

    ``pgrep`` lines are someone waiting for quiet, not load.
    """
    mine = {os.getpid(), os.getppid()}
    found = set()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) in mine:
            continue
        try:
            argv = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if FOREIGN_LOAD.search(argv) and "pgrep" not in argv:
            found.add(argv.strip()[:120])
    return found


# A virtual machine's CPU taken by the hypervisor for others ("steal" in /proc/stat):
# under load this machine shows about 2%; a run that lost more measured its neighbours.
STEAL_BAR = 0.05


def steal_ticks() -> dict[str, int]:
    """Each CPU's stolen time so far, in clock ticks (/proc/stat's eighth field)."""
    try:
        lines = Path("/proc/stat").read_text().splitlines()
    except OSError:
        return {}
    fields = (line.split() for line in lines if line.startswith("cpu") and line[3:4].isdigit())
    return {f[0]: int(f[8]) for f in fields if len(f) > 8}


def stolen(before: dict[str, int], after: dict[str, int], elapsed: float) -> set[str]:
    """The CPUs that lost more than ``STEAL_BAR`` of ``elapsed`` to the hypervisor."""
    ticks = os.sysconf("SC_CLK_TCK") * elapsed
    if ticks <= 0:
        return set()
    shares = {cpu: (now - before.get(cpu, now)) / ticks for cpu, now in after.items()}
    return {f"hypervisor steal {v:.0%} on {cpu}" for cpu, v in shares.items() if v > STEAL_BAR}


class LoadWatch:
    """Samples ``foreign_load`` twice a second while a cell runs, and reads the CPUs'
    stolen time at both ends."""

    def __init__(self, interval: float = 0.5) -> None:
        self.seen: set[str] = set()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, args=(interval,), daemon=True)
        self._steal: dict[str, int] = {}
        self._started = 0.0

    def __enter__(self) -> LoadWatch:
        self.seen |= foreign_load()
        self._steal, self._started = steal_ticks(), time.monotonic()
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join()
        self.seen |= foreign_load()
        self.seen |= stolen(self._steal, steal_ticks(), time.monotonic() - self._started)

    def _loop(self, interval: float) -> None:
        while not self._stop.wait(interval):
            self.seen |= foreign_load()


def raise_open_files(cells: list[Cell]) -> str | None:
    """Descriptors for the largest cell in the server and in the generator (both inherit).

    Past the hard limit only ``prlimit`` (with CAP_SYS_RESOURCE) helps; returns a note
    when it cannot, and ``obstacle`` then reports the cells that need more.
    """
    needed = max((per_process(c) for c in cells), default=0) + 1024
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < needed:
        proc = subprocess.run(
            ["prlimit", f"--pid={os.getpid()}", f"--nofile={needed}:{needed}"],
            capture_output=True,
            text=True,
        )
        if proc.returncode != 0:
            return f"prlimit --nofile={needed} failed: {proc.stderr.strip()}"
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return None


def kernel_thread_limit() -> int | None:
    """The fewer of kernel.pid_max and kernel.threads-max: each thread takes a pid."""
    limits = []
    for knob in ("pid_max", "threads-max"):
        try:
            limits.append(int(Path(f"/proc/sys/kernel/{knob}").read_text()))
        except (OSError, ValueError):
            continue
    return min(limits) if limits else None


def per_process(cell: Cell) -> int:
    """Connections one process (a worker, a generator process) holds in ``cell``."""
    return -(-cell.connections // max(cell.spread, 1))


def spread_over_workers(spec: ServerSpec, cell: Cell) -> ServerSpec:
    """The server as a spread cell runs it: ``--workers`` in reuseport mode."""
    if not cell.spread or spec.backend not in cell.spread_backends:
        return spec
    argv = (*spec.argv, "--workers", str(cell.spread), "--listen-mode", "reuseport")
    return dataclasses.replace(spec, argv=argv, workers=cell.spread)


def takes_part(spec: ServerSpec, cell: Cell) -> bool:
    """Whether a server belongs in a cell at all: the plaintext C servers have no place in
    a TLS or PROXY cell, nor the C TLS server in a plaintext one."""
    if spec.name == TLS_REFERENCE:
        return bool(cell.tls)
    return spec.name not in REFERENCES or not cell.family


def for_cell(spec: ServerSpec, cell: Cell, made: dict[str, certs.Certificate]) -> ServerSpec:
    """The server as a TLS or PROXY cell runs it: its listener, certificate and trust."""
    if cell.tls:
        found = made[cell.tls]
        return dataclasses.replace(spec, argv=tls_argv(spec, found.cert, found.key))
    if cell.proxy:
        return dataclasses.replace(spec, argv=proxy_argv(spec, cell.proxy))
    return spec


def obstacle(spec: ServerSpec, cell: Cell, threads: int | None = None) -> str | None:
    """Why a server cannot hold a cell's connections on this machine, or does not run the
    cell, said up front.

    Trying would only measure refused connections (select) or failed thread starts.
    ``threads`` is the kernel's thread limit (:func:`kernel_thread_limit` if not given).
    """
    if cell.tls and spec.backend == "uring":
        return "not run: the uring backend refuses tls: listeners (TLS on the ring is out of issue 19's scope)"
    if cell.only and spec.name not in cell.only:
        return (
            f"not run: the {cell.family or cell.name} cell runs on {', '.join(cell.only)} "
            "only, to keep `make bench` under an hour"
        )
    # 16: the server's own descriptors (stdio, listener, wakeup pipe, log).
    if spec.backend == "select" and cell.connections > 1024 - 16:
        return f"not run: select() watches descriptors below FD_SETSIZE (1024), not {cell.connections:,}"
    if spec.backend == "threads":
        limit = threads if threads is not None else kernel_thread_limit()
        if limit is not None and cell.connections > limit - 1024:
            return f"not run: one thread per connection, and kernel.pid_max/threads-max allow {limit:,}"
    # A C reference is one process: it meets the hard limit below.
    if cell.spread and spec.backend and spec.backend not in cell.spread_backends:
        if spec.backend == "poll":
            return (
                "not run: poll(2) hands the kernel every descriptor on every wait "
                f"(see the growth to 10,000); {cell.connections:,} run on "
                + ", ".join(cell.spread_backends)
            )
        if spec.backend != "select":
            return (
                f"not run: {cell.connections:,} connections are spread over {cell.spread} "
                f"workers for {', '.join(cell.spread_backends)} only"
            )
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    held = per_process(cell) if spec.workers == cell.spread > 1 else cell.connections
    if hard != resource.RLIM_INFINITY and held + 64 > hard:
        return f"not run: {held:,} connections in one process need more open files than the hard limit {hard:,} (see the prlimit note)"
    return None


def split_cpus() -> tuple[set[int] | None, set[int] | None, str]:
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) < 2:
        return None, None, f"only {len(cpus)} CPU: server and generator share it, figures are rough"
    return (
        {cpus[0]},
        set(cpus[1:]),
        f"server pinned to CPU {cpus[0]}, generator to CPU {','.join(map(str, cpus[1:]))}",
    )


def run_cell(
    spec: ServerSpec,
    cell: Cell,
    timing: Timing,
    server_cpus: set[int] | None,
    generator_cpus: set[int] | None,
    generator: str = ECHOD_BENCH,
) -> dict[str, Any]:
    """One server, one cell, one generator: start, measure, stop."""
    spec = spread_over_workers(spec, cell)
    reason = obstacle(spec, cell)
    if reason:
        return {**record_header(spec, cell, generator), "error": reason}
    with LoadWatch() as watch:
        record = measure(spec, cell, timing, server_cpus, generator_cpus, generator)
    if watch.seen:
        record["contended"] = sorted(watch.seen)
    return record


def record_header(spec: ServerSpec, cell: Cell, generator: str) -> dict[str, Any]:
    """What every run record starts with, run or not: the server, the cell, the generator."""
    return {
        "server": spec.name,
        "cell": cell.name,
        "backend": spec.backend or spec.name,
        "workers": spec.workers,
        "generator": generator,
    }


def measure(
    spec: ServerSpec,
    cell: Cell,
    timing: Timing,
    server_cpus: set[int] | None,
    generator_cpus: set[int] | None,
    generator: str = ECHOD_BENCH,
) -> dict[str, Any]:
    record = {**record_header(spec, cell, generator), "pinned": server_cpus is not None}
    try:
        server = RunningServer(spec, server_cpus)
    except ServerFailed as exc:
        record["error"] = str(exc)
        return record
    limit = timing.duration + timing.warmup + 120
    try:
        if generator == C_CLIENT:
            record.update(drive_c_client(server, cell, timing, generator_cpus, limit))
        elif cell.role == "c100k":
            with SockstatPeak() as sockstat:
                record.update(drive_echod_bench(server, cell, timing, generator_cpus, limit))
            if "figures" in record:
                record["figures"]["kernel_tcp"] = {
                    "inuse_peak": sockstat.inuse,
                    "mem_peak_bytes": sockstat.pages * resource.getpagesize(),
                    "mem_per_connection_bytes": sockstat.pages
                    * resource.getpagesize()
                    / cell.connections,
                }
        else:
            record.update(drive_echod_bench(server, cell, timing, generator_cpus, limit))
    except subprocess.TimeoutExpired:
        record["error"] = f"{generator} timed out"
    finally:
        record["server_exit"] = server.stop()
        if server.killed:
            record["server_killed"] = True
    if record["server_exit"] != 0:
        record.setdefault(
            "error",
            "server killed after SIGTERM"
            if server.killed
            else f"server exited {record['server_exit']} on SIGTERM",
        )
    return record


class SockstatPeak:
    """The kernel's TCP socket memory at its peak while a cell runs (/proc/net/sockstat).

    On loopback it holds both ends of every connection: the C100k ladder reports it
    per connection beside the server's RSS, since RSS does not include it.
    """

    def __init__(self, interval: float = 0.5) -> None:
        self.inuse = 0
        self.pages = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, args=(interval,), daemon=True)

    def __enter__(self) -> SockstatPeak:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join()

    def _loop(self, interval: float) -> None:
        while not self._stop.wait(interval):
            try:
                text = Path("/proc/net/sockstat").read_text()
            except OSError:
                return
            found = re.search(r"^TCP: inuse (\d+) .* mem (\d+)", text, re.M)
            if found:
                self.inuse = max(self.inuse, int(found.group(1)))
                self.pages = max(self.pages, int(found.group(2)))


def drive_echod_bench(
    server: RunningServer, cell: Cell, timing: Timing, cpus: set[int] | None, limit: float
) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as scratch:
        out = Path(scratch) / "figures.json"
        argv = echod_bench_argv(server.port, cell, timing, server.pid, out)
        proc = subprocess.run(
            argv, capture_output=True, text=True, preexec_fn=pin(cpus), timeout=limit
        )
        found: dict[str, Any] = {"generator_status": proc.returncode}
        if out.exists():
            found["figures"] = json.loads(out.read_text())
        else:
            found["error"] = proc.stderr.strip()[-500:]
    return found


def drive_c_client(
    server: RunningServer, cell: Cell, timing: Timing, cpus: set[int] | None, limit: float
) -> dict[str, Any]:
    """The cell's C client against ``server``; where the client says its window (the
    handshake client), the server's CPU over it too, as echod-bench measures it."""
    try:
        sampler: TreeSampler | None = TreeSampler(server.pid)
    except NoSuchServer:
        sampler = None
    if sampler is not None:
        sampler.start()
    # The client is this process's only child reaped meanwhile: the server is waited
    # for only at stop(), so the rise of RUSAGE_CHILDREN is the client's CPU time.
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.monotonic()
    try:
        proc = subprocess.run(
            c_client_argv(server.port, cell, timing),
            capture_output=True,
            text=True,
            preexec_fn=pin(cpus),
            timeout=limit,
        )
    finally:
        if sampler is not None:
            sampler.stop()
    wall = time.monotonic() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    found: dict[str, Any] = {"generator_status": proc.returncode}
    try:
        counts = c_client_counts(proc.stdout)
        watched = server_figures(sampler, counts, cell.connections) if sampler else None
        found["figures"] = c_client_figures(counts, cpu, wall, watched)
    except (ValueError, KeyError, IndexError, TypeError):
        found["error"] = (proc.stderr.strip() or proc.stdout.strip())[-500:] or "no output"
    if proc.returncode != 0 and proc.stderr.strip():
        found["generator_stderr"] = proc.stderr.strip()[-500:]
    return found


def source_version() -> str:
    """The commit measured, and whether echod's tree differed from it: others edit echod
    while benches run, so a figure is only as reproducible as this line."""
    root = Path(__file__).resolve().parent.parent
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=root, capture_output=True, text=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--", "echod"],
            cwd=root,
            capture_output=True,
            text=True,
        ).stdout.strip()
    except OSError:
        return "unknown"
    return f"{commit or 'unknown'}{' with uncommitted changes in echod/' if dirty else ''}"


def runnable(
    cells: list[Cell], backends: list[str], c_client: bool = True, hs_client: bool = True
) -> tuple[list[Cell], list[str]]:
    """Cells whose backends exist here; a workers cell keeps the ones that do; the C
    client's runs need the C reference and the C client (``c_client``), in a handshake
    cell the C handshake client (``hs_client``)."""
    kept, notes = [], []
    for cell in cells:
        if cell.c_client and not (hs_client if cell.handshakes else c_client):
            notes.append(f"{cell.name}: echod-bench only, the C client needs the C programs")
            cell = dataclasses.replace(cell, c_client=False)
        if cell.workers:
            present = tuple(b for b in cell.backends if b in backends)
            if not present:
                notes.append(f"{cell.name} skipped: none of {', '.join(cell.backends)} here")
                continue
            if present != cell.backends:
                notes.append(f"{cell.name}: only {', '.join(present)} here")
            cell = dataclasses.replace(cell, backends=present)
        kept.append(cell)
    return kept, notes


def line_up(cell: Cell, servers: list[ServerSpec]) -> list[tuple[ServerSpec, str]]:
    """Who runs in a cell, each with its generator, in the round's first order."""
    group = (
        worker_specs(cell.backends, cell.workers)
        if cell.workers
        else [s for s in servers if takes_part(s, cell)]
    )
    generators = GENERATORS if cell.c_client else (ECHOD_BENCH,)
    return [(spec, generator) for spec in group for generator in generators]


def in_round_order(
    cell: Cell, group: list[tuple[ServerSpec, str]], round_index: int
) -> list[tuple[ServerSpec, str]]:
    """Each round starts one server further along, so no server always runs first.
    A server's runs with the two generators stay side by side, taking turns to go
    first: their ratio is the figure, and minutes apart on a shared machine it would
    measure the machine's drift."""
    size = len(GENERATORS) if cell.c_client else 1
    units = [group[i : i + size] for i in range(0, len(group), size)]
    shift = round_index % len(units) if units else 0
    turn = -1 if round_index % 2 else 1
    return [run for unit in units[shift:] + units[:shift] for run in unit[::turn]]


def describe(record: dict[str, Any]) -> str:
    figures = record.get("figures")
    if skipped(record):
        return str(record["error"])
    if not figures:
        return f"FAILED: {record.get('error', '?')}"
    line = f"{figures['requests_per_s']:>12,.0f}/s"
    if figures["latency_us"].get("p99") is not None:  # the C client keeps no histogram
        line += f"  p99 {figures['latency_us']['p99']:>8,} µs"
    server = figures.get("server") or {}
    if server.get("cpu_us_per_msg") is not None:
        line += f"  server {server['cpu_us_per_msg']:7.2f} µs/msg"
    if figures["errors"]:
        line += f"  errors {figures['errors']}"
    if any(w.get("saturated") for w in figures["workers"]):
        line += "  (generator saturated)"
    return line


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument(
        "--quick", action="store_true", help="one short round: a smoke test under a minute"
    )
    parser.add_argument("--rounds", type=int, help="rounds (default 3, quick 1)")
    parser.add_argument("--duration", type=float, help="seconds measured per cell")
    parser.add_argument("--warmup", type=float, help="seconds of warmup per cell")
    parser.add_argument("--backends", help="comma-separated echod backends (default: all it lists)")
    parser.add_argument("--cells", help="comma-separated cell names (default: the whole matrix)")
    parser.add_argument("--no-reference", action="store_true", help="leave out the C reference row")
    parser.add_argument(
        "--out", type=Path, default=RESULTS, help="where results go (default bench/results)"
    )
    parser.add_argument(
        "--publish",
        action="store_true",
        help="afterwards, copy the report and charts to docs/bench/",
    )
    parser.add_argument(
        "--publish-only", action="store_true", help="just copy the latest results to docs/bench/"
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.publish_only:
        return report.publish_latest(args.out)
    base = QUICK_TIMING if args.quick else FULL_TIMING
    timing = Timing(
        args.rounds or base.rounds,
        args.duration or base.duration,
        args.warmup if args.warmup is not None else base.warmup,
    )
    cells = list(QUICK if args.quick else FULL)
    if args.cells:
        wanted = set(args.cells.split(","))
        # dict: a cell in both matrices (rr-1k-10, workers-1k) runs once.
        cells = list({c.name: c for c in (*FULL, *QUICK, *OPT_IN) if c.name in wanted}.values())
    notes: list[str] = []
    limit_problem = raise_open_files(cells)
    if limit_problem:
        notes.append(limit_problem)
    problem = None if args.no_reference else build_reference()
    if problem:
        notes.append(problem)
    backends = args.backends.split(",") if args.backends else echod_backends()
    if not backends:
        notes.append(
            "echod is not runnable here (python -m echod --list-backends failed): C reference only"
        )
    with_reference = not args.no_reference and problem is None
    client_problem = build_client() if with_reference else None
    if client_problem:
        notes.append(client_problem)
    uring_problem = None if args.no_reference else build_uring_reference()
    if uring_problem:
        notes.append(uring_problem)
    tls_cells = any(c.tls for c in cells)
    tls_problem = build_tls_reference() if tls_cells and not args.no_reference else None
    if tls_problem:
        notes.append(tls_problem)
    handshake_cells = any(c.handshakes and c.c_client for c in cells)
    hs_problem = build_hs_client() if handshake_cells and not args.no_reference else None
    if hs_problem:
        notes.append(hs_problem)
    servers = specs(
        backends,
        with_reference=with_reference,
        with_uring_reference=not args.no_reference and uring_problem is None,
        with_tls_reference=tls_cells and not args.no_reference and tls_problem is None,
    )
    if not servers:
        print("bench: nothing to measure", file=sys.stderr)
        return 2
    server_cpus, generator_cpus, pinning = split_cpus()
    notes.append(pinning)
    has_reference = any(s.name == REFERENCE for s in servers)
    cells, left_out = runnable(
        cells,
        backends,
        has_reference and not client_problem,
        not args.no_reference and hs_problem is None,
    )
    notes += left_out
    # The TLS cells' keys: made for this run, gone with it.
    scratch = tempfile.TemporaryDirectory(prefix="bench-certs-")
    made: dict[str, certs.Certificate] = {}
    if tls_cells:
        try:
            made = certs.make(Path(scratch.name))
        except certs.CertificateError as exc:
            notes.append(str(exc))
            cells = [c for c in cells if not c.tls]
    for note in notes:
        print(f"bench: {note}")
    started = time.time()
    runs: list[dict[str, Any]] = []
    for round_index in range(timing.rounds):
        for cell in cells:
            pinned = not cell.workers
            for spec, generator in in_round_order(cell, line_up(cell, servers), round_index):
                record = run_cell(
                    for_cell(spec, cell, made),
                    cell,
                    timing,
                    server_cpus if pinned else None,
                    generator_cpus if pinned else None,
                    generator,
                )
                record["round"] = round_index + 1
                runs.append(record)
                who = spec.name if generator == ECHOD_BENCH else f"{spec.name} ← {generator}"
                print(
                    f"[round {round_index + 1}/{timing.rounds}] {cell.name:<10} {who:<10} {describe(record)}",
                    flush=True,
                )
    scratch.cleanup()
    results = {
        "timestamp": time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(started)),
        "elapsed_s": round(time.time() - started, 1),
        "quick": args.quick,
        "timing": {
            "rounds": timing.rounds,
            "duration_s": timing.duration,
            "warmup_s": timing.warmup,
        },
        "environment": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "kernel": platform.release(),
            "machine": platform.machine(),
            "pinning": pinning,
            "source": source_version(),
        },
        "notes": notes,
        "servers": [s.name for s in servers],
        "reference": REFERENCE if any(s.name == REFERENCE for s in servers) else None,
        # Every C row: none of them is an echod backend in the report's comparisons.
        "references": [s.name for s in servers if s.name in REFERENCES],
        "cells": [
            {
                "name": c.name,
                "label": c.label,
                "args": list(c.args),
                "connections": c.connections,
                "workers": list(c.workers),
                "backends": list(c.backends),
                "role": c.role,
                "c_client": c.c_client,
                # The TLS and PROXY cells have their own sections and C row ("vs C").
                "family": c.family,
                "tls": c.tls,
                "proxy": c.proxy,
                "reference": TLS_REFERENCE if c.tls else None,
            }
            for c in cells
        ],
        "runs": runs,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    stem = time.strftime("%Y%m%d-%H%M%S", time.localtime(started)) + (
        "-quick" if args.quick else ""
    )
    json_path = args.out / f"{stem}.json"
    json_path.write_text(json.dumps(results, indent=1) + "\n")
    written = report.write(results, args.out, stem)
    print(f"bench: results {json_path}")
    for path in written:
        print(f"bench: wrote {path}")
    if args.publish:
        report.publish(results)
    # A cell a server does not run (run.obstacle) is said in the report, not a failure.
    failed = [
        r for r in runs if not skipped(r) and ("error" in r or r.get("generator_status", 0) != 0)
    ]
    if failed:
        print(f"bench: {len(failed)} of {len(runs)} cells failed or saw errors", file=sys.stderr)
    return 1 if failed else 0
