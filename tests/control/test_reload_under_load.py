"""Reloads and upgrades under load refuse, reset, close, lose and garble nothing.

The whole matrix (epoll, uvloop, threads and uring in both listen modes) is ``make
reload``, which writes its table into ``docs/control.md``; here epoll, and uring, whose
accepts are completions that outlive their cancel, run with every check.
"""

from __future__ import annotations

import pytest

from tests.control import under_load

# Found by CI on 2026-12-07 (1 run of about 8 on uring): 4 echoes timed out around
# the upgrades, with the drain's accept fix in place; not reproduced since. Open (#17).
OPEN_BUG = "uring: a few echoes time out around an upgrade under load, cause not found"


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["epoll", "uring"])
def test_twenty_reloads_and_three_upgrades_under_load_lose_nothing(backend: str) -> None:
    outcome = under_load.run(backend, "reuseport", reloads=20, upgrades=3, duration=12.0)
    assert outcome.reloads == 20 and outcome.upgrades == 3
    errors = outcome.errors()
    if backend == "uring" and errors and set(errors) == {"timeout"}:
        # The open bug below excuses timeouts alone: a reset, a mismatch or a loss fails.
        pytest.xfail(f"{OPEN_BUG} ({errors})")
    assert errors == {}, outcome.log[-4000:]
    # Every persistent connection stayed up, and echoes went on through every signal.
    assert outcome.rr["connections"]["established"] == 20
    assert outcome.rr["messages"] > 0 and outcome.churn["messages"] > 0
    assert outcome.rr["exit_status"] == 0 and outcome.churn["exit_status"] == 0
    # New code really served: no worker of the first generation is one of the last.
    assert outcome.first_pids and outcome.last_pids
    assert not outcome.first_pids & outcome.last_pids
