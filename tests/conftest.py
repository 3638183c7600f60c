"""Markers by folder: tests/unit -> unit, tests/integration -> integration."""

from __future__ import annotations

import pytest


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        parts = item.path.parts
        for marker in ("unit", "integration"):
            if marker in parts:
                item.add_marker(getattr(pytest.mark, marker))
