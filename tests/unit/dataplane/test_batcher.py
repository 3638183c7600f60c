"""Dynamic batching with a fake clock and fake replicas: no sleeping, no processes."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from sloserve.dataplane.batcher import _HOLDABLE_MS, INLINE_TURN_S, BatchingSpec, DynamicBatcher
from sloserve.dataplane.replica_set import ReplicaSet
from sloserve.errors import (
    DeadlineExceededError,
    InternalError,
    ReplicaDiedError,
    ResourceExhaustedError,
    UnavailableError,
)
from sloserve.policy.batching import LatencyModel, hold_ms, holdable_ms, lag_hold_scale
from sloserve.replica import Arrays
from sloserve.testing import FakeClock, FakeReplica
from sloserve.testing.fakes import settle


def double(inputs: Arrays) -> dict[str, np.ndarray[Any, Any]]:
    return {"y": inputs["x"] * 2}


def rows(value: float, n: int = 1) -> dict[str, np.ndarray[Any, Any]]:
    return {"x": np.full((n, 2), value, dtype=np.float32)}


def make(
    replicas: list[FakeReplica],
    clock: FakeClock,
    *,
    max_batch: int = 8,
    delay_s: float = 0.0,
    queue: int = 100,
    slo_hold_s: float = 0.0,
) -> DynamicBatcher:
    spec = BatchingSpec(
        max_batch_size=max_batch, max_queue_delay_s=delay_s, max_queue_size=queue, max_slo_hold_s=slo_hold_s
    )
    batcher = DynamicBatcher(spec, ReplicaSet(replicas, ["y"], clock), clock)
    batcher.start()
    return batcher


async def test_requests_merge_while_the_replica_is_busy_and_each_gets_its_own_rows() -> None:
    clock = FakeClock()
    replica = FakeReplica(capacity=1)
    batcher = make([replica], clock)
    first = batcher.submit(rows(1.0), 1)
    await settle()
    assert len(replica.batches) == 1  # idle replica: dispatched at once, no waiting
    later = [batcher.submit(rows(float(v), 2), 2) for v in (2, 3, 4)]
    await settle()
    assert len(replica.batches) == 1  # busy: the next three wait and merge
    replica.complete(0, {"y": np.full((1, 2), 2.0, dtype=np.float32)})
    await settle()
    assert len(replica.batches) == 2
    merged = replica.batches[1]["x"]
    assert merged.shape == (6, 2)
    replica.complete(1, double(replica.batches[1]))
    await settle()
    assert (await first).outputs["y"].tolist() == [[2.0, 2.0]]
    for value, fut in zip((2, 3, 4), later, strict=True):
        got = (await fut).outputs["y"]
        assert got.shape == (2, 2)
        assert np.all(got == value * 2)
    await batcher.close()


async def test_batches_never_exceed_max_batch_size() -> None:
    clock = FakeClock()
    replica = FakeReplica(capacity=1)
    batcher = make([replica], clock, max_batch=4)
    futures = [batcher.submit(rows(float(i), 3 if i % 2 else 1), 3 if i % 2 else 1) for i in range(7)]
    for _ in range(10):
        await settle()
        for i, pending in enumerate(replica._pending):
            if not pending.done():
                replica.complete(i, double(replica.batches[i]))
    await asyncio.gather(*futures)
    assert all(b["x"].shape[0] <= 4 for b in replica.batches)
    assert sum(b["x"].shape[0] for b in replica.batches) == sum(3 if i % 2 else 1 for i in range(7))
    await batcher.close()


async def test_queue_delay_waits_for_more_requests_then_dispatches_on_the_clock() -> None:
    clock = FakeClock()
    replica = FakeReplica(compute=double)
    batcher = make([replica], clock, max_batch=8, delay_s=0.002)
    a = batcher.submit(rows(1.0), 1)
    await settle()
    assert replica.batches == []  # waiting for the window
    await clock.advance(0.001)
    b = batcher.submit(rows(2.0), 1)
    await clock.advance(0.0009)
    assert replica.batches == []
    await clock.advance(0.0002)  # the oldest request's window has passed
    assert len(replica.batches) == 1 and replica.batches[0]["x"].shape == (2, 2)
    ra, rb = await a, await b
    assert ra.queue_s == pytest.approx(0.002, abs=1e-6)
    assert rb.queue_s == pytest.approx(0.001, abs=1e-6)
    await batcher.close()


async def test_a_full_batch_does_not_wait_for_the_window() -> None:
    clock = FakeClock()
    replica = FakeReplica(compute=double)
    batcher = make([replica], clock, max_batch=2, delay_s=10.0)
    futures = [batcher.submit(rows(1.0), 1), batcher.submit(rows(2.0), 1)]
    await settle()
    assert len(replica.batches) == 1
    await asyncio.gather(*futures)
    await batcher.close()


async def test_a_batch_failure_fails_every_request_in_it() -> None:
    clock = FakeClock()
    replica = FakeReplica(capacity=1)
    batcher = make([replica], clock)
    blocker = batcher.submit(rows(0.0), 1)
    await settle()
    futures = [batcher.submit(rows(1.0), 1) for _ in range(3)]
    replica.complete(0, double(replica.batches[0]))
    await settle()
    replica.fail(1, InternalError("model exploded"))
    await blocker
    for fut in futures:
        with pytest.raises(InternalError, match="model exploded"):
            await fut
    await batcher.close()


async def test_the_queue_is_bounded() -> None:
    clock = FakeClock()
    replica = FakeReplica(capacity=1)
    batcher = make([replica], clock, queue=2)
    batcher.submit(rows(0.0), 1)
    await settle()  # dispatched: the queue is empty again
    batcher.submit(rows(1.0), 1)
    batcher.submit(rows(1.0), 1)
    with pytest.raises(ResourceExhaustedError, match="queue is full"):
        batcher.submit(rows(1.0), 1)
    assert batcher.queued == 2


async def test_least_loaded_replica_takes_the_next_batch() -> None:
    clock = FakeClock()
    r0, r1 = FakeReplica("r0", capacity=1), FakeReplica("r1", capacity=1)
    batcher = make([r0, r1], clock)
    batcher.submit(rows(1.0), 1)
    await settle()
    batcher.submit(rows(2.0), 1)
    await settle()
    assert len(r0.batches) == 1 and len(r1.batches) == 1


async def test_a_batch_whose_replica_dies_is_retried_once_on_another() -> None:
    clock = FakeClock()
    dying, healthy = FakeReplica("dying", capacity=1), FakeReplica("ok", capacity=1, compute=double)
    batcher = make([dying, healthy], clock)
    fut = batcher.submit(rows(3.0), 1)
    await settle()
    assert len(dying.batches) == 1
    dying.healthy_flag = False
    dying.fail(0, ReplicaDiedError("worker killed"))
    result = await fut
    assert result.outputs["y"].tolist() == [[6.0, 6.0]]
    assert len(healthy.batches) == 1
    await batcher.close()


async def test_a_second_death_is_reported_as_unavailable() -> None:
    clock = FakeClock()
    replica = FakeReplica(capacity=1)
    batcher = make([replica], clock)
    fut = batcher.submit(rows(1.0), 1)
    await settle()
    replica.fail(0, ReplicaDiedError("first death"))
    await settle()
    assert len(replica.batches) == 2  # retried on the (restarted) replica
    replica.fail(1, ReplicaDiedError("second death"))
    with pytest.raises(UnavailableError, match="failed twice"):
        await fut
    await batcher.close()


async def test_close_drains_queued_requests_and_refuses_new_ones() -> None:
    clock = FakeClock()
    replica = FakeReplica(compute=double)
    batcher = make([replica], clock)
    futures = [batcher.submit(rows(float(i)), 1) for i in range(5)]
    await batcher.close()
    assert all(f.done() for f in futures)  # type: ignore[attr-defined]
    with pytest.raises(UnavailableError):
        batcher.submit(rows(1.0), 1)


# ---- deadlines: EDF order, drops before compute, AIMD, a window bounded by the head's deadline ----------


async def test_the_queue_is_earliest_deadline_first() -> None:
    clock = FakeClock()
    replica = FakeReplica(capacity=1)
    batcher = make([replica], clock, max_batch=1)
    blocker = batcher.submit(rows(0.0), 1)
    await settle()
    now = clock.now()
    late = batcher.submit(rows(1.0), 1, deadline_s=now + 10)
    none = batcher.submit(rows(2.0), 1)
    soon = batcher.submit(rows(3.0), 1, deadline_s=now + 1)
    for i in range(4):
        await settle()
        replica.complete(i, double(replica.batches[i]))
    await asyncio.gather(blocker, late, none, soon)
    order = [float(b["x"][0, 0]) for b in replica.batches]
    assert order == [0.0, 3.0, 1.0, 2.0]


async def test_a_request_that_cannot_make_its_deadline_is_dropped_before_compute() -> None:
    clock = FakeClock()
    replica = FakeReplica(capacity=1)
    batcher = make([replica], clock)
    batcher.model = LatencyModel(intercept_ms=5.0, per_row_ms=0.0)
    blocker = batcher.submit(rows(0.0), 1)
    await settle()
    doomed = batcher.submit(rows(1.0), 1, deadline_s=clock.now() + 0.008)
    fine = batcher.submit(rows(2.0), 1, deadline_s=clock.now() + 1.0)
    await clock.advance(0.004)  # 4 ms pass; a batch takes 5 ms: 4 + 5 > 8
    replica.complete(0, double(replica.batches[0]))
    await settle()
    with pytest.raises(
        DeadlineExceededError,
        match=r"before compute.*\(4\.0 ms of it left after 4\.0 ms in the batching queue; a batch takes ~5\.00 ms\)",
    ):
        await doomed
    replica.complete(1, double(replica.batches[1]))
    assert (await fine).outputs["y"][0, 0] == 4.0
    assert [float(b["x"][0, 0]) for b in replica.batches] == [0.0, 2.0]  # never ran the doomed one
    assert batcher.expired == 1
    await blocker


async def test_a_request_with_more_rows_than_a_batch_is_dropped_by_its_own_rows() -> None:
    """Unbatched (max_batch_size 0), a request may have any rows: its deadline is judged by its own prediction,
    not a full batch's (the check spares requests whose deadline a full batch makes)."""
    clock = FakeClock()
    replica = FakeReplica(capacity=1)
    batcher = make([replica], clock, max_batch=0)
    batcher.model = LatencyModel(intercept_ms=1.0, per_row_ms=1.0)
    doomed = batcher.submit(rows(1.0, 5), 5, deadline_s=clock.now() + 0.003)  # 5 rows take 6 ms
    await settle()
    assert doomed.done() and not replica.batches
    with pytest.raises(DeadlineExceededError, match="before compute"):
        await doomed
    fine = batcher.submit(rows(2.0), 1, deadline_s=clock.now() + 0.003)  # one row, 2 ms
    await settle()
    replica.complete(0, double(replica.batches[0]))
    assert (await fine).outputs["y"][0, 0] == 4.0
    assert batcher.expired == 1
    await batcher.close()


