"""The backend's watch on this machine's raylet (a pidfd): it notices the process exit, at any fd number."""

from __future__ import annotations

import os
import resource
import subprocess
import sys

import pytest

from sloserve.cluster.ray import backend

pytestmark = pytest.mark.skipif(not hasattr(os, "pidfd_open"), reason="pidfd is Linux-only")


@pytest.mark.parametrize("fd_number", [None, 1500])  # 1500: past select()'s limit, as on a busy server
def test_the_watch_sees_the_watched_process_exit(monkeypatch: pytest.MonkeyPatch, fd_number: int | None) -> None:
    if fd_number is not None and resource.getrlimit(resource.RLIMIT_NOFILE)[0] <= fd_number:
        pytest.skip("the open-file limit is too low for this fd number")
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    watched = os.pidfd_open(child.pid)
    if fd_number is not None:
        opened, watched = watched, os.dup2(watched, fd_number)
        os.close(opened)
    try:
        monkeypatch.setattr(backend, "_local_raylet", watched)
        assert not backend.local_raylet_gone()
        child.kill()
        child.wait(10)
        assert backend.local_raylet_gone()
        monkeypatch.setattr(backend, "_local_raylet", None)
        assert not backend.local_raylet_gone()  # nothing watched (not connected, or not Linux)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait(10)
        os.close(watched)
