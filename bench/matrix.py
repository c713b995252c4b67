"""The fixed matrix: what each cell sends, and how long the full and quick runs take."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Cell:
    name: str
    label: str
    args: tuple[str, ...]
    connections: int


FULL = (
    Cell("rr-64", "64 B rr, 100 conns", ("--size", "64", "--connections", "100"), 100),
    Cell("rr-1k", "1 KiB rr, 100 conns", ("--size", "1024", "--connections", "100"), 100),
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
        "idle-10k",
        "10k conns, 100 active",
        ("--size", "64", "--connections", "10000", "--active", "100", "--connect-timeout", "10"),
        10_000,
    ),
)

QUICK = (
    FULL[0],
    FULL[3],
    Cell(
        "idle-2k",
        "2k conns, 100 active",
        ("--size", "64", "--connections", "2000", "--active", "100"),
        2000,
    ),
)


@dataclass(frozen=True)
class Timing:
    rounds: int
    duration: float
    warmup: float


FULL_TIMING = Timing(rounds=3, duration=4.0, warmup=1.0)
QUICK_TIMING = Timing(rounds=1, duration=0.5, warmup=0.2)
