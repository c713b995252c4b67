"""The report's generated prose: legends, captions and the sentences drawn from figures.

Each sentence names the numbers it rests on, so no claim in the README can outlive
the run it came from.
"""

from __future__ import annotations

from collections.abc import Callable

from bench import query
from bench.query import Metric, Results

LEGEND = (
    "† the figure shows the generator's limit, not the server's: where the cell measured "
    f"the generator ceiling, the row reached {query.CEILING_SHARE:.0%} of what echod-bench "
    'drives the C reference at there (req/s "vs C"); elsewhere a generator '
    "worker used over 90% of its CPU in at least one round. Compare servers there by CPU "
    "µs/msg. "
    "✗ the generator saw errors, the run failed, or the server had to be killed after "
    "SIGTERM, in at least one round: see Notes. "
    "‡ the figure includes rounds that overlapped other load on the machine (see Notes). "
    "∅ not run: the cell is beyond what the server can do on this machine, or runs on "
    "other servers only; Notes give each reason once."
)

WORKERS_CAVEAT = (
    "Unpinned, and on this machine's 2 cores: the generator's two processes share the cores "
    "with the workers, so a second worker competes with the generator for the CPU it would "
    "need; a machine with spare cores for the generator is needed to show how far workers scale."
)

CEILING_INTRO = (
    "Each server of these cells was driven by echod-bench and, right after it in the same "
    "round, by a minimal C epoll client (`bench/reference/echo_client.c`, every byte "
    "checked too), pinned the same way. What the C client drives the C reference at is "
    "the most this machine lets a generator show; echod-bench's share of it is how much of "
    "a server's speed echod-bench can show at all. Ratios are medians of each round's "
    "pair, so a drift of the machine between rounds cancels out. Second table: where "
    "echod-bench's row is near the C client's against the same server, echod-bench is not "
    "what limits it; the C client's share of its own ceiling asks of the C client what "
    '"vs C" asks of echod-bench.'
)


def has_iomodel(res: Results) -> bool:
    return res.few is not None and res.many is not None


def iomodel_caption(res: Results) -> str:
    assert res.few is not None and res.many is not None
    return f"{res.few['label']} against {res.many['label']}"


def _pair(res: Results) -> tuple[str, str, int, int]:
    """Names and connection counts of the few- and many-connection cells."""
    assert res.few is not None and res.many is not None
    return res.few["name"], res.many["name"], res.few["connections"], res.many["connections"]


def ceiling_findings(res: Results) -> list[str]:
    """Per compared cell: the ratio, and which echod rows reached the ceiling."""
    out = []
    for cell in res.compared:
        judged = cell["name"]
        ours, theirs = res.ceiling(judged), res.ceiling(judged, query.C_CLIENT)
        ratio = res.ceiling_ratio(judged)
        if not ours or not theirs or ratio is None:
            continue
        shares = {
            s: res.share_of_ceiling(s, judged) for s in res.servers if s not in res.references
        }
        bound = [s for s, v in shares.items() if v is not None and v >= query.CEILING_SHARE]
        text = (
            f"**{cell['label']}:** echod-bench drove the C reference at {_fmt_rate(ours)}, "
            f"the C client at {_fmt_rate(theirs)}: {ratio:.2f} of the ceiling (median of "
            "the rounds' ratios)."
        )
        if bound:
            text += (
                f" {len(bound)} of {len(shares)} echod backends reached "
                f"{query.CEILING_SHARE:.0%} of echod-bench's figure there "
                f"({', '.join(bound)}): their req/s is the generator's (†)."
            )
        elif shares:
            text += " No echod backend came within " + (
                f"{1 - query.CEILING_SHARE:.0%} of it: those rows measure the servers."
            )
        text += _against_c_client(res, judged, list(shares))
        out.append(text)
    return out


