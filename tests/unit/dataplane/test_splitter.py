"""Scatter-gather: chunks through the real batcher and replica set, fake replicas finishing in any order."""

from __future__ import annotations

import asyncio
import itertools
import random
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sloserve.dataplane.batcher import BatchingSpec, DynamicBatcher
from sloserve.dataplane.replica_set import ReplicaSet
from sloserve.dataplane.splitter import plan_chunks, scatter_gather
from sloserve.errors import InternalError, ReplicaDiedError
from sloserve.replica import Arrays
from sloserve.testing import FakeClock, FakeReplica
from sloserve.testing.fakes import settle


def model(inputs: Arrays) -> dict[str, np.ndarray[Any, Any]]:
    """Row-wise and deterministic, with two outputs of different widths."""
    x = inputs["x"]
    return {"y": x * np.float32(3) + np.float32(1), "s": x.sum(axis=1, keepdims=True)}


def request(rows: int) -> dict[str, np.ndarray[Any, Any]]:
    return {"x": np.arange(rows * 2, dtype=np.float32).reshape(rows, 2) / np.float32(7)}


@given(st.integers(min_value=1, max_value=5000), st.integers(min_value=1, max_value=300))
def test_chunks_cover_the_rows_in_order_each_within_the_best_batch(rows: int, best: int) -> None:
    ranges = plan_chunks(rows, best)
    assert ranges[0][0] == 0 and ranges[-1][1] == rows
    assert all(a[1] == b[0] for a, b in itertools.pairwise(ranges))
    sizes = [stop - start for start, stop in ranges]
    assert max(sizes) <= best and max(sizes) - min(sizes) <= 1
    assert len(ranges) == -(-rows // best)


def test_a_plan_needs_rows_and_a_batch() -> None:
    with pytest.raises(ValueError):
        plan_chunks(0, 8)
    with pytest.raises(ValueError):
        plan_chunks(8, 0)


class Rig:
    def __init__(self, replicas: int, capacity: int, best: int) -> None:
        self.clock = FakeClock()
        self.replicas = [FakeReplica(f"r{i}", capacity) for i in range(replicas)]
        spec = BatchingSpec(max_batch_size=best, max_queue_delay_s=0.0, max_queue_size=1000)
        self.set = ReplicaSet(self.replicas, ["y", "s"], self.clock, rng=random.Random(0))
        self.batcher = DynamicBatcher(spec, self.set, self.clock)
        self.batcher.start()

    def pending(self) -> list[tuple[FakeReplica, int]]:
        return [(r, i) for r in self.replicas for i, f in enumerate(r._pending) if not f.done()]


async def _run_in_random_order(rows: int, best: int, replicas: int, capacity: int, seed: int) -> None:
    rig = Rig(replicas, capacity, best)
    inputs = request(rows)
    task = asyncio.create_task(scatter_gather(rig.batcher.submit, inputs, rows, best))
    rng = random.Random(seed)
    while not task.done():
        await settle()
        pending = rig.pending()
        if not pending:
            continue
        replica, index = rng.choice(pending)  # any chunk in flight may finish next
        replica.complete(index, model(replica.batches[index]))
    result = task.result()
    expected = model(inputs)
    for name in ("y", "s"):
        assert result.outputs[name].shape == expected[name].shape
        assert np.array_equal(result.outputs[name], expected[name])  # bit for bit, in request order
    assert all(b["x"].shape[0] <= best for r in rig.replicas for b in r.batches)
    await rig.batcher.close()


@settings(max_examples=60, deadline=None)
@given(
    rows=st.integers(min_value=1, max_value=300),
    best=st.integers(min_value=1, max_value=40),
    replicas=st.integers(min_value=1, max_value=3),
    capacity=st.integers(min_value=1, max_value=3),
    seed=st.integers(min_value=0, max_value=2**32),
)
def test_answers_are_reassembled_in_order_whatever_order_chunks_finish_in(
    rows: int, best: int, replicas: int, capacity: int, seed: int
) -> None:
    asyncio.run(_run_in_random_order(rows, best, replicas, capacity, seed))


async def test_chunks_spread_over_the_replicas() -> None:
    rig = Rig(replicas=3, capacity=1, best=10)
    task = asyncio.create_task(scatter_gather(rig.batcher.submit, request(30), 30, 10))
    await settle()
    assert [len(r.batches) for r in rig.replicas] == [1, 1, 1]  # three chunks, one per replica, at once
    for r in rig.replicas:
        r.complete(0, model(r.batches[0]))
    await task
    await rig.batcher.close()


async def test_a_chunk_whose_replica_dies_is_run_again_on_another() -> None:
    rig = Rig(replicas=3, capacity=1, best=10)
    inputs = request(30)
    task = asyncio.create_task(scatter_gather(rig.batcher.submit, inputs, 30, 10))
    await settle()
    victim = rig.replicas[1]
    lost = victim.batches[0]["x"].copy()
    victim.healthy_flag = False
    victim.fail(0, ReplicaDiedError("worker killed"))
    for _ in range(10):
        await settle()
        for replica, index in rig.pending():
            replica.complete(index, model(replica.batches[index]))
        if task.done():
            break
    result = task.result()
    assert np.array_equal(result.outputs["y"], model(inputs)["y"])
    rerun = [b for r in rig.replicas if r is not victim for b in r.batches if np.array_equal(b["x"], lost)]
    assert len(rerun) == 1  # the dead replica's chunk, once, elsewhere
    await rig.batcher.close()


async def test_a_failing_chunk_fails_the_request_and_withdraws_the_chunks_still_queued() -> None:
    rig = Rig(replicas=1, capacity=1, best=10)
    task = asyncio.create_task(scatter_gather(rig.batcher.submit, request(50), 50, 10))
    await settle()
    assert rig.batcher.queued == 4  # one chunk running, four waiting
    rig.replicas[0].fail(0, InternalError("model exploded"))
    await settle()
    with pytest.raises(InternalError, match="exploded"):
        task.result()
    await settle()
    assert len(rig.replicas[0].batches) == 1  # the waiting chunks never ran
    await rig.batcher.close()
