"""The test harness itself (``tests/conftest.py``)."""

from __future__ import annotations

import gc
import threading

import tritonclient.http as httpclient


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