async def test_a_request_is_dropped_when_its_deadline_passes_while_no_replica_can_take_it() -> None:
    """Not when a replica frees up (or comes back) later: a client with a 10 ms SLO hears within ~10 ms."""
    clock = FakeClock()
    busy, down = FakeReplica("busy", capacity=1), FakeReplica("down", capacity=1)
    down.healthy_flag = False
    batcher = make([busy, down], clock)
    batcher.model = LatencyModel(intercept_ms=2.0, per_row_ms=0.0)
    blocker = batcher.submit(rows(0.0), 1)
    await settle()
    doomed = batcher.submit(rows(1.0), 1, deadline_s=clock.now() + 0.010)
    patient = batcher.submit(rows(2.0), 1)  # no deadline: it waits for a replica
    for _ in range(20):
        await clock.advance(0.002)
    assert doomed.done() and not patient.done()
    with pytest.raises(DeadlineExceededError, match="before compute"):
        await doomed
    assert batcher.expired == 1 and len(busy.batches) == 1
    busy.complete(0, double(busy.batches[0]))
    await settle()
    busy.complete(1, double(busy.batches[1]))
    assert (await patient).outputs["y"][0, 0] == 4.0
    await blocker


async def test_batch_size_shrinks_to_fit_the_tightest_deadline() -> None:
    clock = FakeClock()
    replica = FakeReplica(capacity=1)
    batcher = make([replica], clock, max_batch=32)
    batcher.model = LatencyModel(intercept_ms=1.0, per_row_ms=1.0)
    blocker = batcher.submit(rows(0.0), 1)
    await settle()
    now = clock.now()
    futures = [batcher.submit(rows(1.0), 1, deadline_s=now + 0.0045) for _ in range(10)]
    replica.complete(0, double(replica.batches[0]))
    await settle()
    assert replica.batches[1]["x"].shape[0] == 3  # 1 + 1 * 3 = 4 ms <= 4.5 ms of slack
    for i in range(1, 5):
        if i < len(replica.batches):
            replica.complete(i, double(replica.batches[i]))
        await settle()
    await blocker
    assert sum(f.done() for f in futures) >= 3