def _against_c_client(res: Results, cell: str, ours: list[str]) -> str:
    """echod-bench's rows against the C client's on the same servers, and which rows the
    C client could not tell from the C reference either."""
    ratios = {s: r for s in ours if (r := res.of_c_client(s, cell)) is not None}
    if not ratios:
        return ""
    low = min(ratios, key=lambda s: ratios[s])
    text = (
        f" Against the same echod backends echod-bench reached {ratios[low]:.2f} ({low}) to "
        f"{max(ratios.values()):.2f} of the C client's req/s."
    )
    shares = {s: res.c_client_share(s, cell) for s in ours}
    alike = [s for s, v in shares.items() if v is not None and v >= query.CEILING_SHARE]
    if alike:
        text += (
            f" By the C client's own medians, {', '.join(alike)} came within "
            f"{1 - query.CEILING_SHARE:.0%} of what it drove the C reference at: where the two "
            "generators disagree on a row, runs minutes apart differed by more than the "
            "servers do; compare those rows by CPU µs/msg."
        )
    return text


def _fmt_rate(value: float) -> str:
    return f"{value:,.0f} req/s"


def _fmt_cpu(value: float) -> str:
    return f"{value:.2f} µs"


def _fmt_us(value: float) -> str:
    return f"{value:,.0f} µs"


def iomodel_findings(res: Results) -> list[str]:
    """Conclusions computed from the figures: each sentence names the numbers it rests on."""
    few, many, n_few, n_many = _pair(res)
    ours = [s for s in res.servers if s not in res.references]
    ref = res.reference

    def value(server: str, cell: str, metric: Metric) -> float:
        return res.median(server, cell, metric) or 0.0

    def clean(cell: str) -> list[str]:
        """Servers with figures and no transport error in any round of ``cell``."""
        return [s for s in ours if not res.faults(s, cell) and res.median(s, cell, query.cpu)]

    def span(servers: list[str], cell: str, metric: Metric, fmt: Callable[[float], str]) -> str:
        order = sorted(servers, key=lambda s: value(s, cell, metric))
        low, high = order[0], order[-1]
        return (
            f"{fmt(value(low, cell, metric))} ({low}) to {fmt(value(high, cell, metric))} ({high})"
        )

    findings = []
    served = clean(few)
    if served:
        rates = sorted(served, key=lambda s: value(s, few, query.rate))
        text = (
            f"**{n_few:,} connections.** {rates[-1]} served the most "
            f"({_fmt_rate(value(rates[-1], few, query.rate))}) and {rates[0]} the least "
            f"({_fmt_rate(value(rates[0], few, query.rate))}); CPU per request ran from "
            + span(served, few, query.cpu, _fmt_cpu)
        )
        if ref and res.median(ref, few, query.cpu):
            text += f", against {_fmt_cpu(value(ref, few, query.cpu))} for the C reference"
        text += "; p99 from " + span(served, few, query.p99, _fmt_us) + "."
        bound = [s for s in res.servers if res.generator_bound(s, few)]
        if bound:
            text += (
                f" The generator was the limit (†) for {len(bound)} of {len(res.servers)} "
                "servers there, so CPU per request ranks them more fairly than req/s."
            )
        findings.append(text)

    for server, cell, n in ((s, c, n) for c, n in ((few, n_few), (many, n_many)) for s in ours):
        reason = res.not_run(server, cell)
        if reason:
            why = reason.removeprefix("not run").lstrip(": ")
            findings.append(f"**{server} was not run at {n:,} connections**: {why}.")

    for server in (s for s in ours if res.faults(s, many)):
        faults = res.faults(server, many)
        stops = {
            k: n
            for k, n in faults.items()
            if k in query.SERVER_FAULTS or k.startswith("server exit")
        }
        seen = ", ".join(f"{n:,} {k}" for k, n in sorted(faults.items()) if k not in stops)
        why = (
            " — select(2) cannot watch descriptors ≥ 1024 (FD_SETSIZE), so echod turns "
            "those connections away"
            if server == "select"
            else ""
        )
        parts = []
        if seen:
            parts.append(
                f"the generator saw {seen} over the rounds{why}; its {query.count(n_many)} "
                "figures measure only the connections it kept"
            )
        if stops:
            parts.append(
                "it did not stop cleanly on SIGTERM ("
                + ", ".join(
                    f"{k} in {n} round{'s' if n > 1 else ''}" for k, n in sorted(stops.items())
                )
                + ")"
            )
        title = (
            f"did not hold {n_many:,} connections cleanly"
            if seen
            else f"did not stop cleanly at {n_many:,} connections"
        )
        findings.append(f"**{server} {title}**: " + "; ".join(parts) + ".")

    held = [s for s in clean(many) if s in served]
    if held:
        growth = {s: value(s, many, query.cpu) / value(s, few, query.cpu) for s in held}
        order = sorted(held, key=growth.__getitem__)
        worst = order[-1]
        text = (
            f"**{n_many:,} connections, {query.active(res.many)} of them busy.** CPU per request "
            f"grew most for {worst}, {growth[worst]:.2f}x ({_fmt_cpu(value(worst, few, query.cpu))} "
            f"→ {_fmt_cpu(value(worst, many, query.cpu))})"
        )
        if worst in ("poll", "select"):
            text += f": {worst}(2) hands the kernel every descriptor on every wait"
        steady = [s for s in order if growth[s] <= 1.25]
        if steady:
            text += (
                f"; for {', '.join(steady)} it changed by at most "
                f"{max(growth[s] for s in steady):.2f}x"
            )
        text += ". p99 ranged from " + span(held, many, query.p99, _fmt_us) + "."
        findings.append(text)

    memory = [s for s in clean(many) if res.median(s, many, query.rss_per_conn) is not None]
    if len(memory) >= 2:
        order = sorted(memory, key=lambda s: value(s, many, query.rss_per_conn))
        low, high = order[0], order[-1]
        low_kib = value(low, many, query.rss_per_conn) / 1024
        high_kib = value(high, many, query.rss_per_conn) / 1024
        text = (
            f"**Memory.** At {n_many:,} connections each one cost {high} {high_kib:.1f} KiB "
            f"of RSS and {low} {low_kib:.1f} KiB"
        )
        if low_kib >= 0.1:
            text += f" ({high_kib / low_kib:.0f}x)"
        if ref and res.median(ref, many, query.rss_per_conn) is not None:
            text += (
                f"; the C reference, which keeps a buffer per connection, "
                f"{value(ref, many, query.rss_per_conn) / 1024:.1f} KiB"
            )
        findings.append(text + ".")

    if served and held:
        best_few = min(served, key=lambda s: value(s, few, query.cpu))
        best_many = min(held, key=lambda s: value(s, many, query.cpu))
        if best_few == best_many:
            where = (
                f"{best_few} at both ({_fmt_cpu(value(best_few, few, query.cpu))} and "
                f"{_fmt_cpu(value(best_few, many, query.cpu))})"
            )
        else:
            where = (
                f"{best_few} at {n_few:,} connections ({_fmt_cpu(value(best_few, few, query.cpu))}) "
                f"and {best_many} at {n_many:,} ({_fmt_cpu(value(best_many, many, query.cpu))})"
            )
        findings.append(f"**So:** the cheapest echod backend per request was {where}.")
    return findings


