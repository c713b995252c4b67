"""The fixed matrix: what each cell sends, and how long the full and quick runs take."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from bench.certs import LABELS


@dataclass(frozen=True)
class Cell:
    """One workload. A cell with ``workers`` is the workers comparison (issue 4).

    It runs only ``backends``, each at every worker count, unpinned: two workers need
    both cores, so server and generator share them, and pinning one to a core would
    measure the pinning instead.
    """

    name: str
    label: str
    args: tuple[str, ...]
    connections: int
    workers: tuple[int, ...] = ()
    backends: tuple[str, ...] = ()
    # "few" and "many": the two sides of the "Which IO model?" comparison (issue 6).
    role: str = ""
    # The C client (issue 9) drives every server too, right after echod-bench in the same
    # round: the generator ceiling (both against the C reference) and each row's
    # echod-bench / C client are ratios of runs side by side, not minutes apart.
    c_client: bool = False
    # More connections than one process may hold open (the hard limit): echod serves
    # them over this many workers in reuseport mode, and only ``spread_backends`` are
    # run (the others say why not, run.obstacle).
    spread: int = 0
    spread_backends: tuple[str, ...] = ()
    # A TLS cell (issue 19): the key type of the server's certificate (certs.KEYS). It
    # runs on the TLS-capable servers, its ratios against the C TLS reference.
    tls: str = ""
    # A PROXY header cell (issue 18): "v1" or "v2", sent first on every connection to a
    # proxy-v1:/proxy-v2: listener trusting 127.0.0.1; echod backends only.
    proxy: str = ""
    # Servers that run the cell (empty: every one it applies to); the others that could
    # say why not, once (run.obstacle).
    only: tuple[str, ...] = ()
    # The least warmup the cell needs: 100 TLS handshakes at once take up to ~0.7 s
    # here under other load, and a handshake in the window is CPU not spent on echo.
    min_warmup: float = 0.0

    @property
    def handshakes(self) -> bool:
        """A TLS handshake cell: connect, handshake, echo once, close, again."""
        return bool(self.tls) and "--churn" in self.args

    @property
    def family(self) -> str:
        """Which section of the report the cell belongs to: "tls", "proxy" or ""."""
        return "tls" if self.tls else "proxy" if self.proxy else ""


# C100k (issue 9): how server CPU per request, p99 and RSS per connection grow from
# 1k to 100k connections held, 100 of them busy.  One source address reaches one
# server port through ~28k ephemeral ports, so the load comes from eight loopback
# addresses; run.py raises the descriptor limits with prlimit.
C100K_SOURCES = "127.0.0.2-127.0.0.9"


def c100k(connections: int, name: str, sources: str = C100K_SOURCES, spread: int = 0) -> Cell:
    return Cell(
        name,
        f"{connections:,} conns, 100 active, 64 B",
        ("--size", "64", "--connections", str(connections), "--active", "100",
         "--source-address", sources, "--connect-timeout", "30",
         *(("--processes", str(spread)) if spread else ())),
        connections,
        role="c100k",
        spread=spread,
        spread_backends=("epoll", "uvloop", "uring") if spread else (),
    )  # fmt: skip


# 100,000 connections do not fit one process under a 20,000-file hard limit: six
# workers (reuseport spreads within about 1%) and six generator processes hold ~16,700
# each. The loops that scale per connection run it: epoll, uvloop and uring.
C100K_SPREAD = 6
C100K = (
    c100k(1_000, "c100k-1k"),
    c100k(10_000, "c100k-10k"),
    c100k(100_000, "c100k-100k", spread=C100K_SPREAD),
)
# Not in any matrix: the C100k path at a size any machine holds (--cells c100k-3k).
C100K_SMALL = c100k(3_000, "c100k-3k", "127.0.0.2-127.0.0.3")
# Not in any matrix: 10,000 connections over the 100k cell's six workers, so that
# the RSS slope from 10k to 100k compares the same processes, leaving out the
# workers' own baseline (issue 17): --cells c100k-10k-w6,c100k-100k.
C100K_10K_SPREAD = dataclasses.replace(
    c100k(10_000, "c100k-10k-w6", spread=C100K_SPREAD),
    label=f"10,000 conns over {C100K_SPREAD} workers, 100 active, 64 B",
    role="",
)
OPT_IN = (C100K_SMALL, C100K_10K_SPREAD)

PLAIN = (
    Cell(
        "rr-64", "64 B rr, 100 conns", ("--size", "64", "--connections", "100"), 100, c_client=True
    ),
    Cell(
        "rr-1k",
        "1 KiB rr, 100 conns",
        ("--size", "1024", "--connections", "100"),
        100,
        c_client=True,
    ),
    Cell("rr-16k", "16 KiB rr, 100 conns", ("--size", "16384", "--connections", "100"), 100),
    Cell(
        "pipe16-1k",
        "1 KiB pipelined x16",
        ("--size", "1024", "--connections", "100", "--pipeline", "16"),
        100,
    ),
    Cell(
        "churn", "churn, 64 B, 50 at once", ("--churn", "--size", "64", "--connections", "50"), 50
    ),
    Cell(
        "rr-1k-10", "1 KiB rr, 10 conns", ("--size", "1024", "--connections", "10"), 10, role="few"
    ),
    # 1 KiB like the 10-connection cell, so the two differ only in connections held.
    Cell(
        "idle-10k",
        "10k conns, 100 active, 1 KiB",
        ("--size", "1024", "--connections", "10000", "--active", "100", "--connect-timeout", "10"),
        10_000,
        role="many",
    ),
    Cell(
        "workers-1k",
        "1 KiB rr, 100 conns, 1 vs 2 workers, unpinned",
        ("--size", "1024", "--connections", "100", "--processes", "2"),
        100,
        workers=(1, 2),
        backends=("epoll", "uvloop"),
    ),
    *C100K,
)


# TLS (issue 19): 1 KiB request/response on every TLS-capable server, and TLS 1.3
# handshakes, full and resumed, with each key type. echod-bench verifies every echoed
# byte and, to spend its one core on the handshake, not the server's certificate
# (--insecure). The handshake cells run on the two loops that matter most and the C
# server: four cells on every backend would add a quarter to `make bench`. A Python
# client does as much TLS work per handshake as the server, so the C handshake client
# (echo_hs_client.c) drives each of them too, beside echod-bench, as in the rr cells
# (36 runs more, about 4 minutes).
TLS_ARGS = ("--tls", "--insecure")
HANDSHAKE_SERVERS = ("epoll", "uvloop", "c-tls")


def handshakes(kind: str, resumed: bool) -> Cell:
    how = "resumed" if resumed else "full"
    return Cell(
        f"tls-hs-{kind}{'-resumed' if resumed else ''}",
        f"TLS 1.3 handshakes, {how}, {LABELS[kind]}, 50 at once",
        ("--churn", "--size", "64", "--connections", "50", *TLS_ARGS,
         "--tls-min-version", "1.3", *(("--tls-resume",) if resumed else ())),
        50,
        c_client=True,
        tls=kind,
        only=HANDSHAKE_SERVERS,
    )  # fmt: skip


TLS = (
    Cell(
        "tls-rr-1k",
        "TLS 1 KiB rr, 100 conns, ECDSA P-256",
        ("--size", "1024", "--connections", "100", *TLS_ARGS),
        100,
        tls="ecdsa",
        min_warmup=2.0,
    ),
    handshakes("ecdsa", resumed=False),
    handshakes("ecdsa", resumed=True),
    handshakes("rsa", resumed=False),
    handshakes("rsa", resumed=True),
)
# The PROXY header's cost per connection (issue 18): the churn cell again, each
# connection starting with a v1 or v2 header from a trusted peer; the plain churn
# cell, in the same rounds, is what it is compared with.
PROXY_SERVERS = ("epoll", "asyncio", "uvloop", "uring")
PROXY = tuple(
    Cell(
        f"churn-proxy-{version}",
        f"churn, 64 B, 50 at once, PROXY {version} header",
        ("--churn", "--size", "64", "--connections", "50", "--proxy-protocol", version),
        50,
        proxy=version,
        only=PROXY_SERVERS,
    )
    for version in ("v1", "v2")
)
FULL = (*PLAIN, *TLS, *PROXY)


def named(name: str) -> Cell:
    return next(c for c in FULL if c.name == name)


# A smoke test of every code path, the report's sections included, in under a minute.
QUICK = (
    dataclasses.replace(named("rr-1k-10"), c_client=True),
    Cell(
        "idle-2k",
        "2k conns, 100 active, 1 KiB",
        ("--size", "1024", "--connections", "2000", "--active", "100"),
        2000,
        role="many",
    ),
    named("workers-1k"),
    named("churn"),
    named("tls-rr-1k"),
    named("tls-hs-ecdsa-resumed"),
    named("churn-proxy-v2"),
)


@dataclass(frozen=True)
class Timing:
    rounds: int
    duration: float
    warmup: float


# Each run has ~1.3 s of start, connect and stop around its warmup and measurement: 3
# rounds of 1 + 3.5 s took 27 minutes for 9 servers with the C100k cells, and 50
# minutes (612 runs) for 11 servers with the TLS and PROXY cells, on the shared machine.
FULL_TIMING = Timing(rounds=3, duration=3.5, warmup=1.0)
QUICK_TIMING = Timing(rounds=1, duration=0.5, warmup=0.2)
