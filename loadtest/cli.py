"""``echod-bench``: check the target, start the workers, merge, report.

The parent never touches a load connection: it makes one preflight connect (so
an unreachable server fails fast with one line), starts the workers, samples the
server, shows progress and merges what the workers send back.
``echod-bench merge`` (loadtest/merge.py) adds the results of several runs.
"""

from __future__ import annotations

import math
import multiprocessing
import os
import queue as queue_module
import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import replace
from multiprocessing.process import BaseProcess
from typing import Any

from loadtest.limits import ensure_open_files
from loadtest.monitor import NoSuchServer, start_sampler
from loadtest.params import Params, default_processes, parse
from loadtest.report import EXIT_ERRORS, build, table
from loadtest.results import stream_line, write
from loadtest.seconds import Seconds
from loadtest.sources import check_sources
from loadtest.stats import Interval, WorkerResult
from loadtest.target import Abort, preflight, resolve
from loadtest.worker import WorkerPlan, worker_main

# Descriptors a worker needs besides its connections: selector, queue pipes, stdio.
SPARE_FILES = 64


def split(total: int, parts: int, index: int) -> int:
    return total // parts + (1 if index < total % parts else 0)


def plans(
    params: Params, processes: int, family: int, address: tuple[Any, ...]
) -> list[WorkerPlan]:
    """Connections, active ones and the open-loop rate, spread as evenly as they go."""
    active_total = params.active_connections
    result = []
    first = 0
    for i in range(processes):
        count = split(params.connections, processes, i)
        active = split(active_total, processes, i)
        rate = (params.rate or 0.0) * active / active_total if active_total else 0.0
        connect_rate = (params.connect_rate or 0.0) * count / params.connections
        result.append(
            WorkerPlan(
                i,
                first,
                count,
                active,
                rate,
                family,
                address,
                connect_rate=connect_rate,
                sources=params.source_address,
            )
        )
        first += count
    return result


class Progress:
    """The live line on a terminal: elapsed, current rate, errors.

    Each worker's rate is measured between its own ticks, on the monotonic time the
    worker stamped them with: the line may be drawn at any moment (a tick, a quiet
    queue) without changing the figure it shows.
    """

    def __init__(self, enabled: bool, workers: int) -> None:
        self.enabled = enabled
        self.messages: list[int | None] = [None] * workers
        self.ticked = [0.0] * workers
        self.rates = [0.0] * workers
        self.errors = [0] * workers
        self.shown = False

    def update(self, index: int, messages: int, errors: int, at: float) -> None:
        last = self.messages[index]
        if last is not None and at > self.ticked[index]:
            self.rates[index] = (messages - last) / (at - self.ticked[index])
        self.messages[index], self.ticked[index] = messages, at
        self.errors[index] = errors

    def line(self, elapsed: float) -> str:
        rate = sum(self.rates)
        return f"{max(elapsed, 0.0):6.1f} s  {rate:>12,.0f} msg/s  errors {sum(self.errors):,}"

    def show(self, elapsed: float) -> None:
        if not self.enabled:
            return
        sys.stderr.write(f"\r{self.line(elapsed)}   ")
        sys.stderr.flush()
        self.shown = True

    def clear(self) -> None:
        if self.shown:
            sys.stderr.write("\r" + " " * 60 + "\r")
            sys.stderr.flush()