async def test_aimd_halves_the_limit_after_a_slow_batch_and_grows_after_a_fast_one() -> None:
    clock = FakeClock()
    replica = FakeReplica(capacity=1)
    batcher = make([replica], clock, max_batch=32)
    assert batcher.limit == 32
    slow = batcher.submit(rows(1.0), 1, deadline_s=clock.now() + 0.004)
    await settle()
    assert len(replica.batches) == 1
    await clock.advance(0.0045)  # the batch alone took longer than its 4 ms SLO
    replica.complete(0, double(replica.batches[0]))
    await slow
    assert batcher.limit == 16
    fast = batcher.submit(rows(1.0), 1, deadline_s=clock.now() + 1.0)
    await settle()
    replica.complete(1, double(replica.batches[1]))
    await fast
    assert batcher.limit == 20


async def test_lateness_from_waiting_does_not_shrink_batches() -> None:
    """Requests late because they queued behind others: smaller batches would only lower throughput."""
    clock = FakeClock()
    replica = FakeReplica(capacity=1)
    batcher = make([replica], clock, max_batch=32)
    first = batcher.submit(rows(1.0), 1)
    await settle()
    waiting = batcher.submit(rows(2.0), 1, deadline_s=clock.now() + 0.004)
    await clock.advance(0.0035)  # the second request waits 3.5 ms for the replica
    replica.complete(0, double(replica.batches[0]))
    await first
    await settle()
    await clock.advance(0.003)  # then runs in 3 ms: done after its 4 ms deadline
    replica.complete(1, double(replica.batches[1]))
    await waiting
    assert batcher.limit == 32


