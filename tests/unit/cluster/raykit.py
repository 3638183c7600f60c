"""Helpers for the RayReplica / RayCluster unit tests (fake backend, fake clock)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

from sloserve.cluster.ray.actor import ActorInit
from sloserve.cluster.ray.backend import ActorSpec
from sloserve.cluster.ray.fake import FakeRayBackend
from sloserve.cluster.ray.replica import RayReplica
from sloserve.testing import FakeClock
from sloserve.types import ReplicaId

T = TypeVar("T")


def artifact(root: Path, content: bytes = b"model-bytes", version: str = "1") -> Path:
    path = root / "m" / version / "model.onnx"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(content)
    return path


def make_replica(
    backend: FakeRayBackend,
    clock: FakeClock,
    model: Path,
    *,
    frontend: str = "fe-a",
    cpus: float = 1.0,
    index: int = 0,
    **options: Any,
) -> RayReplica:
    init = ActorInit("m", "1", index, "", 1, frontend, lease_ttl_s=30.0, num_cpus=cpus)
    spec = ActorSpec(f"m/1/{index}", "sloserve", cpus, 0.0, init)
    settings: dict[str, Any] = {"start_timeout_s": 2.0, "probe_timeout_s": 0.05}
    settings.update(options)
    return RayReplica(ReplicaId(f"{frontend}-m-1-{index}"), spec, model, backend, clock=clock, **settings)


def batch(rows: int = 2) -> dict[str, np.ndarray[Any, Any]]:
    return {"x": np.arange(rows * 3, dtype=np.float32).reshape(rows, 3)}


async def until(condition: Callable[[], bool], clock: FakeClock | None = None, limit: int = 2000) -> None:
    """Let the loop (and the model-reading thread) run, advancing ``clock``, until ``condition`` holds."""
    for _ in range(limit):
        if condition():
            return
        if clock is not None:
            await clock.advance(0.05)
        await asyncio.sleep(0.001)
    raise AssertionError("the condition never held")


async def drive(clock: FakeClock, work: Awaitable[T]) -> T:
    """Await ``work`` while advancing the fake clock (it sleeps on it)."""
    task = asyncio.ensure_future(work)
    await until(task.done, clock)
    return task.result()
