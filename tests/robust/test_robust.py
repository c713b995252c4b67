"""The robustness cases at a short scale: the backends meet them, and each bound is broken
by the one fault it claims to catch.

The full counts (10,000 connections, 1 GiB, 50,000 cycles) on every backend run in
``make robust``. To keep this form near a few minutes, every case runs on one backend of
each IO model — ``epoll`` stands for the reactor family, whose ``poll``, ``select`` and
``selectors`` rows differ only by the selector class — and the interleavings, the case
most likely to catch a backend-specific slip, run on every backend.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from echod import backends
from tests.robust.cases import (
    CASES,
    CAUGHT_BY,
    KNOWN_LIMITS,
    OPEN_BUG_BREAKS,
    OPEN_BUGS,
    Case,
    run,
)
from tests.robust.fault_server import FAULTS
from tests.robust.harness import FAULT, SHORT, Target

pytestmark = [pytest.mark.robust, pytest.mark.slow]

REACTOR_ROWS = {"poll", "select", "selectors", "kqueue", "devpoll"}
ONE_PER_MODEL = [name for name in backends.available() if name not in REACTOR_ROWS]
PAIRS = [
    (entry, name)
    for entry in CASES
    for name in (backends.available() if entry.name == "interleavings" else ONE_PER_MODEL)
]
BY_NAME = {entry.name: entry for entry in CASES}


@pytest.mark.parametrize(
    ("entry", "backend"), PAIRS, ids=[f"{entry.name}-{name}" for entry, name in PAIRS]
)
def test_backend_meets_the_case(entry: Case, backend: str) -> None:
    outcome = run(entry, Target(backend), SHORT)
    if outcome.skipped:
        pytest.skip(outcome.skipped)
    key = (entry.name, backend)
    known = KNOWN_LIMITS.get(key)
    if known and not outcome.passed:
        pytest.xfail(f"{known}; {'; '.join(outcome.failures)}")
    # An open bug excuses the bound it breaks, alone: churn on threads may break the
    # memory bound, not leak a descriptor or crash.
    bug = OPEN_BUGS.get(key)
    if bug and outcome.broken and set(outcome.broken) <= OPEN_BUG_BREAKS[key]:
        pytest.xfail(f"{bug}; {'; '.join(outcome.failures)}")
    assert outcome.passed, f"{'; '.join(outcome.failures)} ({'; '.join(outcome.figures)})"


@pytest.mark.parametrize(
    ("case_name", "check", "fault"), CAUGHT_BY, ids=[f"{c}-{k}-{f}" for c, k, f in CAUGHT_BY]
)
def test_the_fault_breaks_its_bound(case_name: str, check: str, fault: str) -> None:
    """The case's own bound fails on a server with that fault alone — not a crash of the
    server or the case, not another bound — or the bound could pass with the feature
    broken."""
    assert fault in FAULTS
    outcome = run(BY_NAME[case_name], Target(FAULT + fault), SHORT)
    assert outcome.broken == [check], (
        f"{fault}: expected {check!r} alone to fail, broke {outcome.broken}: "
        f"{'; '.join(outcome.failures)} ({'; '.join(outcome.figures)})"
    )


def test_every_open_bug_names_the_bounds_it_breaks() -> None:
    assert set(OPEN_BUG_BREAKS) == set(OPEN_BUGS)
    for (case_name, _), checks in OPEN_BUG_BREAKS.items():
        assert checks <= {check for c, check, _ in CAUGHT_BY if c == case_name}


def test_every_case_has_a_fault() -> None:
    assert {case for case, _, _ in CAUGHT_BY} == set(BY_NAME)


def test_the_docs_name_every_known_miss() -> None:
    """docs/testing.md says which cases a backend misses: each limit and open bug here."""
    text = (Path(__file__).resolve().parents[2] / "docs" / "testing.md").read_text()
    for case_name, backend in (*KNOWN_LIMITS, *OPEN_BUGS):
        assert f"`{case_name}`" in text and f"`{backend}`" in text, (case_name, backend)
