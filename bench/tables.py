"""The report's markdown tables, one function per table, all from the query model."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from bench import query
from bench.query import C_CLIENT, Results


def mib(value: float | None) -> str:
    return f"{value / 1048576:.1f} MiB" if value else "-"


def kib(value: float | None) -> str:
    return "-" if value is None else f"{value / 1024:.1f} KiB"


def row(cells: Iterable[str]) -> str:
    return "| " + " | ".join(cells) + " |"


def table(header: list[str], rows: list[list[str]]) -> list[str]:
    return [row(header), "|" + "---|" * len(header), *(row(r) for r in rows)]


def _name(res: Results, server: str) -> str:
    return f"**{server}**" if server in res.references else server


def summary_table(res: Results) -> list[str]:
    """One row per server over the first cell, and a last row for the generator ceiling."""
    first = res.cells[0]
    name = first["name"]
    big = next((c for c in res.cells if c["connections"] >= 1000), None)
    ceiling = res.has_ceiling(name)
    header = [
        "backend",
        f"req/s ({first['label']})",
        "p99 µs",
        "server CPU µs/msg",
        "req/s vs C",
        "CPU/msg vs C",
        "RSS peak",
    ]
    if big:
        header.append(f"RSS/conn at {big['connections']:,}")
    rows = []
    for server in res.servers:
        line = [
            _name(res, server),
            res.spread(server, name, query.rate).show(spread=False) + res.marks(server, name),
            res.spread(server, name, query.p99).show(spread=False),
            res.spread(server, name, query.cpu).show("{:.2f}", spread=False),
            res.ratio(server, name, query.rate),
            res.ratio(server, name, query.cpu),
            mib(res.median(server, name, query.rss)),
        ]
        if big:
            line.append(
                kib(res.median(server, big["name"], query.rss_per_conn))
                + res.state(server, big["name"])
            )
        rows.append(line)
    if ceiling:
        rows.append(ceiling_line(res, name, len(header)))
    return table(header, rows)


def ceiling_line(res: Results, cell: str, width: int) -> list[str]:
    """The summary's "generator ceiling" row: echod-bench against the C client."""
    assert res.reference is not None
    ref, ratio = res.reference, res.ceiling_ratio(cell)
    text = (
        res.spread(ref, cell, query.rate).show(spread=False)
        + res.marks(ref, cell)
        + f" of C client's {res.spread(ref, cell, query.rate, C_CLIENT).show(spread=False)}"
        + res.marks(ref, cell, C_CLIENT)
    )
    line = ["generator ceiling", text, "-" if ratio is None else f"{ratio:.2f} of C client"]
    return line + ["-"] * (width - len(line))


def ceiling_table(res: Results) -> list[str]:
    """Each compared cell: echod-bench and the C client against the C reference."""
    if res.reference is None:
        return []
    ref = res.reference
    header = [
        "workload",
        "echod-bench req/s",
        "C client req/s",
        "echod-bench / C client",
        "generator CPU %, echod-bench",
        "C client",
        "C server CPU µs/msg",
    ]
    rows = []
    for cell in res.compared:
        name = cell["name"]
        ratio = res.ceiling_ratio(name)
        rows.append(
            [
                cell["label"],
                res.spread(ref, name, query.rate).show() + res.marks(ref, name),
                res.spread(ref, name, query.rate, C_CLIENT).show() + res.marks(ref, name, C_CLIENT),
                "-" if ratio is None else f"{ratio:.2f}",
                res.generator_cpu(ref, name).show("{:.0f}", spread=False),
                res.generator_cpu(ref, name, C_CLIENT).show("{:.0f}", spread=False),
                res.spread(ref, name, query.cpu).show("{:.2f}", spread=False),
            ]
        )
    return table(header, rows)


def c_client_table(res: Results) -> list[str]:
    """Every server driven by the C client, beside echod-bench's row in the same shape."""
    header = ["backend"]
    for cell in res.compared:
        header += [
            f"C client req/s, {cell['label']}",
            "echod-bench / C client",
            "C client: of its ceiling",
        ]
    rows = []
    for server in res.servers:
        line = [_name(res, server)]
        for cell in res.compared:
            name = cell["name"]
            ratio, share = res.of_c_client(server, name), res.c_client_share(server, name)
            line += [
                res.spread(server, name, query.rate, C_CLIENT).show(spread=False)
                + res.state(server, name, C_CLIENT),
                "-" if ratio is None else f"{ratio:.2f}",
                "-" if share is None else f"{share:.2f}",
            ]
        rows.append(line)
    return table(header, rows)