def workers_findings(res: Results) -> list[str]:
    cell = res.workers_cell
    if cell is None:
        return []
    name = cell["name"]
    out = []
    for backend in cell["backends"]:
        one, two = f"{backend} x1", f"{backend} x2"
        r1, r2 = res.median(one, name, query.rate), res.median(two, name, query.rate)
        c1, c2 = res.median(one, name, query.cpu), res.median(two, name, query.cpu)
        if r1 and r2 and c1 and c2:
            out.append(
                f"{backend}: 2 workers {_fmt_rate(r2)} against 1 worker {_fmt_rate(r1)} "
                f"({r2 / r1:.2f}x), server CPU {_fmt_cpu(c2)} against {_fmt_cpu(c1)} per message."
            )
    return out


WORKERS_CAVEAT = (
    "Unpinned, and on this machine's 2 cores: the generator's two processes share the cores "
    "with the workers, so a second worker competes with the generator for the CPU it would "
    "need; a machine with spare cores for the generator is needed to show how far workers scale."
)


TLS_INTRO = (
    "echod's TLS listener (`--listen tls:`) and the C TLS server "
    "(`bench/reference/echo_tls.c`, OpenSSL, one thread, epoll), each with a certificate "
    "made by `openssl` for the run. echod-bench speaks TLS from the Python loop (its C "
    "loop cannot), checks every echoed byte, and does not verify the certificate "
    "(`--insecure`), to spend its one core on the handshake. The handshake cells are "
    "`--churn`: connect, handshake, echo 64 B, close; resumed sessions with "
    "`--tls-resume` (a TLS 1.3 ticket). Compare by server CPU per message or handshake, "
    "and by the ratios to the C TLS server, which ran in the same rounds."
)

