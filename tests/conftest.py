"""Markers by folder: tests/unit -> unit, tests/integration -> integration. And tritonclient's HTTP client
finalized on any thread (:func:`_tritonclient_http_finalized_anywhere`)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        parts = item.path.parts
        for marker in ("unit", "integration"):
            if marker in parts:
                item.add_marker(getattr(pytest.mark, marker))


def finalized_quietly(finalize: Callable[[Any], None], client: Any) -> None:
    """Run a tritonclient HTTP client's ``__del__`` (``finalize``), swallowing what gevent raises when that runs on
    a thread that is not the client's: InvalidThreadUseError, or, on a thread whose gevent state is half there,
    an AttributeError from inside gevent's hub lookup (``'_Threadlocal' object has no attribute 'loop'``, seen
    once in ``test_many_concurrent_clients_each_get_their_own_answer``). Anything else is raised."""
    from gevent.exceptions import InvalidThreadUseError

    try:
        finalize(client)
    except InvalidThreadUseError:
        pass
    except AttributeError as error:
        if not _raised_in_gevent(error):
            raise


def _raised_in_gevent(error: BaseException) -> bool:
    frame = error.__traceback__
    while frame is not None:
        if "gevent" in frame.tb_frame.f_code.co_filename:
            return True
        frame = frame.tb_next
    return False


@pytest.fixture(autouse=True, scope="session")
def _tritonclient_http_finalized_anywhere() -> Iterator[None]:
    """tritonclient's HTTP client sits in reference cycles (gevent), so the cyclic collector may finalize it on
    whichever thread allocates at the time (a server's, Ray's, another client's), and its ``__del__``
    (``close()``, which joins a gevent pool) then raises there (:func:`finalized_quietly`), which pytest reports
    against the test that happens to run then (seen in ``test_cluster_status_json``, after other tests had
    closed their clients). The tests close their clients; a finalizer on another thread has nothing left to do
    but that error."""
    from tritonclient.http import InferenceServerClient

    finalize = InferenceServerClient.__del__

    def finalize_anywhere(self: Any) -> None:
        finalized_quietly(finalize, self)

    InferenceServerClient.__del__ = finalize_anywhere
    yield
    InferenceServerClient.__del__ = finalize
