"""RayCluster: one front end's connection to a Ray cluster, its health loop, and the replica factory.

``sloserve serve --ray-address ADDRESS`` builds one :class:`RayCluster`; its
:meth:`RayCluster.replica` is the lifecycle's
:data:`~sloserve.control.lifecycle.ReplicaFactory`, so every replica the
lifecycle and the autoscaler start is a :class:`~sloserve.cluster.ray.replica.RayReplica`.

Placement. A replica asks Ray for ``intra_op_threads`` CPUs (what its ONNX
Runtime session will keep busy) and no GPU: sessions run on the CPU execution
provider today. When variants gain a GPU execution provider, :func:`resources_for`
is the one place that asks for ``num_gpus`` (1, or a fraction to pack small
models) for those variants; Ray then sets ``CUDA_VISIBLE_DEVICES`` in the actor
and places it only on nodes with a free GPU.

Models reach actors through Ray's object store: the front end reads the
artifact and ``ray.put``s its bytes, and the actor's constructor receives them,
on whichever node Ray placed it. No shared filesystem is needed, and the bytes
a replica serves are the bytes the front end's registry holds (checked by
sha256 whenever a front end attaches to an existing actor). The cost is a copy of
the model per node through the object store at start-up, and a model must fit
in the object store; a multi-gigabyte model would be better read from a shared
artifact location (a future option).

Health. Every ``health_interval_s`` the loop checks that the GCS accepts
connections and sends each replica's heartbeat. After ``lost_after`` failed
checks in a row the cluster is *lost*: ``on_change(False)`` (the server reports
not ready), every replica fails its batches in flight, and the Ray connection is
shut down. (Ray ends a driver process that stays cut off from its GCS for 60 s;
disconnecting first keeps the front end alive.) The loop then tries to reconnect
every interval; once connected, replicas re-attach to their actors by name (the
detached actors may have survived) or create new ones, then ``on_change(True)``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from sloserve import __version__
from sloserve.clock import Clock, SystemClock
from sloserve.cluster.ray.actor import ActorInit
from sloserve.cluster.ray.backend import RAY_NAMESPACE, ActorSpec, CoreRayBackend, RayBackend
from sloserve.cluster.ray.replica import RayReplica
from sloserve.errors import UnavailableError
from sloserve.model_config import ModelConfig
from sloserve.types import ReplicaId

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class ReplicaResources:
    """What one replica asks Ray for."""

    cpus: float
    gpus: float = 0.0


def resources_for(config: ModelConfig) -> ReplicaResources:
    """A replica's resources: its ONNX Runtime threads; a GPU once variants run on one (see above)."""
    return ReplicaResources(cpus=float(config.intra_op_threads))


def actor_name(model: str, version: str, index: int) -> str:
    """The actor's name in the ``sloserve`` namespace: every front end derives the same one."""
    return f"{model}/{version}/{index}"


def new_frontend_id() -> str:
    return f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:8]}"


