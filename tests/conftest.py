"""Markers by folder: tests/unit -> unit, tests/integration -> integration. And tritonclient's HTTP client
finalized on any thread (:func:`_tritonclient_http_finalized_anywhere`)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        parts = item.path.parts
        for marker in ("unit", "integration"):
            if marker in parts:
                item.add_marker(getattr(pytest.mark, marker))


@pytest.fixture(autouse=True, scope="session")
def _tritonclient_http_finalized_anywhere() -> Iterator[None]:
    """tritonclient's HTTP client sits in reference cycles (gevent), so the cyclic collector may finalize it on
    whichever thread allocates at the time (a server's, Ray's), and its ``__del__`` (``close()``, which joins a
    gevent pool) then raises gevent's InvalidThreadUseError there, which pytest reports against the test that
    happens to run then (seen in ``test_cluster_status_json``, after other tests had closed their clients).
    The tests close their clients; a finalizer on another thread has nothing left to do but that error."""
    from gevent.exceptions import InvalidThreadUseError
    from tritonclient.http import InferenceServerClient

    finalize = InferenceServerClient.__del__

    def finalize_anywhere(self: Any) -> None:
        try:
            finalize(self)
        except InvalidThreadUseError:
            pass

    InferenceServerClient.__del__ = finalize_anywhere
    yield
    InferenceServerClient.__del__ = finalize
