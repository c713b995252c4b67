"""The query model over a results file: which rounds count, medians and spreads, marks.

Every table, sentence and chart of the report asks its questions here, so a rule
such as "a killed server is faulty" or "this row is generator-bound" has one home.
"""

from __future__ import annotations

import signal
import statistics
from collections.abc import Callable
from typing import Any

# The generators a run record can name; records from before the C client name none.
ECHOD_BENCH = "echod-bench"
C_CLIENT = "c-client"
# A row at or above this share of echod-bench's own ceiling (against the C server, same
# cell shape) shows the generator's limit, not the server's, whatever its CPU said.
CEILING_SHARE = 0.9
# Fault kinds of the server's own stop, not of the traffic the generator saw.
KILLED = "killed after SIGTERM"
SERVER_FAULTS = frozenset({KILLED})

Metric = Callable[[dict[str, Any]], float | None]


def skipped(record: dict[str, Any]) -> bool:
    """A record of a cell the runner did not start (``run.obstacle``): not a failure."""
    return str(record.get("error", "")).startswith("not run")


def _number(value: Any) -> float | None:
    return None if value is None else float(value)


def rate(f: dict[str, Any]) -> float | None:
    return _number(f["requests_per_s"])


def latency(percentile: str) -> Metric:
    return lambda f: _number((f.get("latency_us") or {}).get(percentile))


def server(key: str) -> Metric:
    return lambda f: _number((f.get("server") or {}).get(key))


p99 = latency("p99")
cpu = server("cpu_us_per_msg")
cpu_pct = server("cpu_mean_pct")
rss = server("rss_peak_bytes")
rss_per_conn = server("rss_per_connection_bytes")


def kernel_tcp_per_conn(f: dict[str, Any]) -> float | None:
    """The kernel's TCP memory per connection, both loopback ends (C100k cells)."""
    return _number((f.get("kernel_tcp") or {}).get("mem_per_connection_bytes"))


class Spread:
    """Median, min and max of one figure over the rounds."""

    def __init__(self, values: list[float]) -> None:
        self.values = values
        self.median = statistics.median(values) if values else None
        self.low = min(values) if values else None
        self.high = max(values) if values else None

    def show(self, fmt: str = "{:,.0f}", spread: bool = True) -> str:
        if self.median is None:
            return "-"
        text = fmt.format(self.median)
        if spread and len(self.values) > 1:
            text += f" ({fmt.format(self.low)}..{fmt.format(self.high)})"
        return text


