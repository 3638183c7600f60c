"""DataPlane.infer_soon: a queued query's answer handed over from the batcher's turn, not a woken task's."""

from __future__ import annotations

import asyncio
from dataclasses import replace

import numpy as np
import pytest

from sloserve.catalog import CatalogSnapshot, RunningVersion
from sloserve.dataplane.dataplane import DataPlane
from sloserve.errors import DeadlineExceededError, NotFoundError, SloserveError
from sloserve.metrics import ServingMetrics
from sloserve.model_config import CacheConfig
from sloserve.protocol.types import InferResponse
from sloserve.testing import FakeClock, FakeReplica
from tests.unit.dataplane.test_cache import CONFIG, V1, infer_request, plane_with, snapshot

NO_CACHE = replace(CONFIG, cache=CacheConfig(enabled=False))


class Answers:
    """What ``infer_soon`` hands over, and which task it was running in then."""

    def __init__(self) -> None:
        self.got: list[InferResponse | SloserveError] = []
        self.tasks: list[asyncio.Task[object] | None] = []
        self.arrived = asyncio.Event()

    def __call__(self, outcome: InferResponse | SloserveError) -> None:
        self.got.append(outcome)
        self.tasks.append(asyncio.current_task())
        self.arrived.set()


async def turns(n: int) -> None:
    for _ in range(n):
        await asyncio.sleep(0)


async def test_a_queued_query_is_answered_from_the_batch_that_ran_it_not_by_waking_its_caller() -> None:
    plane, fakes, _ = await plane_with(NO_CACHE, replicas=1)
    answers = Answers()
    x = np.array([[1.0, 2.0]], np.float32)
    pending = plane.infer_soon(infer_request(x), answers)  # queued: the answer comes later
    assert not isinstance(pending, InferResponse) and not asyncio.iscoroutine(pending)
    assert answers.got == []
    caller = asyncio.current_task()
    await answers.arrived.wait()
    (response,) = answers.got
    assert isinstance(response, InferResponse)
    assert response.outputs[0].data.tolist() == [[3.0, 6.0]] and response.parameters["variant"] == "1"
    assert answers.tasks[0] is not caller and answers.tasks[0] is not None  # the batch's own task
    assert len(fakes[0].batches) == 1
    assert plane._loop_lag.in_flight == 0
    stats = plane.model_stats("m")["model_stats"][0]["inference_stats"]
    assert stats["success"]["count"] == 1
    await plane.apply_catalog(CatalogSnapshot())


async def test_a_batch_failure_reaches_every_answer_of_it_and_the_metrics() -> None:
    plane = DataPlane(FakeClock(), ServingMetrics())
    replica = FakeReplica("waits", 1)  # its batches end when the test says
    await plane.apply_catalog(snapshot(NO_CACHE, RunningVersion(V1, (replica,))))
    answers = Answers()
    for value in (1.0, 2.0, 3.0):
        plane.infer_soon(infer_request(np.array([[value, 0.0]], np.float32)), answers)
    await turns(20)
    assert [len(b["x"]) for b in replica.batches] == [1]  # the first at once; the others wait for the slot
    assert 'sloserve_pending_requests{model="m"} 3.0' in plane._metrics.exposition().decode()
    replica.fail(0, DeadlineExceededError("the replica gave up"))
    await turns(20)
    assert len(answers.got) == 1 and [len(b["x"]) for b in replica.batches] == [1, 2]
    replica.fail(1, DeadlineExceededError("the replica gave up"))
    await turns(20)
    assert len(answers.got) == 3
    assert all(isinstance(a, DeadlineExceededError) for a in answers.got)
    assert plane._loop_lag.in_flight == 0
    stats = plane.model_stats("m")["model_stats"][0]["inference_stats"]
    assert stats["fail"]["count"] == 3
    assert 'sloserve_pending_requests{model="m"} 0.0' in plane._metrics.exposition().decode()
    await plane.apply_catalog(CatalogSnapshot())