async def test_the_window_never_holds_the_head_past_its_deadline() -> None:
    clock = FakeClock()
    replica = FakeReplica(compute=double)
    batcher = make([replica], clock, max_batch=8, slo_hold_s=1.0)
    batcher.model = LatencyModel(intercept_ms=19.0, per_row_ms=0.0)
    fut = batcher.submit(rows(1.0), 1, deadline_s=clock.now() + 0.020)  # may be held 3 ms (a fifth of 20 - 5)
    await settle()
    await clock.advance(0.0009)
    assert replica.batches == []
    await clock.advance(0.0002)  # 1.1 ms: the head must go now to finish by 20 ms
    assert len(replica.batches) == 1
    await fut
    await batcher.close()


async def test_a_request_with_a_deadline_is_held_a_fifth_of_its_slo_beyond_5_ms_for_others_to_join() -> None:
    clock = FakeClock()
    replica = FakeReplica(compute=double)
    batcher = make([replica], clock, max_batch=8, slo_hold_s=0.002)
    batcher.model = LatencyModel(intercept_ms=0.5, per_row_ms=0.01)
    first = batcher.submit(rows(1.0), 1, deadline_s=clock.now() + 0.010)  # held until 1 ms
    await settle()
    await clock.advance(0.0006)
    second = batcher.submit(rows(2.0), 1, deadline_s=clock.now() + 0.030)  # its own hold (2 ms) is longer
    await settle()
    await clock.advance(0.0003)
    assert replica.batches == []
    await clock.advance(0.0002)  # 1.1 ms: the first one's hold is over; both go together
    assert len(replica.batches) == 1 and replica.batches[0]["x"].shape == (2, 2)
    assert (await first).queue_s == pytest.approx(0.001, abs=1e-6)
    await second
    await batcher.close()