class Results:
    """One run of the matrix, and the questions the report asks of it."""

    def __init__(self, data: dict[str, Any]) -> None:
        self.data = data
        self.all_cells: list[dict[str, Any]] = data["cells"]
        # The workers cell runs other servers: its own section; so do the TLS and PROXY
        # cells (issues 19 and 18), which only some servers speak.
        self.cells = [c for c in self.all_cells if not c.get("workers") and not c.get("family")]
        self.tls_cells = [c for c in self.all_cells if c.get("family") == "tls"]
        self.proxy_cells = [c for c in self.all_cells if c.get("family") == "proxy"]
        # The servers of the plaintext cells: the C TLS server has no row there.
        plain = {c["name"] for c in self.cells}
        seen = {r["server"] for r in data["runs"] if r["cell"] in plain}
        self.servers: list[str] = [s for s in data["servers"] if s in seen] or data["servers"]
        self.workers_cell = next((c for c in self.all_cells if c.get("workers")), None)
        # Cells where the C client drove every server too: the generator ceiling's.
        self.compared = [c for c in self.cells if c.get("c_client")]
        self.reference: str | None = data.get("reference")
        # The C rows (c-epoll, c-uring): limits to compare with, not echod backends.
        self.references: set[str] = set(data.get("references") or []) | (
            {self.reference} if self.reference else set()
        )
        # The "Which IO model?" pair: the same load over few and over many connections.
        self.few = next((c for c in self.cells if c.get("role") == "few"), None)
        self.many = next((c for c in self.cells if c.get("role") == "many"), None)
        # The C100k ladder: the same 100 active connections among ever more held open.
        self.ladder = sorted(
            (c for c in self.cells if c.get("role") == "c100k"), key=lambda c: c["connections"]
        )

    def runs(self, server: str, cell: str, generator: str = ECHOD_BENCH) -> list[dict[str, Any]]:
        """The rounds that count: those no other load overlapped, when they are at least
        half; otherwise all of them, as a median over mostly disturbed rounds is no better
        than the one undisturbed round it would otherwise rest on."""
        found = [
            r
            for r in self.data["runs"]
            if r["server"] == server
            and r["cell"] == cell
            and r.get("generator", ECHOD_BENCH) == generator
        ]
        clean = [r for r in found if not r.get("contended")]
        return clean if clean and 2 * len(clean) >= len(found) else found

    def contended(self, server: str, cell: str, generator: str = ECHOD_BENCH) -> bool:
        """Whether the figures shown rest on rounds that overlapped other load."""
        return any(r.get("contended") for r in self.runs(server, cell, generator))

    def figures(self, server: str, cell: str, generator: str = ECHOD_BENCH) -> list[dict[str, Any]]:
        return [r["figures"] for r in self.runs(server, cell, generator) if "figures" in r]

    def spread(
        self, server: str, cell: str, metric: Metric, generator: str = ECHOD_BENCH
    ) -> Spread:
        found = (metric(f) for f in self.figures(server, cell, generator))
        return Spread([float(v) for v in found if v is not None])

    def median(
        self, server: str, cell: str, metric: Metric, generator: str = ECHOD_BENCH
    ) -> float | None:
        return self.spread(server, cell, metric, generator).median

    def in_cell(self, cell: str) -> list[str]:
        """The servers with a record in ``cell`` (run or not run), in the run's order."""
        seen = {r["server"] for r in self.data["runs"] if r["cell"] == cell}
        return [s for s in self.data["servers"] if s in seen]

    def reference_for(self, cell: str) -> str | None:
        """The C row a cell's "vs C" is against: the C TLS server in the TLS cells."""
        found = next((c for c in self.all_cells if c["name"] == cell), {})
        return found.get("reference") or self.reference

    def relative(
        self, server: str, cell: str, metric: Metric, generator: str = ECHOD_BENCH
    ) -> float | None:
        """A row's median over the cell's C reference's, both with ``generator``."""
        reference = self.reference_for(cell)
        if reference is None:
            return None
        mine = self.median(server, cell, metric, generator)
        ref = self.median(reference, cell, metric, generator)
        return mine / ref if mine and ref else None

    def ratio(self, server: str, cell: str, metric: Metric) -> str:
        found = None if server == self.reference_for(cell) else self.relative(server, cell, metric)
        return "-" if found is None else f"{found:.2f}"

    # The generator ceiling ---------------------------------------------------------------
    def has_ceiling(self, cell: str) -> bool:
        """Whether both generators drove the C reference in ``cell`` (and every server)."""
        return self.reference is not None and any(c["name"] == cell for c in self.compared)

    def ceiling(self, cell: str, generator: str = ECHOD_BENCH) -> float | None:
        """What ``generator`` drove the C reference at in ``cell``."""
        if self.reference is None or not self.has_ceiling(cell):
            return None
        return self.median(self.reference, cell, rate, generator)

    def ceiling_ratio(self, cell: str) -> float | None:
        """echod-bench's req/s over the C client's, both against the C reference."""
        if self.reference is None or not self.has_ceiling(cell):
            return None
        return self.of_c_client(self.reference, cell)

    def share_of_ceiling(self, server: str, cell: str) -> float | None:
        """A row's req/s as a share of what echod-bench can drive at all."""
        return self.relative(server, cell, rate) if self.has_ceiling(cell) else None

    def c_client_rate(self, server: str, cell: str) -> float | None:
        """What the C client drove ``server`` at in ``cell``."""
        return self.median(server, cell, rate, C_CLIENT)

    def of_c_client(self, server: str, cell: str) -> float | None:
        """echod-bench's req/s for a row over the C client's against the same server, as
        the median of each round's ratio: the two ran side by side, so the machine's drift
        between rounds (which moves both) cancels out. Near 1, echod-bench shows all that
        the least a generator can do would show."""

        def by_round(generator: str) -> dict[Any, float]:
            found = ((r.get("round"), r.get("figures")) for r in self.runs(server, cell, generator))
            return {k: v for k, f in found if f and (v := rate(f))}

        ours, theirs = by_round(ECHOD_BENCH), by_round(C_CLIENT)
        ratios = [ours[k] / theirs[k] for k in ours.keys() & theirs.keys()]
        return statistics.median(ratios) if ratios else None

    def c_client_share(self, server: str, cell: str) -> float | None:
        """The C client's own share of its ceiling for ``server``: what "vs C" is for
        echod-bench's rows."""
        if not self.has_ceiling(cell):
            return None
        return self.relative(server, cell, rate, C_CLIENT)

    def generator_cpu(self, server: str, cell: str, generator: str = ECHOD_BENCH) -> Spread:
        """The busiest generator worker's CPU %, over the rounds."""
        busiest = (
            max((w.get("cpu_pct") or 0.0 for w in f.get("workers", [])), default=None)
            for f in self.figures(server, cell, generator)
        )
        return Spread([float(v) for v in busiest if v is not None])

    def saturated(self, server: str, cell: str, generator: str = ECHOD_BENCH) -> bool:
        """Whether a generator worker was saturated in any round of this cell."""
        return any(
            w.get("saturated")
            for f in self.figures(server, cell, generator)
            for w in f.get("workers", [])
        )

    def generator_bound(self, server: str, cell: str, generator: str = ECHOD_BENCH) -> bool:
        """Whether the figure shows what the generator could send, not what the server
        could do.

        Where the cell measured echod-bench's ceiling (the C reference driven by it in the
        same rounds), that measurement decides: a row within reach of it cannot be told from
        the C reference. Elsewhere a saturated worker is the only sign. The ceiling is the
        better one on this machine: a generator's CPU share rises as it waits on a slower
        server (loadtest/README.md, "Its own ceiling", has the figures)."""
        if generator == ECHOD_BENCH and self.has_ceiling(cell):
            share = self.share_of_ceiling(server, cell)
            return share is not None and share >= CEILING_SHARE
        return self.saturated(server, cell, generator)

    def not_run(self, server: str, cell: str, generator: str = ECHOD_BENCH) -> str | None:
        """Why a server was not run in a cell at all (``run.obstacle``), if no round ran."""
        found = self.runs(server, cell, generator)
        if not found or not all(skipped(r) for r in found):
            return None
        return str(found[0]["error"])

    def ran(self, cell: str) -> bool:
        """Whether any server has figures in ``cell``: a cell nothing ran in draws nothing."""
        return any(self.figures(server, cell) for server in self.data["servers"])

    # Faults ------------------------------------------------------------------------------
    def faults(self, server: str, cell: str, generator: str = ECHOD_BENCH) -> dict[str, int]:
        """Errors summed over rounds: the generator's, a round that failed outright, and a
        server that did not stop cleanly on SIGTERM (killed, or a non-zero exit)."""
        total: dict[str, int] = {}

        def add(kind: str, count: int) -> None:
            total[kind] = total.get(kind, 0) + count

        for r in self.runs(server, cell, generator):
            if skipped(r):
                continue
            for kind, count in (
                r["figures"]["errors"] if "figures" in r else {"failed": 1}
            ).items():
                add(kind, count)
            # -9 from a record written before "server_killed" existed: only stop() sends it.
            if r.get("server_killed") or r.get("server_exit") == -signal.SIGKILL:
                add(KILLED, 1)
            elif r.get("server_exit") not in (0, None):
                add(f"server exit {r['server_exit']}", 1)
        return total

    def state(self, server: str, cell: str, generator: str = ECHOD_BENCH) -> str:
        """ " ∅" not run, " ✗" faulty, or nothing: what a row's figures cannot show."""
        if self.not_run(server, cell, generator):
            return " ∅"
        return " ✗" if self.faults(server, cell, generator) else ""

    def marks(self, server: str, cell: str, generator: str = ECHOD_BENCH) -> str:
        return (
            (" †" if self.generator_bound(server, cell, generator) else "")
            + self.state(server, cell, generator)
            + (" ‡" if self.contended(server, cell, generator) else "")
        )

    def contention_note(self) -> str | None:
        runs = self.data["runs"]
        hit = [r for r in runs if r.get("contended")]
        if not hit:
            return None
        # One line each: a command line may hold newlines (python -c "..."); and its
        # paths by their last part, so no path of the machine that ran it is published.
        what = sorted({" ".join(map(_last_part, c.split())) for r in hit for c in r["contended"]})
        return (
            f"{len(hit)} of {len(runs)} runs overlapped other load on this machine "
            f"({'; '.join(what[:4])}{' …' if len(what) > 4 else ''}). Where at least half of "
            "a cell's rounds were undisturbed, its figures use only those; ‡ marks figures "
            "that include disturbed rounds: throughput and latency there are understated, "
            "CPU per message and RSS much less affected."
        )

    def skipped_notes(self) -> list[str]:
        """One line per reason a cell was not run, naming every server and cell it kept
        out (the runner records it once per round)."""
        by_reason: dict[str, dict[str, list[str]]] = {}
        for r in self.data["runs"]:
            if skipped(r):
                reason = str(r["error"]).removeprefix("not run").lstrip(": ")
                cells = by_reason.setdefault(reason, {}).setdefault(r["server"], [])
                if r["cell"] not in cells:
                    cells.append(r["cell"])
        lines = []
        for reason, where in by_reason.items():
            servers_by_cells: dict[tuple[str, ...], list[str]] = {}
            for server, cells in where.items():
                servers_by_cells.setdefault(tuple(cells), []).append(server)
            kept_out = "; ".join(
                f"{', '.join(servers)} in {', '.join(cells)}"
                for cells, servers in servers_by_cells.items()
            )
            lines.append(f"∅ not run: {kept_out}: {reason}")
        return lines

    def problems(self) -> list[str]:
        lines = self.skipped_notes()
        for r in self.data["runs"]:
            where = f"round {r.get('round')}, {r['server']}, {r['cell']}"
            if r.get("generator", ECHOD_BENCH) != ECHOD_BENCH:
                where += f", {r['generator']}"
            if skipped(r):
                continue
            if "error" in r:
                lines.append(f"{where}: {r['error']}")
            elif r.get("server_killed") or r.get("server_exit") == -signal.SIGKILL:
                lines.append(f"{where}: server {KILLED}")
            figures = r.get("figures")
            if figures:
                if figures["errors"]:
                    lines.append(f"{where}: errors {figures['errors']}")
                lines.extend(f"{where}: {w}" for w in figures["warnings"])
        return lines


def active(cell: dict[str, Any] | None) -> int:
    """How many of a cell's connections send (``--active``, else all of them)."""
    if cell is None:
        return 0
    args = list(cell["args"])
    if "--active" in args:
        return int(args[args.index("--active") + 1])
    return int(cell["connections"])


def count(connections: int) -> str:
    return f"{connections // 1000}k" if connections >= 1000 else str(connections)


def _last_part(word: str) -> str:
    """``/tmp/x/venv/bin/python`` as ``python``, ``-I/tmp/x/`` as ``-Ix``; a word with no
    path in it as it is."""
    if "/" not in word:
        return word
    return word[: word.index("/")] + word.rstrip("/").rpartition("/")[2]
