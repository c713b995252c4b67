"""Backends are found by name, and only the platform's own are offered."""

from __future__ import annotations

import select
import sys

import pytest

from echod import backends


def test_the_reactor_selectors_offered_match_the_platform() -> None:
    names = backends.available()
    assert ("epoll" in names) == hasattr(select, "epoll")
    assert ("kqueue" in names) == hasattr(select, "kqueue")
    assert {"select", "selectors", "asyncio"} <= set(names)


def test_the_default_is_the_best_selector_here() -> None:
    expected = (
        "epoll" if hasattr(select, "epoll") else "kqueue" if hasattr(select, "kqueue") else "poll"
    )
    assert backends.default_name() == expected


def test_loading_imports_the_backend_only_when_chosen() -> None:
    sys.modules.pop("echod.backends.aio", None)
    backends.available()
    assert "echod.backends.aio" not in sys.modules
    assert backends.load("asyncio").name == "asyncio"
    assert "echod.backends.aio" in sys.modules


@pytest.mark.parametrize("name", ["nope", "kqueue" if hasattr(select, "epoll") else "epoll"])
def test_unknown_or_missing_backends_name_the_available_ones(name: str) -> None:
    with pytest.raises(backends.BackendUnavailable, match=r"available here: .*select"):
        backends.load(name)