def iomodel_table(res: Results) -> list[str]:
    assert res.few is not None and res.many is not None
    few, many = res.few["name"], res.many["name"]
    a, b = query.count(res.few["connections"]), query.count(res.many["connections"])
    header = [
        "backend",
        f"req/s, {a} conns",
        f"req/s, {b} conns",
        f"p99 µs, {a}",
        f"p99 µs, {b}",
        f"CPU µs/req, {a}",
        f"CPU µs/req, {b}",
        f"RSS/conn, {a}",
        f"RSS/conn, {b}",
    ]
    rows = []
    for server in res.servers:
        pair = (few, many)
        line = [_name(res, server)]
        line += [
            res.spread(server, c, query.rate).show(spread=False) + res.marks(server, c)
            for c in pair
        ]
        line += [res.spread(server, c, query.p99).show(spread=False) for c in pair]
        line += [res.spread(server, c, query.cpu).show("{:.2f}", spread=False) for c in pair]
        line += [kib(res.median(server, c, query.rss_per_conn)) for c in pair]
        rows.append(line)
    return table(header, rows)


def ladder_table(res: Results) -> list[str]:
    """CPU per request, p99 and RSS per connection as held connections grow (C100k cells).

    A server a cell cannot run on here says "not run" instead of figures, so a missing
    figure never reads as a measured one.
    """
    cells = [c["name"] for c in res.ladder]
    counts = [query.count(c["connections"]) for c in res.ladder]
    header = ["backend"]
    for what in ("CPU µs/req", "p99 µs", "RSS/conn", "kernel TCP/conn"):
        header += [f"{what}, {n}" for n in counts]
    shows: list[tuple[query.Metric, Callable[[query.Spread], str]]] = [
        (query.cpu, lambda s: s.show("{:.2f}", spread=False)),
        (query.p99, lambda s: s.show(spread=False)),
        (query.rss_per_conn, lambda s: kib(s.median)),
        (query.kernel_tcp_per_conn, lambda s: kib(s.median)),
    ]
    rows = []
    for server in res.servers:
        line = [_name(res, server)]
        for metric, show in shows:
            for c in cells:
                if res.not_run(server, c):
                    line.append("not run")
                else:
                    line.append(show(res.spread(server, c, metric)) + res.marks(server, c))
        rows.append(line)
    return table(header, rows)


def workers_servers(res: Results) -> list[tuple[str, str, int]]:
    """(server name, backend, workers) in the order they were measured."""
    cell = res.workers_cell
    if cell is None:
        return []
    seen: dict[str, tuple[str, str, int]] = {}
    for r in res.data["runs"]:
        if r["cell"] == cell["name"]:
            seen.setdefault(r["server"], (r["server"], r["backend"], int(r["workers"])))
    return sorted(seen.values(), key=lambda s: (cell["backends"].index(s[1]), s[2]))


def workers_table(res: Results) -> list[str]:
    cell = res.workers_cell
    if cell is None:
        return []
    name = cell["name"]
    header = [
        "backend",
        "workers",
        "req/s",
        "vs 1 worker",
        "p99 µs",
        "server CPU µs/msg (all processes)",
        "server CPU %",
    ]
    rows = []
    for server, backend, workers in workers_servers(res):
        one = res.median(f"{backend} x1", name, query.rate)
        mine = res.median(server, name, query.rate)
        rows.append(
            [
                backend,
                str(workers),
                res.spread(server, name, query.rate).show() + res.marks(server, name),
                f"{mine / one:.2f}" if mine and one else "-",
                res.spread(server, name, query.p99).show(spread=False),
                res.spread(server, name, query.cpu).show("{:.2f}"),
                res.spread(server, name, query.cpu_pct).show("{:.0f}", spread=False),
            ]
        )
    return table(header, rows)


def cell_table(res: Results, cell: dict[str, Any]) -> list[str]:
    """Every figure of one cell, with spreads, one row per server."""
    name = cell["name"]
    header = ["backend", "conn/s" if "--churn" in cell["args"] else "req/s", "vs C"]
    header += [
        "p50 µs",
        "p99 µs",
        "p99.9 µs",
        "server CPU µs/msg",
        "vs C",
        "server CPU %",
        "RSS peak",
        "RSS/conn",
    ]
    rows = []
    for server in res.in_cell(name):
        line = [
            server,
            res.spread(server, name, query.rate).show() + res.marks(server, name),
            res.ratio(server, name, query.rate),
        ]
        line += [
            res.spread(server, name, query.latency("p50")).show(spread=False),
            res.spread(server, name, query.p99).show(),
            res.spread(server, name, query.latency("p99.9")).show(spread=False),
            res.spread(server, name, query.cpu).show("{:.2f}"),
            res.ratio(server, name, query.cpu),
            res.spread(server, name, query.cpu_pct).show("{:.0f}", spread=False),
            mib(res.median(server, name, query.rss)),
            kib(res.median(server, name, query.rss_per_conn)),
        ]
        rows.append(line)
    return table(header, rows)


def _ran_any(res: Results, cells: list[dict[str, Any]]) -> list[str]:
    """The servers with figures in any of ``cells``: the rows of a family's table."""
    return [s for s in res.data["servers"] if any(res.figures(s, c["name"]) for c in cells)]


