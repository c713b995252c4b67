"""Registers the ``robust`` marker, so ``pytest -m 'not robust'`` leaves the suite out."""

from __future__ import annotations

import pytest


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "robust: the robustness suite at its short scale")
