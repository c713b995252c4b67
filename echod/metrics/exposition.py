"""The Prometheus text format (0.0.4) and OpenMetrics 1.0, written by hand.

Not prometheus_client: its multi-process mode needs a shared writable directory,
which the hardened unit does not have (ProtectSystem=strict, no state directory),
and the supervisor already holds every worker's counters from their pipes. The tests
parse every scrape with prometheus_client's own parsers.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

TEXT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
OPENMETRICS_TYPE = "application/openmetrics-text; version=1.0.0; charset=utf-8"


@dataclass(frozen=True)
class Sample:
    value: float
    labels: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True)
class Family:
    """One metric: ``name`` without the ``_total`` a counter's samples carry."""

    name: str
    kind: str  # "counter" or "gauge"
    help: str
    unit: str = ""  # OpenMetrics: the name must end with it
    samples: Sequence[Sample] = field(default_factory=tuple)


def _escape_help(text: str) -> str:
    return text.replace("\\", "\\\\").replace("\n", "\\n")


def _escape_label(text: str) -> str:
    return text.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _number(value: float) -> str:
    if isinstance(value, int) or (isinstance(value, float) and value.is_integer()):
        return str(int(value))
    return repr(float(value))


def render(families: Iterable[Family], openmetrics: bool = False) -> str:
    lines: list[str] = []
    for family in families:
        sample_name = family.name + ("_total" if family.kind == "counter" else "")
        # Text 0.0.4 names the family as its samples are named; OpenMetrics names a
        # counter without the suffix and adds # UNIT.
        named = family.name if openmetrics else sample_name
        lines.append(f"# HELP {named} {_escape_help(family.help)}")
        lines.append(f"# TYPE {named} {family.kind}")
        if openmetrics and family.unit:
            lines.append(f"# UNIT {named} {family.unit}")
        for sample in family.samples:
            labels = ",".join(f'{k}="{_escape_label(v)}"' for k, v in sample.labels)
            labelled = f"{sample_name}{{{labels}}}" if labels else sample_name
            lines.append(f"{labelled} {_number(sample.value)}")
    if openmetrics:
        lines.append("# EOF")
    return "\n".join(lines) + "\n"
