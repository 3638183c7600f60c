"""The test harness itself (``tests/conftest.py``)."""

from __future__ import annotations

import gc
import threading
from typing import Any

import pytest
import tritonclient.http as httpclient

from tests.conftest import finalized_quietly


def test_a_closed_tritonclient_http_client_finalized_on_another_thread_is_no_error() -> None:
    # Without the conftest's finalizer gevent raises InvalidThreadUseError in __del__ on the other thread, and
    # pytest (unraisable exceptions are errors here) fails whichever test is running.
    client = httpclient.InferenceServerClient("127.0.0.1:1")  # connects on first use only
    client.close()
    held = [client]
    del client

    def drop() -> None:
        held.clear()
        gc.collect()

    thread = threading.Thread(target=drop)
    thread.start()
    thread.join()


def _raiser(filename: str, error: str) -> Any:
    """A finalizer that raises ``error`` from code compiled as if in ``filename``."""
    namespace: dict[str, object] = {}
    exec(compile(f"def finalize(client):\n    raise {error}\n", filename, "exec"), namespace)
    return namespace["finalize"]


def test_what_gevent_raises_on_a_foreign_thread_is_swallowed_and_nothing_else() -> None:
    finalized_quietly(_raiser("src/gevent/_hub_local.py", "AttributeError('loop')"), object())
    finalized_quietly(
        _raiser("x.py", "__import__('gevent.exceptions').exceptions.InvalidThreadUseError()"),
        object(),
    )
    with pytest.raises(AttributeError):
        finalized_quietly(_raiser("tritonclient/http/_client.py", "AttributeError('a bug')"), object())
    with pytest.raises(ValueError):
        finalized_quietly(_raiser("src/gevent/pool.py", "ValueError('other')"), object())