class RayCluster:
    """A front end's view of one Ray cluster (see the module docstring)."""

    def __init__(
        self,
        address: str,
        *,
        backend: RayBackend | None = None,
        clock: Clock | None = None,
        namespace: str = RAY_NAMESPACE,
        frontend: str | None = None,
        on_change: Callable[[bool], None] | None = None,
        capacity: int = 2,
        health_interval_s: float = 1.0,
        probe_timeout_s: float = 2.0,
        lost_after: int = 2,
        connect_timeout_s: float = 60.0,
        start_timeout_s: float = 60.0,
        lease_ttl_s: float = 30.0,
    ) -> None:
        self._backend: RayBackend = backend if backend is not None else CoreRayBackend(address)
        self._clock: Clock = clock or SystemClock()
        self.address = address
        self.namespace = namespace
        self.frontend = frontend or new_frontend_id()
        self._on_change = on_change
        self._capacity = capacity
        self._health_interval_s = health_interval_s
        self._probe_timeout_s = probe_timeout_s
        self._lost_after = lost_after
        self._connect_timeout_s = connect_timeout_s
        self.start_timeout_s = start_timeout_s
        """How long a new replica may take to be placed and load its model (settable: it applies to replicas made after)."""
        self._lease_ttl_s = lease_ttl_s
        self._replicas: dict[ReplicaId, RayReplica] = {}
        self._connected = False
        self._misses = 0
        self._monitor: asyncio.Task[None] | None = None

    @property
    def connected(self) -> bool:
        return self._connected

    @property
    def backend(self) -> RayBackend:
        return self._backend

    @property
    def replicas(self) -> tuple[RayReplica, ...]:
        """Replicas made by this front end and not stopped."""
        return tuple(self._replicas.values())

    async def start(self) -> None:
        """Connect (raises UnavailableError if the cluster cannot be reached) and start the health loop."""
        if not await self._backend.reachable(self._probe_timeout_s):
            raise UnavailableError(f"cannot reach the Ray cluster at {self.address} (is `ray start --head` running?)")
        try:
            async with asyncio.timeout(self._connect_timeout_s):
                await self._backend.connect(self.namespace)
        except TimeoutError:
            raise UnavailableError(
                f"cannot connect to the Ray cluster at {self.address} within {self._connect_timeout_s:g} s"
            ) from None
        self._connected = True
        log.info("connected to the Ray cluster at %s as front end %s", self.address, self.frontend)
        self._monitor = asyncio.create_task(self._watch(), name="ray cluster health")

    async def stop(self) -> None:
        """Stop the health loop, release replicas the lifecycle did not stop in time, disconnect."""
        if self._monitor is not None:
            self._monitor.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._monitor
            self._monitor = None
        if self._connected and self.replicas:
            try:
                async with asyncio.timeout(2 * self._probe_timeout_s + 1.0):
                    await asyncio.gather(*(r.stop() for r in self.replicas), return_exceptions=True)
            except TimeoutError:
                log.warning("some replicas did not release their actors; their leases will expire")
        if self._connected:
            self._connected = False
            await self._disconnect()

    async def _disconnect(self) -> None:
        try:
            async with asyncio.timeout(self._connect_timeout_s):
                await self._backend.disconnect()
        except Exception as exc:
            log.warning("disconnecting from the Ray cluster at %s: %s", self.address, exc)

    def replica(self, config: ModelConfig, artifact: Path, index: int) -> RayReplica:
        """The lifecycle's replica factory: replica ``index`` of a model version, as a named actor."""
        version = artifact.parent.name
        resources = resources_for(config)
        init = ActorInit(
            model=config.name,
            version=version,
            index=index,
            digest="",  # filled in from the artifact's bytes when the replica starts
            intra_op_threads=config.intra_op_threads,
            frontend=self.frontend,
            lease_ttl_s=self._lease_ttl_s,
            num_cpus=resources.cpus,
            num_gpus=resources.gpus,
            sloserve_version=__version__,
        )
        spec = ActorSpec(actor_name(config.name, version, index), self.namespace, resources.cpus, resources.gpus, init)
        replica = RayReplica(
            ReplicaId(f"{config.name}-{version}-{index}"),
            spec,
            artifact,
            self._backend,
            capacity=self._capacity,
            start_timeout_s=self.start_timeout_s,
            probe_timeout_s=self._probe_timeout_s,
            clock=self._clock,
            on_stop=self._forget,
        )
        self._replicas[replica.id] = replica
        return replica

    def _forget(self, replica: RayReplica) -> None:
        if self._replicas.get(replica.id) is replica:
            del self._replicas[replica.id]

    # ------------------------------------------------------------ health loop

    async def _watch(self) -> None:
        while True:
            await self._clock.sleep(self._health_interval_s)
            try:
                await self.tick()
            except Exception:  # the loop must survive a bad tick; the next one tries again
                log.exception("ray cluster health check failed")

    async def tick(self) -> None:
        """One health check: heartbeats while connected, a reconnection attempt while not."""
        if not self._connected:
            await self._reconnect()
            return
        if await self._backend.reachable(self._probe_timeout_s):
            self._misses = 0
            await asyncio.gather(*(r.check() for r in self.replicas), return_exceptions=True)
            return
        self._misses += 1
        log.warning("the Ray cluster at %s does not answer (%d/%d)", self.address, self._misses, self._lost_after)
        if self._misses >= self._lost_after:
            await self._lose()

    async def _lose(self) -> None:
        self._connected = False
        self._misses = 0
        log.error("lost the Ray cluster at %s: not ready until it is back", self.address)
        if self._on_change is not None:
            self._on_change(False)
        for replica in self.replicas:
            replica.on_cluster_lost()
        await self._disconnect()

    async def _reconnect(self) -> None:
        if not await self._backend.reachable(self._probe_timeout_s):
            return
        try:
            async with asyncio.timeout(self._connect_timeout_s):
                await self._backend.connect(self.namespace)
        except (UnavailableError, TimeoutError) as exc:
            why = getattr(exc, "message", "") or f"no connection within {self._connect_timeout_s:g} s"
            log.warning("the Ray cluster at %s answers but connecting failed: %s", self.address, why)
            return
        self._connected = True
        log.info("reconnected to the Ray cluster at %s; re-attaching replicas", self.address)
        await asyncio.gather(*(r.resume() for r in self.replicas), return_exceptions=True)
        if self._on_change is not None and self._connected:
            self._on_change(True)