async def test_no_request_is_held_while_too_few_come_to_join_a_hold_and_holds_resume_when_enough_do() -> None:
    """A hold pays only if a request is expected to join it (:func:`holds_gather`): at one request every 60 ms a
    2 ms hold expects 0.03, so a lone request goes at once (from the first: a new batcher has seen no traffic);
    after 50 ms at 1,000 a second (2 expected) the next is held again, and then a stall (one quiet window) does
    not stop that."""
    clock = FakeClock()
    replica = FakeReplica(compute=double)
    batcher = make([replica], clock, max_batch=8, slo_hold_s=0.002)
    for i in range(3):
        await clock.advance(0.06)
        quiet = batcher.submit(rows(1.0), 1, deadline_s=clock.now() + 0.030)
        await settle()
        assert len(replica.batches) == i + 1
        assert (await quiet).queue_s == 0.0
    answers = []
    for _ in range(49):  # one every ms: not held until the window that counts them ends
        await clock.advance(0.001)
        answers.append(batcher.submit(rows(2.0), 1, deadline_s=clock.now() + 0.030))
        await settle()
    assert len(replica.batches) == 3 + 49
    await clock.advance(0.002)  # 51 ms since the last decision, 50 requests in them
    held = batcher.submit(rows(3.0), 1, deadline_s=clock.now() + 0.030)
    await settle()
    assert len(replica.batches) == 52  # held: 2 ms for the next to join
    await clock.advance(0.001)
    joined = batcher.submit(rows(4.0), 1, deadline_s=clock.now() + 0.030)
    await clock.advance(0.001)
    assert len(replica.batches) == 53 and replica.batches[-1]["x"].shape == (2, 2)
    await clock.advance(0.2)  # a stall: the window it ends had 2 requests in 201 ms
    after = batcher.submit(rows(5.0), 1, deadline_s=clock.now() + 0.030)
    await settle()
    assert len(replica.batches) == 53  # still held
    await clock.advance(0.002)
    assert len(replica.batches) == 54
    await asyncio.gather(*answers, held, joined, after)
    await batcher.close()


async def test_a_tighter_request_arriving_during_a_hold_brings_the_batch_forward() -> None:
    clock = FakeClock()
    replica = FakeReplica(compute=double)
    batcher = make([replica], clock, max_batch=8, slo_hold_s=0.002)
    loose = batcher.submit(rows(1.0), 1, deadline_s=clock.now() + 0.030)  # held the 2 ms cap
    await settle()
    await clock.advance(0.0005)
    tight = batcher.submit(rows(2.0), 1, deadline_s=clock.now() + 0.010)  # held 1 ms: until 1.5 ms
    await settle()
    await clock.advance(0.0009)
    assert replica.batches == []
    await clock.advance(0.0002)
    assert len(replica.batches) == 1 and replica.batches[0]["x"].shape == (2, 2)
    await asyncio.gather(loose, tight)
    await batcher.close()


async def test_a_hold_ends_when_the_batch_fills_and_requests_without_a_deadline_are_not_held() -> None:
    clock = FakeClock()
    replica = FakeReplica(compute=double)
    batcher = make([replica], clock, max_batch=2, slo_hold_s=0.002)
    held = [batcher.submit(rows(1.0), 1, deadline_s=clock.now() + 0.010)]
    await settle()
    assert replica.batches == []
    held.append(batcher.submit(rows(2.0), 1, deadline_s=clock.now() + 0.010))
    await settle()
    assert len(replica.batches) == 1  # full: no waiting out the hold
    await asyncio.gather(*held)
    plain = batcher.submit(rows(3.0), 1)
    await settle()
    assert len(replica.batches) == 2  # no deadline, no max_queue_delay: at once
    await plain
    await batcher.close()


