"""Hedged batches in ReplicaSet.execute: fake clock and fake replicas, no sleeping, no processes."""

from __future__ import annotations

import asyncio
import random
from typing import Any

import numpy as np
import pytest

from sloserve.dataplane.batcher import BatchingSpec, DynamicBatcher
from sloserve.dataplane.hedger import Hedger
from sloserve.dataplane.replica_set import ReplicaSet
from sloserve.errors import InternalError, UnavailableError
from sloserve.model_config import HedgingConfig
from sloserve.policy.hedging import HedgeParams
from sloserve.replica import Arrays
from sloserve.testing import FakeClock, FakeReplica
from sloserve.testing.fakes import settle
from sloserve.types import ReplicaId

FAST_S = 0.001
SLOW_S = 0.050
STEP_S = 0.0005


def double(inputs: Arrays) -> dict[str, np.ndarray[Any, Any]]:
    return {"y": inputs["x"] * 2}


def batch(value: float, n: int = 1) -> dict[str, np.ndarray[Any, Any]]:
    return {"x": np.full((n, 2), value, dtype=np.float32)}


class Lab:
    """Three replicas whose batches take FAST_S, except the ones the test makes slow."""

    def __init__(self, params: HedgeParams, *, capacity: int = 2, seed: int = 0) -> None:
        self.clock = FakeClock()
        self.slow: dict[str, set[int]] = {}
        self.all_slow: set[str] = set()
        self.outage = random.Random(seed)  # latencies in an outage: 20 to 80 ms
        self.replicas = [self._replica(f"r{i}", capacity) for i in range(3)]
        self.hedger = Hedger(HedgingConfig(), self.clock, params)
        self.set = ReplicaSet(self.replicas, ["y"], self.clock, hedger=self.hedger, rng=random.Random(seed))

    def _replica(self, name: str, capacity: int) -> FakeReplica:
        self.slow[name] = set()

        def delay(index: int) -> float:
            if name in self.all_slow:
                return self.outage.uniform(0.020, 0.080)
            return SLOW_S if index in self.slow[name] else FAST_S

        return FakeReplica(name, capacity, compute=double, clock=self.clock, delay_s=delay)

    def by_name(self, name: str) -> FakeReplica:
        return next(r for r in self.replicas if r.id == name)

    async def start(self, inputs: Arrays, on: str | None = None) -> asyncio.Task[dict[str, np.ndarray[Any, Any]]]:
        """Start a batch, on replica ``on`` if given (the others look unhealthy while it is routed)."""
        if on is not None:
            for r in self.replicas:
                r.healthy_flag = r.id == on
        replica = await self.set.acquire()
        for r in self.replicas:
            r.healthy_flag = True
        task = asyncio.create_task(self.set.execute(replica, inputs))
        await settle()
        return task

    async def finish(self, task: asyncio.Task[Any], limit_s: float = 1.0) -> float:
        """Advance the clock until ``task`` is done; the fake time it took from now."""
        started = self.clock.now()
        while not task.done():
            await self.clock.advance(STEP_S)
            assert self.clock.now() - started < limit_s, "the batch never finished"
        return self.clock.now() - started

    async def warm_up(self, batches: int = 40) -> None:
        for i in range(batches):
            await self.finish(await self.start(batch(float(i))))


WARM = HedgeParams(min_samples=10, budget=0.5, burst=5.0)


async def test_a_hedge_cuts_the_latency_of_a_batch_stuck_on_a_straggler_and_the_loser_is_cancelled() -> None:
    lab = Lab(WARM)
    await lab.warm_up()
    straggler = lab.by_name("r0")
    lab.slow["r0"].add(len(straggler.batches))  # r0's next batch takes 50 ms
    task = await lab.start(batch(7.0), on="r0")
    took = await lab.finish(task)
    assert task.result()["y"].tolist() == [[14.0, 14.0]]
    assert took <= 2 * FAST_S + 2 * STEP_S  # the p95 (1 ms), then the backup's 1 ms: not 50 ms
    assert lab.hedger.counts.fired == 1 and lab.hedger.counts.won == 1 and lab.hedger.counts.cancelled == 1
    assert straggler.cancelled == [len(straggler.batches) - 1]  # the straggling run was cancelled
    await settle()
    assert all(lab.set.reserved(r) == 0 for r in lab.replicas)  # every slot given back


async def test_no_hedge_before_the_live_quantile_is_known_or_when_the_batch_is_fast() -> None:
    lab = Lab(WARM)
    lab.slow["r0"].add(0)
    took = await lab.finish(await lab.start(batch(1.0), on="r0"))
    assert took >= SLOW_S  # a cold start: no samples, no hedge
    await lab.warm_up()
    assert lab.hedger.counts.fired == 0  # fast batches finish before their p95 timer... mostly
    assert lab.hedger.counts.batches == 41


async def test_the_original_answering_first_wins_and_the_backup_is_cancelled() -> None:
    lab = Lab(WARM)
    await lab.warm_up()
    r0 = lab.by_name("r0")
    lab.slow["r0"].add(len(r0.batches))
    for r in lab.replicas[1:]:
        lab.slow[r.id].add(len(r.batches))  # the backup will straggle too, and started later
    task = await lab.start(batch(3.0), on="r0")
    took = await lab.finish(task)
    assert took == pytest.approx(SLOW_S, abs=STEP_S)
    assert task.result()["y"].tolist() == [[6.0, 6.0]]
    assert lab.hedger.counts.fired == 1 and lab.hedger.counts.lost == 1 and lab.hedger.counts.won == 0
    backups = [r for r in lab.replicas[1:] if r.cancelled]
    assert len(backups) == 1 and r0.cancelled == []


async def test_the_budget_holds_however_many_batches_straggle() -> None:
    params = HedgeParams(min_samples=10, budget=0.05, burst=2.0)
    lab = Lab(params, seed=3)
    rng = random.Random(7)
    await lab.warm_up()
    for r in lab.replicas:  # a third of every replica's next batches straggle
        lab.slow[r.id].update(i for i in range(len(r.batches), len(r.batches) + 400) if rng.random() < 0.33)
    for i in range(200):
        await lab.finish(await lab.start(batch(float(i))))
    counts = lab.hedger.counts
    assert counts.skipped_no_budget > 0 or counts.fired < counts.batches  # there was demand beyond the budget
    assert counts.fired <= params.budget * counts.batches
    runs = sum(len(r.batches) for r in lab.replicas)
    assert runs == counts.batches + counts.fired  # extra work is exactly the hedges


async def test_in_an_outage_of_every_replica_hedging_backs_off_even_with_budget_to_spare() -> None:
    params = HedgeParams(min_samples=10, budget=1.0, burst=5.0)
    lab = Lab(params)
    await lab.warm_up()
    lab.all_slow.update(r.id for r in lab.replicas)  # an outage: everything takes 20 to 80 ms
    before = lab.hedger.counts.fired
    for i in range(100):
        await lab.finish(await lab.start(batch(float(i))))
    fired = lab.hedger.counts.fired - before
    # A budget of 100% would allow a backup for every batch. The first few fire (no replica has
    # answered slowly yet) and lose; then every replica is slow against its baseline and the batches
    # that outlive the (rising) p95 get no backup: load grows by a few percent at most.
    assert fired <= 6
    assert lab.hedger.counts.skipped_all_slow > 0


def test_the_hedger_refuses_backups_when_every_other_replica_is_slow() -> None:
    clock = FakeClock()
    hedger = Hedger(HedgingConfig(), clock, HedgeParams(min_samples=10, budget=1.0, burst=5.0))
    for _ in range(20):
        hedger.batch_started(1)
        for name in ("r0", "r1", "r2"):
            hedger.observe(ReplicaId(name), 1, FAST_S)
    assert hedger.choose_backup([(ReplicaId("r1"), 0), (ReplicaId("r2"), 0)]) is not None
    for _ in range(5):  # r1 and r2 now answer in 50 ms: their median ratio goes to 50
        for name in ("r1", "r2"):
            hedger.observe(ReplicaId(name), 1, SLOW_S)
    assert hedger.slowness(ReplicaId("r1")) >= 3
    assert hedger.choose_backup([(ReplicaId("r1"), 0), (ReplicaId("r2"), 0)]) is None
    assert hedger.counts.skipped_all_slow == 1
    assert hedger.choose_backup([(ReplicaId("r1"), 0), (ReplicaId("r0"), 1)]) == 1  # r0 is still fast


async def test_a_primary_that_dies_after_the_hedge_fired_is_answered_by_the_backup() -> None:
    lab = Lab(WARM)
    await lab.warm_up()
    r0 = lab.by_name("r0")
    lab.slow["r0"].add(len(r0.batches))
    task = await lab.start(batch(2.0), on="r0")
    await lab.clock.advance(FAST_S + STEP_S)  # the hedge has fired by now
    r0.crashing = True
    took = await lab.finish(task)
    assert task.result()["y"].tolist() == [[4.0, 4.0]]
    assert took < SLOW_S
    assert lab.set.retries == 0  # the backup was the second run: no third


