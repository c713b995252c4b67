"""The workers as the supervisor counts them: who runs in which slot, and their sums.

Pure bookkeeping over what the workers report on their channels; the supervisor
(:mod:`echod.service.arbiter`) keeps the records, and the figures it serves (SIGUSR1's
line, STATUS=, a scrape, an upgrade's hand-over) are computed here, so that no
counter ever goes down while workers come and go.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from echod.lifecycle import Stats
from echod.loop import Timer
from echod.metrics.figures import SlotFigures
from echod.service.channel import Channel


@dataclass(eq=False)
class Worker:
    """A forked worker as the supervisor sees it."""

    slot: int  # 1..N, kept across restarts: the id in logs and STATUS=
    pid: int
    channel: Channel  # the supervisor's end
    generation: int  # the configuration it serves
    started: float
    last_seen: float
    ready: bool = False
    killed: bool = False
    asked_to_stop: bool = False  # sent SIGTERM or SIGINT
    draining: bool = False  # said STOPPING: it has begun its drain
    kill_at: float | None = None  # drained by a reload: SIGKILL past this
    held: list[int] = field(default_factory=list)  # signals to send once it has
    counters: Stats = field(default_factory=Stats)


@dataclass
class Slot:
    """What outlives one worker of a slot: its restart back-off and past counters."""

    failures: int = 0
    restart: Timer | None = None
    retired: Stats = field(default_factory=Stats)
    starts: int = 0  # workers forked for it: restarts are starts - 1


def total(inherited: Stats, slots: Mapping[int, Slot], workers: Iterable[Worker]) -> Stats:
    """Everything served: an old echod's totals, retired workers', running workers'."""
    result = Stats()
    result.add(inherited)
    for slot in slots.values():
        result.add(slot.retired)
    for worker in workers:
        result.add(worker.counters)
    return result


def slot_figures(
    slots: Mapping[int, Slot], workers: Iterable[Worker], generation: int
) -> list[SlotFigures]:
    """Per slot: its past workers' last counters plus those of every worker of it still
    running (an old generation's while it drains too), so no counter ever goes down."""
    running = list(workers)
    figures = []
    for number, slot in sorted(slots.items()):
        live = [w for w in running if w.slot == number]
        current = next((w for w in live if w.generation == generation), None)
        counters = Stats()
        counters.add(slot.retired)
        for worker in live:
            counters.add(worker.counters)
        if counters.udp is not None:  # a gauge: the current worker's table alone
            udp = current.counters.udp if current is not None else None
            counters.udp.sources = udp.sources if udp is not None else 0
        figures.append(
            SlotFigures(
                slot=number,
                pid=current.pid if current is not None else None,
                open=sum(w.counters.connections_open for w in live),
                counters=counters,
                restarts=max(slot.starts - 1, 0),
            )
        )
    return figures


def summary(
    sums: Stats, workers: Iterable[Worker], slots: int, generation: int, state: str = ""
) -> str:
    """One line for the log and STATUS=: the sums, then each slot's current worker."""
    running = list(workers)
    per_worker = []
    for number in range(1, slots + 1):
        current = next(
            (w.counters for w in running if w.slot == number and w.generation == generation),
            None,
        )
        if current is not None:
            per_worker.append(f"{number}={current.connections_open}/{current.connections_total}")
        else:
            per_worker.append(f"{number}=down")
    return (
        f"{state}workers={len(running)} connections open={sums.connections_open} "
        f"total={sums.connections_total} dropped={sums.connections_dropped} "
        f"bytes in={sums.bytes_in} out={sums.bytes_out}{sums.refusals()}"
        f"{'' if sums.udp is None else ' ' + sums.udp.summary()}; "
        f"per worker open/total: {' '.join(per_worker)}"
    )
