"""RayReplica's logic against the fake Ray backend: start, run, death, restart, leases, cluster full, stop."""

from __future__ import annotations

import asyncio
from pathlib import Path

import numpy as np
import pytest

from sloserve.cluster.ray.fake import FakeRayBackend
from sloserve.errors import InvalidArgumentError, ReplicaDiedError, ResourceExhaustedError, UnavailableError
from sloserve.testing import FakeClock
from sloserve.testing.fakes import settle
from tests.unit.cluster.raykit import artifact, batch, drive, make_replica, until


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
async def backend(clock: FakeClock) -> FakeRayBackend:
    fake = FakeRayBackend(cpus=2.0, now=clock.now)
    await fake.connect("sloserve")
    return fake


async def test_start_run_stop(backend: FakeRayBackend, clock: FakeClock, tmp_path: Path) -> None:
    stopped = []
    replica = make_replica(backend, clock, artifact(tmp_path), on_stop=stopped.append)
    assert not replica.healthy
    await replica.start()
    assert replica.healthy and replica.state == "ready"
    assert replica.actor_name == "sloserve/m/1/0"
    assert [a.name for a in backend.created] == ["m/1/0"]
    assert backend.actor("m/1/0").model == b"model-bytes"  # shipped to the actor as bytes

    x = batch(3)
    out = await replica.run(x, ["x_out"])
    np.testing.assert_array_equal(out["x_out"], x["x"] * 2)
    assert replica.outstanding == 0

    await replica.stop()
    assert replica.state == "stopped" and not replica.healthy
    assert [a.name for a in backend.killed] == ["m/1/0"]  # the last lease went: the actor goes
    assert stopped == [replica]


async def test_batches_in_flight_are_counted(backend: FakeRayBackend, clock: FakeClock, tmp_path: Path) -> None:
    replica = make_replica(backend, clock, artifact(tmp_path))
    await replica.start()
    actor = backend.actor("m/1/0")
    actor.pause()
    runs = [asyncio.create_task(replica.run(batch(), [])) for _ in range(2)]
    await until(lambda: actor.queued == 2)
    assert replica.outstanding == 2
    actor.resume()
    await asyncio.gather(*runs)
    assert replica.outstanding == 0 and len(actor.batches) == 2


async def test_death_mid_batch_fails_every_batch_in_flight_then_restarts(
    backend: FakeRayBackend, clock: FakeClock, tmp_path: Path
) -> None:
    replica = make_replica(backend, clock, artifact(tmp_path))
    await replica.start()
    actor = backend.actor("m/1/0")
    actor.pause()
    runs = [asyncio.create_task(replica.run(batch(), ["x_out"])) for _ in range(2)]
    await until(lambda: actor.queued == 2)

    backend.kill_actor("m/1/0")
    results = await asyncio.gather(*runs, return_exceptions=True)
    assert all(isinstance(r, ReplicaDiedError) for r in results), results
    assert not replica.healthy and replica.state == "restarting" and replica.outstanding == 0
    with pytest.raises(ReplicaDiedError):  # chosen before it died: the caller retries elsewhere
        await replica.run(batch(), ["x_out"])

    await until(lambda: replica.healthy, clock)
    assert [a.name for a in backend.created] == ["m/1/0", "m/1/0"]  # a new actor under the same name
    assert backend.actor("m/1/0") is not actor and replica.restarts == 1
    out = await replica.run(batch(1), ["x_out"])
    np.testing.assert_array_equal(out["x_out"], batch(1)["x"] * 2)


async def test_an_idle_actor_death_is_found_by_the_heartbeat(
    backend: FakeRayBackend, clock: FakeClock, tmp_path: Path
) -> None:
    replica = make_replica(backend, clock, artifact(tmp_path))
    await replica.start()
    backend.kill_actor("m/1/0")
    assert replica.healthy  # nothing has told it yet
    await replica.check()
    assert replica.state == "restarting"
    await until(lambda: replica.healthy, clock)
    assert len(backend.created) == 2


async def test_an_unresponsive_actor_is_suspect_until_it_answers(
    backend: FakeRayBackend, clock: FakeClock, tmp_path: Path
) -> None:
    replica = make_replica(backend, clock, artifact(tmp_path))
    await replica.start()
    actor = backend.actor("m/1/0")
    actor.unresponsive = True
    await replica.check()  # the heartbeat times out (probe_timeout_s)
    assert replica.state == "suspect" and not replica.healthy
    actor.unresponsive = False
    await replica.check()
    assert replica.healthy and len(backend.created) == 1  # the same actor, not a new one


async def test_a_model_error_is_the_callers_and_the_replica_stays_up(clock: FakeClock, tmp_path: Path) -> None:
    def refuse(inputs: object) -> dict[str, np.ndarray]:
        raise InvalidArgumentError("input 'x' has the wrong shape")

    backend = FakeRayBackend(compute=refuse, now=clock.now)
    await backend.connect("sloserve")
    replica = make_replica(backend, clock, artifact(tmp_path))
    await replica.start()
    with pytest.raises(InvalidArgumentError, match="wrong shape"):
        await replica.run(batch(), ["x_out"])
    assert replica.healthy


async def test_a_model_that_does_not_load_fails_start_and_leaves_no_actor(clock: FakeClock, tmp_path: Path) -> None:
    backend = FakeRayBackend(load_error=InvalidArgumentError("not a loadable ONNX model"), now=clock.now)
    await backend.connect("sloserve")
    replica = make_replica(backend, clock, artifact(tmp_path))
    with pytest.raises(InvalidArgumentError, match="not a loadable ONNX model"):
        await replica.start()
    assert backend.actors == {} and len(backend.killed) == 1
    assert replica.state == "new"