async def test_a_death_before_the_timer_is_retried_once_elsewhere() -> None:
    lab = Lab(WARM)
    await lab.warm_up()
    r0 = lab.by_name("r0")
    r0.crashing = True
    task = await lab.start(batch(5.0), on="r0")
    await lab.finish(task)
    assert task.result()["y"].tolist() == [[10.0, 10.0]]
    assert lab.set.retries == 1


async def test_two_deaths_are_unavailable_and_a_model_error_is_not_hedged_away() -> None:
    lab = Lab(WARM)
    await lab.warm_up()
    for r in lab.replicas:
        r.crashing = True
    task = await lab.start(batch(1.0))
    await lab.finish(task)
    with pytest.raises(UnavailableError, match="failed twice"):
        task.result()

    lab = Lab(WARM)
    await lab.warm_up()
    broken = lab.by_name("r1")
    broken._compute = lambda inputs: (_ for _ in ()).throw(InternalError("model exploded"))
    task = await lab.start(batch(1.0), on="r1")
    await lab.finish(task)
    with pytest.raises(InternalError, match="exploded"):
        task.result()


async def test_no_hedge_without_a_free_slot_on_another_replica() -> None:
    lab = Lab(WARM, capacity=1)
    await lab.warm_up()
    r0 = lab.by_name("r0")
    lab.slow["r0"].add(len(r0.batches))
    for r in lab.replicas:
        lab.slow[r.id].update({len(r.batches), len(r.batches) + 1})
    blockers = [await lab.start(batch(0.0), on=name) for name in ("r1", "r2")]
    task = await lab.start(batch(1.0), on="r0")
    took = await lab.finish(task)
    assert took >= SLOW_S - STEP_S
    assert lab.hedger.counts.fired == 0 and lab.hedger.counts.skipped_no_replica >= 1
    for blocker in blockers:
        await lab.finish(blocker)


async def test_through_the_batcher_every_request_is_answered_once_with_its_own_rows() -> None:
    lab = Lab(HedgeParams(min_samples=10, budget=0.3, burst=5.0), seed=5)
    spec = BatchingSpec(max_batch_size=4, max_queue_delay_s=0.0, max_queue_size=1000)
    batcher = DynamicBatcher(spec, lab.set, lab.clock)
    batcher.start()
    rng = random.Random(11)
    for r in lab.replicas:
        lab.slow[r.id].update(i for i in range(10, 400) if rng.random() < 0.15)
    answers: dict[int, list[np.ndarray[Any, Any]]] = {}
    futures = []
    for i in range(150):
        fut = batcher.submit(batch(float(i), 1 + i % 3), 1 + i % 3)
        fut.add_done_callback(lambda f, i=i: answers.setdefault(i, []).append(f.result().outputs["y"]))
        futures.append(fut)
        await lab.clock.advance(STEP_S)  # a request every 0.5 ms: busy, with free slots for backups
    while not all(f.done() for f in futures):
        await lab.clock.advance(STEP_S)
    await settle()
    for i in range(150):
        assert len(answers[i]) == 1
        assert answers[i][0].shape == (1 + i % 3, 2) and np.all(answers[i][0] == 2.0 * i)
    counts = lab.hedger.counts
    assert counts.fired > 0 and counts.cancelled == counts.fired  # every hedge left exactly one loser
    answered = sum(len(r.answered) for r in lab.replicas)
    cancelled = sum(len(r.cancelled) for r in lab.replicas)
    assert answered + cancelled == sum(len(r.batches) for r in lab.replicas)
    assert cancelled == counts.cancelled
    await batcher.close()


async def test_a_failing_backup_does_not_fail_a_batch_whose_original_still_runs() -> None:
    lab = Lab(WARM)
    await lab.warm_up()
    r0 = lab.by_name("r0")
    lab.slow["r0"].add(len(r0.batches))
    for r in lab.replicas[1:]:
        r._compute = lambda inputs: (_ for _ in ()).throw(UnavailableError("backup replica unavailable"))
    task = await lab.start(batch(4.0), on="r0")
    took = await lab.finish(task)
    assert task.result()["y"].tolist() == [[8.0, 8.0]]  # the straggling original still answered
    assert took == pytest.approx(SLOW_S, abs=STEP_S)
    assert lab.hedger.counts.fired == 1
