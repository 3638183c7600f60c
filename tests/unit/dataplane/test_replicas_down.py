"""While every replica of a version is down (a worker or actor restarting, the Ray cluster lost): a query with a
latency SLO is refused at once (429) instead of queued to expire; one without a deadline waits for a replica."""

from __future__ import annotations

import asyncio
from types import MappingProxyType
from typing import Any

import numpy as np
import pytest

from sloserve.catalog import CatalogSnapshot, LoadedModel, RunningVersion
from sloserve.dataplane.dataplane import DataPlane
from sloserve.dataplane.selector import RESELECT_S
from sloserve.errors import ResourceExhaustedError
from sloserve.metrics import ServingMetrics
from sloserve.model_config import HedgingConfig, ModelConfig, TensorSpec
from sloserve.protocol.types import InferRequest, InferResponse, Tensor
from sloserve.replica import Arrays
from sloserve.testing import FakeClock, FakeReplica
from sloserve.testing.fakes import settle
from sloserve.types import ModelName, VersionId
from sloserve.variant import LatencyStats, VariantProfile

V1 = VersionId("1")
CONFIG = ModelConfig(
    name=ModelName("m"),
    inputs=(TensorSpec("x", "FP32", (-1, 2)),),
    outputs=(TensorSpec("y", "FP32", (-1, 2)),),
    max_batch_size=4,
    hedging=HedgingConfig(enabled=False),
)
PROFILE = VariantProfile(
    {1: LatencyStats(1.0, 1.0, 1.0)}, 1.0, 0.1, 4, 1000.0, 0.97, None, 50.0, 1000, 10.0, 100, 10, 1.0
)


def triple(inputs: Arrays) -> dict[str, np.ndarray[Any, Any]]:
    return {"y": inputs["x"] * np.float32(3)}


def request(parameters: dict[str, Any]) -> InferRequest:
    x = np.array([[1.0, 2.0]], np.float32)
    return InferRequest(model_name="m", inputs=[Tensor("x", "FP32", x.shape, x)], parameters=parameters)


async def answer(plane: DataPlane, clock: FakeClock, parameters: dict[str, Any]) -> InferResponse:
    """Infer, moving the clock on while the request is held for others to join its batch."""
    pending = asyncio.ensure_future(plane.infer(request(parameters)))
    for _ in range(10):
        await settle()
        if pending.done():
            break
        await clock.advance(0.001)
    assert pending.done(), "no answer within 10 ms"
    return pending.result()


async def test_a_version_whose_replicas_are_all_down_refuses_slo_queries_and_keeps_the_rest_waiting() -> None:
    clock = FakeClock()
    plane = DataPlane(clock, ServingMetrics())
    fakes = [FakeReplica(f"r{i}", 1, compute=triple) for i in range(2)]
    running = RunningVersion(V1, tuple(fakes))
    loaded = LoadedModel(CONFIG, (V1,), V1, MappingProxyType({V1: running}), MappingProxyType({V1: PROFILE}))
    await plane.apply_catalog(CatalogSnapshot(loaded=MappingProxyType({CONFIG.name: loaded})))
    try:
        assert (await answer(plane, clock, {"latency_slo_ms": 50})).parameters["variant"] == "1"
        fakes[0].healthy_flag = False
        assert (await answer(plane, clock, {"latency_slo_ms": 50})).parameters["variant"] == "1"  # the other one
        fakes[1].healthy_flag = False
        for _ in range(3):
            with pytest.raises(ResourceExhaustedError):
                await answer(plane, clock, {"latency_slo_ms": 50})
            await clock.advance(2 * RESELECT_S)  # past the kept choice: every query looks again
        patient = asyncio.ensure_future(plane.infer(request({})))
        for _ in range(5):
            await clock.advance(0.02)
        assert not patient.done() and not any(f.batches[2:] for f in fakes)
        fakes[1].healthy_flag = True
        await clock.advance(0.02)
        assert (await patient).outputs[0].data.tolist() == [[3.0, 6.0]]
        assert (await answer(plane, clock, {"latency_slo_ms": 50})).parameters["variant"] == "1"
    finally:
        await settle()
        await plane.apply_catalog(CatalogSnapshot())