def run(params: Params) -> tuple[dict[str, Any], int]:
    family, address = resolve(params)
    problem = check_sources(params.source_address, family)
    if problem:
        raise Abort(problem)
    preflight(params, family, address)
    processes = min(params.processes or default_processes(), params.connections)
    if params.workload == "rate" and params.active_connections == 0:
        raise Abort("--workload rate needs at least one --active connection")
    problem = ensure_open_files(math.ceil(params.connections / processes) + SPARE_FILES)
    if problem:
        raise Abort(f"--connections {params.connections}: {problem}")
    try:
        sampler = start_sampler(params.server_pid)
    except NoSuchServer as exc:
        raise Abort(str(exc)) from exc

    progress = Progress(params.progress and sys.stderr.isatty(), processes)
    params = replace(params, progress=progress.enabled)
    context = multiprocessing.get_context()
    queue: Any = context.Queue()
    go = context.Event()
    start_at: Any = context.Value("d", 0.0)
    workers: list[BaseProcess] = []
    finished = False
    try:
        for plan in plans(params, processes, family, address):
            worker: BaseProcess = context.Process(
                target=worker_main,
                args=(params, plan, queue, go, start_at),
                name=f"echod-bench-{plan.index}",
                daemon=True,
            )
            worker.start()
            workers.append(worker)
        per_worker = math.ceil(params.connections / processes)
        ramp = params.connections / params.connect_rate if params.connect_rate else 0.0
        _collect(
            queue,
            workers,
            "ready",
            time.monotonic() + ramp + params.connect_timeout + per_worker / 1000 + 30,
        )
        start = time.monotonic() + 0.05
        if params.start_at is not None:
            # Workers wait on the monotonic clock: convert once, here, so a wall-clock
            # step during the run cannot move one worker's window.
            lead = params.start_at - time.time()
            if lead < 0:
                raise Abort(
                    f"--start-at passed {-lead:,.1f} s before the connections were up: "
                    "start the generators earlier or choose a later time"
                )
            start = time.monotonic() + lead
        start_at.value = start
        go.set()
        end = start + params.warmup + params.duration
        seconds = Seconds(processes, params.duration)

        def on_interval(interval: Interval) -> None:
            record = seconds.add(interval)
            if record is not None and params.json_stream:
                print(stream_line("interval", record), flush=True)

        results = _collect(
            queue, workers, "result", end + params.timeout + 10, progress, start, on_interval
        )
        progress.clear()
        finished = True
    finally:
        for proc in workers:
            proc.join(timeout=2 if finished else 0)
            if proc.is_alive():
                proc.terminate()
                proc.join()
        if sampler is not None:
            sampler.stop()
    server = sampler.figures(start + params.warmup, end) if sampler else None
    figures = build(
        params,
        processes,
        [r for r in results if isinstance(r, WorkerResult)],
        server,
        seconds.records(),
    )
    return figures, int(figures["exit_status"])


def _collect(
    queue: Any,
    workers: list[BaseProcess],
    kind: str,
    deadline: float,
    progress: Progress | None = None,
    start: float = 0.0,
    on_interval: Callable[[Interval], None] | None = None,
) -> list[Any]:
    """Wait for one ``kind`` message from every worker, showing progress meanwhile."""
    received: dict[int, Any] = {}
    while len(received) < len(workers):
        now = time.monotonic()
        if now > deadline:
            raise Abort(f"workers did not report {kind} in time", EXIT_ERRORS)
        try:
            message = queue.get(timeout=min(0.5, deadline - now))
        except queue_module.Empty:
            dead = [p.name for p in workers if not p.is_alive() and p.exitcode not in (0, None)]
            if dead:
                raise Abort(f"worker {dead[0]} died", EXIT_ERRORS) from None
            if progress:
                progress.show(now - start)
            continue
        tag, index = message[0], message[1]
        if tag == "crash":
            raise Abort(f"worker {index} failed:\n{message[2]}", EXIT_ERRORS)
        if tag == "refused":
            kinds = ", ".join(f"{kind} {n:,}" for kind, n in sorted(message[2].items()))
            raise Abort(
                "the server closed every connection before echoing a byte, "
                f"again on each retry ({kinds}): stopped early, nothing to measure",
                EXIT_ERRORS,
            )
        if tag == "interval":
            if on_interval is not None:
                on_interval(message[2])
        elif tag == "tick" and progress:
            progress.update(index, message[2], message[3], message[4])
            if index == 0:
                progress.show(now - start)
        elif tag == kind:
            received[index] = message[2]
    return [received[i] for i in sorted(received)]


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["merge"]:
        from loadtest.merge import main as merge_main

        return merge_main(argv[1:])
    params = parse(argv)
    if params.workload == "udp":
        from loadtest import udp  # its own flows and figures: datagrams, not connections

        return udp.main(params)
    try:
        figures, status = run(params)
    except Abort as exc:
        print(f"echod-bench: {exc}", file=sys.stderr)
        return exc.status
    except KeyboardInterrupt:
        print("echod-bench: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # --json-stream | head: the reader left, so stop quietly
        _silence_stdout()
        return EXIT_ERRORS
    except Exception:  # a bug of ours: say so in one block, not a bare traceback
        print(
            "echod-bench: internal error, please report:\n" + traceback.format_exc(),
            file=sys.stderr,
        )
        return EXIT_ERRORS
    out = sys.stderr if params.json == "-" or params.json_stream else sys.stdout
    try:
        print(table(figures), file=out)
        if params.json:
            write(params.json, figures)
        if params.json_stream:
            print(stream_line("end", figures), flush=True)
    except BrokenPipeError:  # echod-bench | head: not an error of the run
        _silence_stdout()
    return status


def _silence_stdout() -> None:
    """Point stdout at /dev/null so the interpreter's last flush cannot raise again."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)
