"""ReplicaSet routing and slot accounting with fake replicas and a fake clock."""

from __future__ import annotations

import asyncio
import random
from collections import Counter

import pytest

from sloserve.dataplane.replica_set import ReplicaSet
from sloserve.errors import UnavailableError
from sloserve.policy.routing import Routing
from sloserve.testing import FakeClock, FakeReplica
from sloserve.testing.fakes import settle


def replicas(n: int, capacity: int = 2) -> list[FakeReplica]:
    return [FakeReplica(f"r{i}", capacity) for i in range(n)]


def test_least_loaded_spreads_idle_work_in_turn_and_fills_the_emptiest_first() -> None:
    rs = ReplicaSet(replicas(3), ["y"], FakeClock())
    first = [rs.try_acquire() for _ in range(3)]
    assert [r.id for r in first if r] == ["r0", "r1", "r2"]
    second = rs.try_acquire()
    assert second is not None
    rs.release(first[1])  # type: ignore[arg-type]
    third = rs.try_acquire()
    assert third is not None and third.id == "r1"  # the only replica with one batch out


@pytest.mark.parametrize("routing", list(Routing))
def test_no_policy_routes_to_a_full_or_unhealthy_replica(routing: Routing) -> None:
    fakes = replicas(3, capacity=2)
    fakes[2].healthy_flag = False
    rs = ReplicaSet(fakes, ["y"], FakeClock(), routing=routing, rng=random.Random(4))
    taken = [rs.try_acquire() for _ in range(4)]
    assert all(r is not None and r.id != "r2" for r in taken)
    assert rs.try_acquire() is None  # r0 and r1 are full, r2 is down
    assert Counter(r.id for r in taken if r) == {"r0": 2, "r1": 2}


def test_power_of_two_prefers_the_less_loaded_of_its_pair() -> None:
    fakes = replicas(3, capacity=10)
    rs = ReplicaSet(fakes, ["y"], FakeClock(), routing=Routing.POWER_OF_TWO, rng=random.Random(1))
    for _ in range(5):  # load r0 with five batches
        fakes[1].healthy_flag = fakes[2].healthy_flag = False
        rs.try_acquire()
    fakes[1].healthy_flag = fakes[2].healthy_flag = True
    picks = Counter()
    for _ in range(300):
        r = rs.try_acquire()
        assert r is not None
        picks[r.id] += 1
        rs.release(r)
    assert picks["r0"] == 0  # drawn with r1 or r2 it always loses


async def test_acquire_waits_for_a_slot_and_gives_up_on_time() -> None:
    clock = FakeClock()
    rs = ReplicaSet(replicas(1, capacity=1), ["y"], clock)
    held = rs.try_acquire()
    assert held is not None
    waiter = asyncio.create_task(rs.acquire(timeout_s=0.1))
    await clock.advance(0.05)
    rs.release(held)  # freed in time: the waiter gets it
    await settle()
    assert waiter.done() and waiter.result() is held
    late = asyncio.create_task(rs.acquire(timeout_s=0.1))
    for _ in range(10):
        await clock.advance(0.02)
    assert late.done()
    with pytest.raises(UnavailableError, match="in time"):
        late.result()
