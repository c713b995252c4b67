"""The robustness cases at a short scale: the backends meet them, the naive server fails them.

The full counts (10,000 connections, 1 GiB, 50,000 cycles) on every backend run in
``make robust``. To keep this form near a minute, every case runs on one backend of each
IO model — ``epoll`` stands for the reactor family, whose ``poll``, ``select`` and
``selectors`` rows differ only by the selector class — and the interleavings, the case
most likely to catch a backend-specific slip, run on every backend.
"""

from __future__ import annotations

import pytest

from echod import backends
from tests.robust.cases import CASES, KNOWN_LIMITS, OPEN_BUGS, Case, run
from tests.robust.harness import NAIVE, SHORT, Target

pytestmark = [pytest.mark.robust, pytest.mark.slow]

REACTOR_ROWS = {"poll", "select", "selectors", "kqueue", "devpoll"}
ONE_PER_MODEL = [name for name in backends.available() if name not in REACTOR_ROWS]
PAIRS = [
    (entry, name)
    for entry in CASES
    for name in (backends.available() if entry.name == "interleavings" else ONE_PER_MODEL)
]


@pytest.mark.parametrize(
    ("entry", "backend"), PAIRS, ids=[f"{entry.name}-{name}" for entry, name in PAIRS]
)
def test_backend_meets_the_case(entry: Case, backend: str) -> None:
    outcome = run(entry, Target(backend), SHORT)
    if outcome.skipped:
        pytest.skip(outcome.skipped)
    known = KNOWN_LIMITS.get((entry.name, backend)) or OPEN_BUGS.get((entry.name, backend))
    if known and not outcome.passed:
        pytest.xfail(f"{known}; {'; '.join(outcome.failures)}")
    assert outcome.passed, f"{'; '.join(outcome.failures)} ({'; '.join(outcome.figures)})"


@pytest.mark.parametrize("entry", CASES, ids=lambda entry: entry.name)
def test_the_naive_server_fails_the_case(entry: Case) -> None:
    """A case the naive server passes could pass with the feature broken."""
    outcome = run(entry, Target(NAIVE), SHORT)
    if outcome.skipped:
        pytest.skip(outcome.skipped)
    assert outcome.failures, f"the naive server passed: {'; '.join(outcome.figures)}"