def handshake_table(res: Results) -> list[str]:
    """The TLS handshake cells, one row each: every server's handshakes per second, its
    CPU per handshake, and (echod's) both against the C TLS server's."""
    cells = handshake_cells(res)
    servers = _ran_any(res, cells)
    header = ["workload"]
    for server in servers:
        header += [f"{server} hs/s", f"{server} CPU µs/hs"]
        if server not in res.references:
            header += [f"{server} hs/s vs C", f"{server} CPU vs C"]
    rows = []
    for cell in cells:
        name = cell["name"]
        line = [cell["label"]]
        for server in servers:
            if res.not_run(server, name):
                line += ["not run"] * (2 if server in res.references else 4)
                continue
            line += [
                res.spread(server, name, query.rate).show(spread=False) + res.marks(server, name),
                res.spread(server, name, query.cpu).show("{:.1f}", spread=False),
            ]
            if server not in res.references:
                line += [res.ratio(server, name, query.rate), res.ratio(server, name, query.cpu)]
        rows.append(line)
    return table(header, rows)


def handshake_cells(res: Results) -> list[dict[str, Any]]:
    """The TLS handshake cells (``--churn`` over TLS)."""
    return [c for c in res.tls_cells if "--churn" in c["args"]]


def c_client_handshakes(res: Results) -> bool:
    """Whether the C handshake client drove any server in the handshake cells."""
    cells = handshake_cells(res)
    return any(res.figures(s, c["name"], C_CLIENT) for s in res.data["servers"] for c in cells)


def handshake_c_client_table(res: Results) -> list[str]:
    """The handshake cells as the C handshake client drove them, one row per cell and
    server: its handshakes/s and the server's CPU per handshake over its window, both
    against the C TLS server's; echod-bench's rate beside, from the same rounds."""
    cells = handshake_cells(res)
    servers = [
        s for s in res.data["servers"] if any(res.figures(s, c["name"], C_CLIENT) for c in cells)
    ]
    header = [
        "workload", "backend", "hs/s, C client", "vs C", "server CPU µs/hs", "vs C",
        "server CPU %", "C client CPU %", "hs/s, echod-bench", "echod-bench / C client",
    ]  # fmt: skip

    def versus(server: str, cell: str, metric: query.Metric) -> str:
        found = res.relative(server, cell, metric, C_CLIENT)
        return "-" if found is None or server == res.reference_for(cell) else f"{found:.2f}"

    rows = []
    for cell in cells:
        name = cell["name"]
        for server in servers:
            if res.not_run(server, name, C_CLIENT):
                continue
            ratio = res.of_c_client(server, name)
            rows.append(
                [
                    cell["label"],
                    _name(res, server),
                    res.spread(server, name, query.rate, C_CLIENT).show()
                    + res.marks(server, name, C_CLIENT),
                    versus(server, name, query.rate),
                    res.spread(server, name, query.cpu, C_CLIENT).show("{:,.0f}"),
                    versus(server, name, query.cpu),
                    res.spread(server, name, query.cpu_pct, C_CLIENT).show("{:.0f}", spread=False),
                    res.generator_cpu(server, name, C_CLIENT).show("{:.0f}", spread=False),
                    res.spread(server, name, query.rate).show(spread=False)
                    + res.marks(server, name),
                    "-" if ratio is None else f"{ratio:.2f}",
                ]
            )
    return table(header, rows)


def proxy_table(res: Results, plain: str = "churn") -> list[str]:
    """Each backend's churn with and without a PROXY header: what the header costs a
    connection in server CPU, as the difference of the medians (the cells ran in the
    same rounds)."""
    servers = _ran_any(res, res.proxy_cells)
    header = ["backend", "conn/s, no header", "CPU µs/conn, no header"]
    for cell in res.proxy_cells:
        version = cell.get("proxy") or cell["name"]
        header += [f"conn/s, {version}", f"CPU µs/conn, {version}", f"{version} header, µs/conn"]
    rows = []
    for server in servers:
        base = res.median(server, plain, query.cpu)
        line = [
            server,
            res.spread(server, plain, query.rate).show(spread=False) + res.marks(server, plain),
            res.spread(server, plain, query.cpu).show("{:.2f}", spread=False),
        ]
        for cell in res.proxy_cells:
            name = cell["name"]
            if res.not_run(server, name):
                line += ["not run"] * 3
                continue
            mine = res.median(server, name, query.cpu)
            line += [
                res.spread(server, name, query.rate).show(spread=False) + res.marks(server, name),
                res.spread(server, name, query.cpu).show("{:.2f}", spread=False),
                "-" if mine is None or base is None else f"{mine - base:+.2f} ({mine / base:.2f}x)",
            ]
        rows.append(line)
    return table(header, rows)