TLS_C_CLIENT = (
    "The same handshake cells driven by the C handshake client "
    "(`bench/reference/echo_hs_client.c`: OpenSSL, one thread, epoll; every echoed byte "
    "checked; in the resumed cells every handshake after a connection's first must resume, "
    "or the run fails), right beside echod-bench's run of each server. Its rates are what "
    "the issue's handshake goal is judged on; server CPU per handshake is over the C "
    "client's window."
)

PROXY_INTRO = (
    "The churn cell (connect, echo 64 B, close; 50 at once) against a `proxy-v1:` or "
    "`proxy-v2:` listener trusting 127.0.0.1 (`--proxy-from 127.0.0.1/32`), echod-bench "
    "sending the header first (`--proxy-protocol`), beside the plain churn cell of the "
    "same rounds. A header's cost is the difference of the server CPU per connection."
)

# Issue 19's goals, for the benchmark (not tests): TLS request/response CPU per message
# at most 1.3x the C TLS server's on epoll and uvloop; full handshakes per second at
# least 0.8x its.
TLS_CPU_GOAL = 1.3
HANDSHAKE_GOAL = 0.8
TLS_GOAL_BACKENDS = ("epoll", "uvloop")


def tls_findings(res: Results) -> list[str]:
    """Issue 19's goals, each against the figures it rests on."""
    found = []
    rr = next((c for c in res.tls_cells if "--churn" not in c["args"]), None)
    full = [c for c in res.tls_cells if "--churn" in c["args"] and "--tls-resume" not in c["args"]]
    for backend in TLS_GOAL_BACKENDS:
        if rr is not None:
            ratio = res.relative(backend, rr["name"], query.cpu)
            if ratio is not None:
                verdict = "met" if ratio <= TLS_CPU_GOAL else "not met"
                found.append(
                    f"{backend}: TLS 1 KiB rr server CPU per message {ratio:.2f}x the C TLS "
                    f"server's (goal at most {TLS_CPU_GOAL}x: {verdict})."
                )
        for cell in full:
            found += _handshake_goal(res, backend, cell["name"], cell["label"])
    return found


def _handshake_goal(res: Results, backend: str, cell: str, label: str) -> list[str]:
    """The handshake goal in one cell: on the C handshake client's rates where it drove
    both servers, else on echod-bench's."""
    ref = res.reference_for(cell) or ""
    by_c = bool(
        res.figures(backend, cell, query.C_CLIENT) and res.figures(ref, cell, query.C_CLIENT)
    )
    generator = query.C_CLIENT if by_c else query.ECHOD_BENCH
    ratio = res.relative(backend, cell, query.rate, generator)
    if ratio is None:
        return []
    verdict = "met" if ratio >= HANDSHAKE_GOAL else "not met"
    if not by_c:
        mark = (
            " (†: the generator's limit, not the server's)"
            if res.generator_bound(backend, cell)
            else ""
        )
        return [
            f"{backend}: {label}: {ratio:.2f}x the C TLS server's handshakes "
            f"per second (goal at least {HANDSHAKE_GOAL}x: {verdict}){mark}."
        ]
    cpu = res.relative(backend, cell, query.cpu, generator)
    text = (
        f"{backend}: {label}: {ratio:.2f}x the C TLS server's handshakes per second, "
        "driven by the C client"
    )
    if res.generator_bound(ref, cell, generator) and cpu:
        # The C server's rate is the client's: the ratio says nothing of the goal. A
        # server-bound rate is the inverse of the server's CPU per handshake.
        estimate = 1 / cpu
        met = "met" if estimate >= HANDSHAKE_GOAL else "not met"
        text += (
            " († the C client used over 90% of its core against the C TLS server, so the "
            f"rates are the client's limit; server CPU per handshake is {cpu:.2f}x the C "
            f"TLS server's, so a server-bound rate would be about {estimate:.2f}x: goal at "
            f"least {HANDSHAKE_GOAL}x {met})"
        )
        return [text + "."]
    text += f" (goal at least {HANDSHAKE_GOAL}x: {verdict})"
    if cpu is not None:
        text += f"; server CPU per handshake {cpu:.2f}x the C TLS server's"
    if res.generator_bound(backend, cell, generator):
        text += (
            f" († the C client used over 90% of its core against {backend}: its rate is "
            "at least that)"
        )
    return [text + "."]
