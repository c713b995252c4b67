"""The robustness cases at a short scale: every backend passes, the naive server fails.

The full counts (10,000 connections, 1 GiB, 50,000 cycles) run in ``make robust``.
"""

from __future__ import annotations

import pytest

from echod import backends
from tests.robust.cases import CASES, KNOWN_LIMITS, Case, run
from tests.robust.harness import NAIVE, SHORT, Target

pytestmark = [pytest.mark.robust, pytest.mark.slow]


@pytest.mark.parametrize("backend", backends.available())
@pytest.mark.parametrize("entry", CASES, ids=lambda entry: entry.name)
def test_backend_meets_the_case(entry: Case, backend: str) -> None:
    outcome = run(entry, Target(backend), SHORT)
    if outcome.skipped:
        pytest.skip(outcome.skipped)
    known = KNOWN_LIMITS.get((entry.name, backend))
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