async def test_service_time_excludes_waiting_behind_the_batch_ahead_in_the_replica() -> None:
    """A replica runs its in-flight batches in order: the second one's service starts when the first ends."""
    clock = FakeClock()
    replica = FakeReplica(capacity=2)
    seen: list[tuple[int, float]] = []
    spec = BatchingSpec(max_batch_size=8, max_queue_delay_s=0.0, max_queue_size=100)
    batcher = DynamicBatcher(spec, ReplicaSet([replica], ["y"], clock), clock, lambda n, s: seen.append((n, s)))
    batcher.start()
    first = batcher.submit(rows(1.0), 1)
    await settle()
    await clock.advance(0.001)
    second = batcher.submit(rows(2.0, 2), 2)
    await settle()
    assert len(replica.batches) == 2  # both in flight on the one replica
    await clock.advance(0.003)
    replica.complete(0, double(replica.batches[0]))
    await settle()
    await clock.advance(0.002)
    replica.complete(1, double(replica.batches[1]))
    await settle()
    await asyncio.gather(first, second)
    assert seen == [(1, pytest.approx(0.004)), (2, pytest.approx(0.002))]
    assert (await second).compute_s == pytest.approx(0.005)  # the client's compute_ms: dispatch to answer
    await batcher.close()


async def test_service_time_ends_when_the_replica_finished_not_when_the_loop_read_the_answer() -> None:
    """A busy event loop reading an answer late is the front end's time, not the replica's."""
    from sloserve.replica import ReplicaOutputs

    clock = FakeClock()
    replica = FakeReplica(capacity=1)
    seen: list[tuple[int, float]] = []
    spec = BatchingSpec(max_batch_size=8, max_queue_delay_s=0.0, max_queue_size=100)
    batcher = DynamicBatcher(spec, ReplicaSet([replica], ["y"], clock), clock, lambda n, s: seen.append((n, s)))
    batcher.start()
    future = batcher.submit(rows(1.0), 1)
    await settle()
    started = clock.now()
    await clock.advance(0.005)  # the answer is read 5 ms after dispatch; the replica was done after 1 ms
    answer = ReplicaOutputs(double(replica.batches[0]))
    answer.done_at = started + 0.001
    replica.complete(0, answer)
    result = await future
    assert seen == [(1, pytest.approx(0.001))]
    assert result.compute_s == pytest.approx(0.005)  # the client's view is unchanged
    await batcher.close()


async def test_a_batch_that_came_near_its_deadline_halves_the_holds_after_it() -> None:
    clock = FakeClock()
    replica = FakeReplica(capacity=1)
    batcher = make([replica], clock, max_batch=8, slo_hold_s=0.002)
    fut = batcher.submit(rows(1.0), 1, deadline_s=clock.now() + 0.010)
    await settle()
    await clock.advance(0.002)  # held 1 ms, then runs
    assert len(replica.batches) == 1
    await clock.advance(0.005)  # done at 7 ms of its 10: near its deadline
    replica.complete(0, double(replica.batches[0]))
    await fut
    assert batcher.hold_scale == 0.5
    nxt = batcher.submit(rows(2.0), 1, deadline_s=clock.now() + 0.010)
    await settle()
    await clock.advance(0.0011)  # held half as long: 0.5 ms
    assert len(replica.batches) == 2
    replica.complete(1, double(replica.batches[1]))
    await nxt
    assert batcher.hold_scale == pytest.approx(0.52)  # that one finished well within: creeping back
    await batcher.close()


async def test_no_request_is_held_while_the_event_loop_runs_behind() -> None:
    clock = FakeClock()
    replica = FakeReplica(compute=double)
    spec = BatchingSpec(max_batch_size=8, max_queue_delay_s=0.0, max_queue_size=100, max_slo_hold_s=0.002)
    loop = Loop(hold_share=lag_hold_scale(2.0), room=0.0)
    batcher = DynamicBatcher(spec, ReplicaSet([replica], ["y"], clock), clock, loop=loop)
    batcher.start()
    await batcher.submit(rows(1.0), 1, deadline_s=clock.now() + 0.010)  # answered without the clock moving
    loop.hold_share = lag_hold_scale(0.1)
    held = batcher.submit(rows(2.0), 1, deadline_s=clock.now() + 0.010)
    await settle()
    assert len(replica.batches) == 1
    await clock.advance(0.002)
    assert len(replica.batches) == 2
    await held
    await batcher.close()


