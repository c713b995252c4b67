"""Suite-wide hooks: the count of skipped tests, and why, at the end of every run.

A skip is a test that did not run; on a CI machine, where .ci/run installed every tool
and the tests run as root with IPv6 loopback, there are none: a missing precondition
fails there (tests/support.py ``missing``).
"""

from __future__ import annotations

from collections import Counter

import pytest

from tests.support import require_root

# pytester runs sample test files against echod's pytest plugin (tests/api/test_plugin.py).
pytest_plugins = ["pytester"]


@pytest.fixture
def as_root(request: pytest.FixtureRequest) -> None:
    """``pytest.mark.usefixtures("as_root")``: skip without root, fail under CI=true."""
    require_root(request.node.originalname)


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    skipped = terminalreporter.stats.get("skipped", [])
    reasons: Counter[str] = Counter()
    for report in skipped:
        longrepr = report.longrepr
        # A skip's longrepr is (path, line, "Skipped: reason").
        reason = longrepr[2] if isinstance(longrepr, tuple) else str(longrepr)
        reasons[reason.removeprefix("Skipped: ")] += 1
    terminalreporter.write_sep("-", f"{len(skipped)} test(s) skipped")
    for reason, count in reasons.most_common():
        terminalreporter.write_line(f"{count:5d}  {reason}")