async def test_what_needs_no_queue_or_must_wait_otherwise_is_returned_not_handed_over() -> None:
    plane, _, _ = await plane_with(replace(CONFIG, cache=CacheConfig(enabled=True)), replicas=1)
    answers = Answers()
    x = np.array([[1.0, 2.0]], np.float32)
    first = plane.infer_soon(infer_request(x), answers)
    assert not isinstance(first, InferResponse) and not asyncio.iscoroutine(first)  # queued
    await answers.arrived.wait()
    cached = plane.infer_soon(infer_request(x), answers)  # the same input: the cache answers at once
    assert isinstance(cached, InferResponse) and cached.parameters.get("cache") is True
    split = plane.infer_soon(infer_request(np.ones((9, 2), np.float32)), answers)  # over max_batch_size 4
    assert asyncio.iscoroutine(split)
    response = await split
    assert response.outputs[0].data.shape == (9, 2)
    assert len(answers.got) == 1  # only the queued query went through the callback
    with pytest.raises(NotFoundError):  # refused before anything is queued: raised to the caller
        plane.infer_soon(replace(infer_request(x), model_name="nope"), answers)
    await plane.apply_catalog(CatalogSnapshot())


async def test_a_query_cancelled_while_it_waits_is_not_computed_nor_answered_and_counts_as_cancelled() -> None:
    metrics = ServingMetrics()
    plane = DataPlane(FakeClock(), metrics)
    replica = FakeReplica("waits", 1)  # its batches end when the test says
    await plane.apply_catalog(snapshot(NO_CACHE, RunningVersion(V1, (replica,))))
    answers = Answers()
    plane.infer_soon(infer_request(np.array([[1.0, 0.0]], np.float32)), answers)  # runs at once
    gone = plane.infer_soon(infer_request(np.array([[2.0, 0.0]], np.float32)), answers)  # waits for the slot
    kept = plane.infer_soon(infer_request(np.array([[3.0, 0.0]], np.float32)), answers)
    await turns(20)
    assert [len(b["x"]) for b in replica.batches] == [1]
    assert not isinstance(gone, InferResponse) and not asyncio.iscoroutine(gone)
    gone.cancel()  # its client went away
    gone.cancel()  # twice is once
    assert plane._loop_lag.in_flight == 2
    replica.complete(0, {"y": replica.batches[0]["x"]})
    await turns(20)
    assert [b["x"][:, 0].tolist() for b in replica.batches] == [[1.0], [3.0]]  # the next batch without it
    replica.complete(1, {"y": replica.batches[1]["x"]})
    await turns(20)
    assert len(answers.got) == 2 and all(isinstance(a, InferResponse) for a in answers.got)
    assert [a.outputs[0].data[0, 0] for a in answers.got if isinstance(a, InferResponse)] == [1.0, 3.0]
    assert plane._loop_lag.in_flight == 0
    assert 'sloserve_request_failure_total{model="m",reason="cancelled"} 1.0' in metrics.exposition().decode()
    del kept
    await plane.apply_catalog(CatalogSnapshot())


async def test_answers_are_added_up_in_bulk_and_every_reader_sees_them_all() -> None:
    """Answers are counted in the metrics, statistics and load window in bulk, but none is missing from a read:
    the metrics' exposition, the statistics endpoint and the autoscaler's load each add up what waits first."""
    from sloserve.dataplane import host as host_module

    plane, _, _ = await plane_with(NO_CACHE, replicas=1)
    metrics = plane._metrics
    answers = Answers()
    for value in (1.0, 2.0, 3.0):
        plane.infer_soon(infer_request(np.array([[value, 0.0]], np.float32)), answers)
    while len(answers.got) < 3:
        await turns(1)
    (served,) = plane._models["m"].hosts.values()
    assert len(served._answered) == 3  # recorded, not added up yet
    text = metrics.exposition().decode()
    assert 'sloserve_request_success_total{model="m"} 3.0' in text
    assert 'sloserve_pending_requests{model="m"} 0.0' in text
    assert 'sloserve_slo_requests_total{met="true",model="m",variant="1"} 3.0' in text
    plane.infer_soon(infer_request(np.array([[4.0, 0.0]], np.float32)), answers)
    while len(answers.got) < 4:
        await turns(1)
    assert plane.model_stats("m")["model_stats"][0]["inference_stats"]["success"]["count"] == 4
    plane.infer_soon(infer_request(np.array([[5.0, 0.0]], np.float32)), answers)
    while len(answers.got) < 5:
        await turns(1)
    assert served.take_load()[0] == 5 and served._load.waits == 0  # its waits were counted, then taken
    before = host_module.ANSWERED_BULK
    host_module.ANSWERED_BULK = 2  # a full bulk is added up at once, with nobody reading
    try:
        for value in (6.0, 7.0):
            plane.infer_soon(infer_request(np.array([[value, 0.0]], np.float32)), answers)
        while len(answers.got) < 7:
            await turns(1)
        assert served._answered == [] and served.stats.success.count == 7
    finally:
        host_module.ANSWERED_BULK = before
    await plane.apply_catalog(CatalogSnapshot())