async def test_a_tight_request_is_held_only_while_the_event_loop_has_room() -> None:
    """A 5 ms request is not held on a busy loop; on one with half its room (80% busy) it waits 0.7 ms for
    others, and on one with all of it (at most 75% busy) 2 ms."""
    clock = FakeClock()
    replica = FakeReplica(compute=double)
    spec = BatchingSpec(max_batch_size=8, max_queue_delay_s=0.0, max_queue_size=100, max_slo_hold_s=0.002)
    loop = Loop(hold_share=1.0, room=0.0)
    batcher = DynamicBatcher(spec, ReplicaSet([replica], ["y"], clock), clock, loop=loop)
    batcher.start()
    await batcher.submit(rows(1.0), 1, deadline_s=clock.now() + 0.005)  # busy: answered without the clock moving
    loop.room = 0.5  # a 3 ms reserve, 0.35 of the rest
    held = batcher.submit(rows(2.0), 1, deadline_s=clock.now() + 0.005)
    joins = batcher.submit(rows(3.0), 1, deadline_s=clock.now() + 0.005)
    await settle()
    await clock.advance(0.0006)
    assert len(replica.batches) == 1
    await clock.advance(0.0002)
    assert len(replica.batches) == 2 and replica.batches[1]["x"].shape[0] == 2  # one batch of both
    await held
    await joins
    loop.room = 1.0
    held = batcher.submit(rows(4.0), 1, deadline_s=clock.now() + 0.005)
    await settle()
    await clock.advance(0.0019)
    assert len(replica.batches) == 2
    await clock.advance(0.0002)
    assert len(replica.batches) == 3
    await held
    await batcher.close()


@dataclass
class Loop:
    hold_share: float
    room: float

    @property
    def holdable_ms(self) -> float:
        return holdable_ms(self.room)


class InlineFake(FakeReplica):
    """A replica that computes on the event loop (like ``InlineReplica``): ``compute`` answers at once."""

    inline = True

    def compute(self, inputs: Arrays, output_names: Any) -> dict[str, np.ndarray[Any, Any]]:
        self.batches.append(inputs)
        if self.crashing:
            raise InternalError("the model failed")
        return double(inputs)


async def test_inline_batches_take_what_arrived_in_one_turn_and_run_without_a_task() -> None:
    clock = FakeClock()
    replica = InlineFake()
    batcher = make([replica], clock)
    futures = [batcher.submit(rows(float(v)), 1) for v in range(5)]
    assert replica.batches == []  # nothing runs inside submit: the requests of this turn are one batch
    await settle()
    assert [b["x"].shape[0] for b in replica.batches] == [5]
    for v, future in enumerate(futures):
        assert (await future).outputs["y"].tolist() == [[2.0 * v, 2.0 * v]]
    more = [batcher.submit(rows(1.0), 1) for _ in range(11)]  # more than a batch: 8, then 3, in the same turn
    await settle()
    assert [b["x"].shape[0] for b in replica.batches[1:]] == [8, 3]
    assert all(f.done() for f in more)
    await batcher.close()
    inline = InlineFake()
    held = make([inline], clock, slo_hold_s=0.002)  # inline replicas hold too: the batch's own cost is shared
    loose = held.submit(rows(3.0), 1, deadline_s=clock.now() + 0.025)  # a fifth of 20 ms, at most 2 ms
    await settle()
    await clock.advance(0.001)
    assert not loose.done()
    tight = held.submit(rows(4.0), 1, deadline_s=clock.now() + 0.005)  # not held: takes the loose one along
    await settle()
    assert loose.done() and tight.done()
    assert [b["x"].shape[0] for b in inline.batches] == [2]
    await held.close()
    batcher = make([replica], clock)
    replica.crashing = True
    failing = batcher.submit(rows(1.0), 1)
    await settle()
    with pytest.raises(InternalError, match="the model failed"):
        await failing
    await batcher.close()


