"""Helpers for the tests on a real Ray cluster."""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx

from sloserve.cluster.ray.replica import RayReplica
from tests.integration.serverkit import ServerThread


def repository_with_instances(source: Path, target: Path, instances: int) -> Path:
    """A copy of the digits repository serving ``instances`` replicas."""
    shutil.copytree(source / "digits", target / "digits")
    config_path = target / "digits" / "config.json"
    config = json.loads(config_path.read_text())
    config["instance_count"] = instances
    config_path.write_text(json.dumps(config))
    return target


def ray_server(repository: Path, address: str, **settings: Any) -> ServerThread:
    """A real Server whose replicas are actors on the cluster at ``address`` (autoscaler off)."""
    return ServerThread(repository, ray_address=address, autoscale_interval_s=0.0, **settings).start()


def replicas(server: ServerThread, model: str = "digits") -> tuple[RayReplica, ...]:
    assert server.server is not None
    loaded = server.server.lifecycle.loaded[model]  # type: ignore[index]
    found = loaded.running[loaded.default].replicas
    assert all(isinstance(r, RayReplica) for r in found)
    return found  # type: ignore[return-value]


def wait_for(condition: Callable[[], bool], timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {timeout_s:g} s")
        time.sleep(0.1)


def ready_status(http_url: str) -> int:
    try:
        return httpx.get(f"http://{http_url}/v2/health/ready", timeout=2.0).status_code
    except httpx.HTTPError:
        return -1