async def test_a_full_cluster_is_reported_not_waited_on(
    backend: FakeRayBackend, clock: FakeClock, tmp_path: Path
) -> None:
    model = artifact(tmp_path)
    first, second = (make_replica(backend, clock, model, index=i) for i in range(2))
    await first.start()
    await second.start()  # two CPUs: full
    third = make_replica(backend, clock, model, index=2, start_timeout_s=0.05)
    with pytest.raises(ResourceExhaustedError, match=r"needs 1 CPU; the cluster has 0 of 2 CPU free"):
        await third.start()
    assert ("sloserve", "m/1/2") not in backend.actors  # the pending actor was withdrawn
    assert not third.healthy


async def test_front_ends_share_an_actor_by_name_and_the_last_one_out_kills_it(
    backend: FakeRayBackend, clock: FakeClock, tmp_path: Path
) -> None:
    model = artifact(tmp_path)
    a = make_replica(backend, clock, model, frontend="fe-a")
    b = make_replica(backend, clock, model, frontend="fe-b")
    await a.start()
    await b.start()
    assert len(backend.created) == 1 and backend.puts == 1  # found by name: no second copy of the model
    actor = backend.actor("m/1/0")
    assert actor.impl.describe()["frontends"] == ["fe-a", "fe-b"]
    await a.run(batch(), [])
    await b.run(batch(), [])
    assert len(actor.batches) == 2

    await a.stop()
    assert actor.alive and actor.impl.describe()["frontends"] == ["fe-b"]
    await b.run(batch(), [])
    await b.stop()
    assert not actor.alive and backend.actors == {}


async def test_a_front_end_with_another_model_under_the_same_name_is_refused(
    backend: FakeRayBackend, clock: FakeClock, tmp_path: Path
) -> None:
    a = make_replica(backend, clock, artifact(tmp_path / "a", b"model A"), frontend="fe-a")
    b = make_replica(backend, clock, artifact(tmp_path / "b", b"model B"), frontend="fe-b")
    await a.start()
    with pytest.raises(InvalidArgumentError, match="serves another model"):
        await b.start()
    assert a.healthy


async def test_a_lapsed_lease_is_taken_again(backend: FakeRayBackend, clock: FakeClock, tmp_path: Path) -> None:
    model = artifact(tmp_path)
    a = make_replica(backend, clock, model, frontend="fe-a")
    b = make_replica(backend, clock, model, frontend="fe-b")
    await a.start()
    await b.start()
    actor = backend.actor("m/1/0")
    actor.impl.detach("fe-a")  # as if fe-a's lease had expired
    await a.check()
    assert a.healthy and actor.impl.describe()["frontends"] == ["fe-a", "fe-b"]


async def test_leases_expire_without_heartbeats_and_the_actor_ends(
    backend: FakeRayBackend, clock: FakeClock, tmp_path: Path
) -> None:
    replica = make_replica(backend, clock, artifact(tmp_path))
    await replica.start()
    actor = backend.actor("m/1/0")
    await clock.advance(20)
    await replica.check()  # renews for another 30 s
    await clock.advance(20)
    assert not actor.impl.reap_once() and actor.alive
    await clock.advance(31)  # the front end went away: no heartbeat
    assert actor.impl.reap_once() and not actor.alive


async def test_a_cancelled_run_is_dropped_by_the_actor(
    backend: FakeRayBackend, clock: FakeClock, tmp_path: Path
) -> None:
    replica = make_replica(backend, clock, artifact(tmp_path))
    await replica.start()
    actor = backend.actor("m/1/0")
    actor.pause()
    run = asyncio.create_task(replica.run(batch(), []))
    await until(lambda: actor.queued == 1)
    run.cancel()  # a hedged twin won
    await settle()  # the replica tells the actor to drop it
    assert (
        not run.done() and replica.outstanding == 1
    )  # the slot stays busy until the actor has answered or skipped the batch
    actor.resume()
    with pytest.raises(asyncio.CancelledError):
        await run
    assert actor.dropped == 1 and actor.batches == [] and replica.outstanding == 0
    assert replica.healthy
    await replica.run(batch(), [])  # and the next batch runs
    assert len(actor.batches) == 1


async def test_stop_fails_batches_in_flight_as_unavailable(
    backend: FakeRayBackend, clock: FakeClock, tmp_path: Path
) -> None:
    replica = make_replica(backend, clock, artifact(tmp_path))
    await replica.start()
    backend.actor("m/1/0").pause()
    run = asyncio.create_task(replica.run(batch(), []))
    await until(lambda: replica.outstanding == 1)
    await replica.stop()
    with pytest.raises(UnavailableError) as caught:
        await run
    assert not isinstance(caught.value, ReplicaDiedError)


async def test_restarts_give_up_after_the_attempts(backend: FakeRayBackend, clock: FakeClock, tmp_path: Path) -> None:
    replica = make_replica(backend, clock, artifact(tmp_path), max_restart_attempts=3)
    await replica.start()
    backend.load_error = InvalidArgumentError("the model file went bad")
    backend.kill_actor("m/1/0")
    await replica.check()
    await drive(clock, until(lambda: replica.state == "failed"))
    assert replica.restart_attempts == 3 and not replica.healthy
    await replica.stop()