async def test_inline_batches_run_on_in_their_turn_after_a_hold() -> None:
    """The batcher yields the loop after running inline batches for ``INLINE_TURN_S``; a hold is not running:
    the loop had its turns meanwhile, so the batches after it run on in the same turn."""
    clock = FakeClock()
    inline = InlineFake()
    batcher = make([inline], clock, delay_s=INLINE_TURN_S + 0.005)
    batcher.model = LatencyModel(intercept_ms=0.5, per_row_ms=1.0)
    loose = [batcher.submit(rows(1.0), 1) for _ in range(3)]  # no deadline: held 25 ms
    await settle()
    await clock.advance(INLINE_TURN_S + 0.0049)  # past INLINE_TURN_S, all of it held
    assert inline.batches == []
    tight = batcher.submit(rows(2.0, 6), 6, deadline_s=clock.now() + 0.007)  # fills the batch: no more hold
    await asyncio.sleep(0)  # one turn: the batcher's
    # 8 rows would take 8.5 ms, past the 6 rows' deadline: they go alone (6.5 ms), the three right after
    assert [b["x"].shape[0] for b in inline.batches] == [6, 3]
    assert tight.done() and all(f.done() for f in loose)
    await batcher.close()


class SlowInline(InlineFake):
    """An inline replica whose every batch takes ``batch_s`` of the clock's time, as computing on the loop does."""

    def __init__(self, clock: FakeClock, batch_s: float) -> None:
        super().__init__()
        self._clock, self._batch_s = clock, batch_s

    def compute(self, inputs: Arrays, output_names: Any) -> dict[str, np.ndarray[Any, Any]]:
        self._clock._now += self._batch_s  # the loop's time passes while it computes; no one else runs
        return super().compute(inputs, output_names)


async def test_inline_batches_run_what_waits_in_one_turn_up_to_inline_turn_s() -> None:
    """A turn of inline batches runs everything that waited when it began, not 2 ms of it: near the loop's
    capacity a burst left more than that waiting, and every turn then read for longer than the last while the
    batches kept to their 2 ms. Only a slow model's batches are cut at ``INLINE_TURN_S``."""
    clock = FakeClock()
    inline = SlowInline(clock, 0.001)
    batcher = make([inline], clock, queue=400)  # 8 rows a batch
    burst = [batcher.submit(rows(1.0), 1) for _ in range(40)]  # 5 batches of 1 ms
    await asyncio.sleep(0)  # one turn: the batcher's
    assert [b["x"].shape[0] for b in inline.batches] == [8] * 5
    assert all(f.done() for f in burst)
    await batcher.close()
    slow = SlowInline(clock, INLINE_TURN_S * 0.3)
    batcher = make([slow], clock, queue=400)
    burst = [batcher.submit(rows(1.0), 1) for _ in range(64)]  # 8 batches, each 30% of the bound
    await asyncio.sleep(0)
    assert len(slow.batches) == 4  # the fourth passes the bound: then the loop reads
    assert sum(f.done() for f in burst) == 32
    await settle()
    assert len(slow.batches) == 8 and all(f.done() for f in burst)
    await batcher.close()


@given(st.floats(0.0, 100.0), st.floats(0.0, 50.0), st.floats(0.0, 1.0), st.floats(0.0, 1.0))
def test_a_request_with_too_little_budget_to_be_held_is_not_worked_out(
    budget_ms: float, max_hold_ms: float, scale: float, room: float
) -> None:
    """``submit`` skips :func:`hold_ms` below ``holdable_ms(room)`` of budget (``_HOLDABLE_MS`` with no room): it
    would have said 0 there."""
    if budget_ms < _HOLDABLE_MS:
        assert hold_ms(budget_ms, max_hold_ms, scale) == 0.0
    if budget_ms < holdable_ms(room):
        assert hold_ms(budget_ms, max_hold_ms, scale, room) == 0.0
