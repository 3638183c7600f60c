"""RayCluster against the fake backend: the replica factory, the health loop, losing and regaining the cluster,
and what ``cluster status`` reads."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from pathlib import Path

import pytest

from sloserve.cluster.ray.cluster import RayCluster
from sloserve.cluster.ray.fake import FakeRayBackend
from sloserve.cluster.ray.status import read_status
from sloserve.errors import ReplicaDiedError, UnavailableError
from sloserve.model_config import ModelConfig, TensorSpec
from sloserve.testing import FakeClock
from sloserve.types import ModelName
from tests.unit.cluster.raykit import artifact, batch, drive, until


def config(threads: int = 1, instances: int = 1) -> ModelConfig:
    return ModelConfig(
        ModelName("m"),
        (TensorSpec("x", "FP32", (-1, 3)),),
        (TensorSpec("x_out", "FP32", (-1, 3)),),
        intra_op_threads=threads,
        instance_count=instances,
    )


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def backend(clock: FakeClock) -> FakeRayBackend:
    return FakeRayBackend(cpus=4.0, now=clock.now)


def cluster_of(backend: FakeRayBackend, clock: FakeClock, changes: list[bool] | None = None) -> RayCluster:
    return RayCluster(
        backend.address,
        backend=backend,
        clock=clock,
        frontend="fe-a",
        on_change=changes.append if changes is not None else None,
        probe_timeout_s=0.05,
        start_timeout_s=2.0,
    )


async def test_the_factory_makes_named_actors_with_the_variants_resources(
    backend: FakeRayBackend, clock: FakeClock, tmp_path: Path
) -> None:
    cluster = cluster_of(backend, clock)
    await cluster.start()
    replica = cluster.replica(config(threads=2), artifact(tmp_path), 3)
    assert replica.id == "m-1-3" and replica.actor_name == "sloserve/m/1/3"
    await replica.start()
    actor = backend.actor("m/1/3")
    assert actor.spec.num_cpus == 2.0 and actor.spec.num_gpus == 0.0
    assert actor.impl.describe()["frontends"] == ["fe-a"]
    assert cluster.replicas == (replica,)
    await replica.stop()
    assert cluster.replicas == ()
    await cluster.stop()
    assert backend.disconnects == 1


async def test_an_unreachable_cluster_fails_start_with_a_clear_error(backend: FakeRayBackend, clock: FakeClock) -> None:
    backend.cluster_up = False
    with pytest.raises(UnavailableError, match=r"cannot reach the Ray cluster at 127\.0\.0\.1:6379"):
        await cluster_of(backend, clock).start()


async def test_heartbeats_keep_leases_alive(backend: FakeRayBackend, clock: FakeClock, tmp_path: Path) -> None:
    cluster = cluster_of(backend, clock)
    await cluster.start()
    replica = cluster.replica(config(), artifact(tmp_path), 0)
    await replica.start()
    actor = backend.actor("m/1/0")
    for _ in range(5):
        await clock.advance(20)
        await cluster.tick()
        assert not actor.impl.reap_once()
    await cluster.stop()


async def test_a_lost_cluster_makes_the_front_end_unready_until_it_is_back(
    backend: FakeRayBackend, clock: FakeClock, tmp_path: Path
) -> None:
    changes: list[bool] = []
    cluster = cluster_of(backend, clock, changes)
    await cluster.start()
    replica = cluster.replica(config(), artifact(tmp_path), 0)
    await replica.start()
    old = backend.actor("m/1/0")
    old.pause()
    in_flight = asyncio.create_task(replica.run(batch(), []))
    await until(lambda: replica.outstanding == 1)

    backend.lose_cluster()
    with pytest.raises(ReplicaDiedError):  # the batch is retried elsewhere by the replica set
        await in_flight
    await cluster.tick()
    assert cluster.connected and changes == []  # one missed check is not yet a loss
    await cluster.tick()
    assert not cluster.connected and changes == [False]
    assert replica.state == "disconnected" and not replica.healthy
    assert backend.disconnects == 1  # shut down before Ray would end the process

    await cluster.tick()  # still down: nothing changes
    assert changes == [False]
    backend.restore_cluster()
    await drive(clock, cluster.tick())
    assert cluster.connected and changes == [False, True]
    assert replica.healthy and backend.actor("m/1/0") is not old
    assert backend.connects == 2 and replica.restarts == 1
    await replica.run(batch(), [])
    await replica.stop()
    await cluster.stop()


async def test_status_lists_nodes_replicas_and_resources(
    backend: FakeRayBackend, clock: FakeClock, tmp_path: Path
) -> None:
    cluster = cluster_of(backend, clock)
    await cluster.start()
    replicas = [cluster.replica(config(), artifact(tmp_path), i) for i in range(2)]
    for r in replicas:
        await r.start()
    await replicas[0].run(batch(5), [])
    status = await read_status(backend, "sloserve")
    assert [n.node_id for n in status.nodes] == ["fake-node"]
    assert status.nodes[0].replicas == 2 and status.nodes[0].replica_cpus == 2.0
    assert [(r.name, r.state, r.node_id, r.frontends) for r in status.replicas] == [
        ("m/1/0", "alive", "fake-node", ("fe-a",)),
        ("m/1/1", "alive", "fake-node", ("fe-a",)),
    ]
    assert status.replicas[0].rows == 5
    assert status.per_variant() == {("m", "1"): {"fake-node": 2}}
    assert status.total["CPU"] == 4.0 and status.available["CPU"] == 2.0
    assert status.to_dict()["per_variant"] == [{"model": "m", "version": "1", "nodes": {"fake-node": 2}}]
    for r in replicas:
        await r.stop()
    await cluster.stop()


def test_nothing_imports_ray_without_a_ray_address() -> None:
    code = (
        "import sys\n"
        "import sloserve.app, sloserve.cli, sloserve.cli.serving, sloserve.cli.cluster\n"
        "import sloserve.cluster.ray.cluster, sloserve.cluster.ray.status, sloserve.cluster.ray.head\n"
        "assert 'ray' not in sys.modules, 'ray was imported'\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr
