"""FakeRayBackend: an in-memory Ray cluster for unit tests of RayReplica and RayCluster.

Actors run the real :class:`~sloserve.cluster.ray.actor.ReplicaActor` (leases,
attach, detach, replies as tuples) with a fake session (``compute``) instead of
ONNX Runtime. Calls answer on a later turn of the event loop, as Ray's do; a test
can pause an actor's batches, make it unresponsive, kill it, fill the cluster, or
lose the whole cluster and bring it back, and can see what was created, killed
and cancelled. No thread, no sleep, no Ray.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from sloserve.cluster.ray.actor import ReplicaActor, Session
from sloserve.cluster.ray.backend import (
    ActorGoneError,
    ActorSpec,
    ActorUnreachableError,
    BackendError,
    NodeInfo,
)
from sloserve.errors import SloserveError, UnavailableError

Array = np.ndarray[Any, Any]
Compute = Callable[[Mapping[str, Array]], dict[str, Array]]


def double(inputs: Mapping[str, Array]) -> dict[str, Array]:
    """The default fake model: every input doubled, as ``<name>_out``."""
    return {f"{name}_out": np.asarray(value) * 2 for name, value in inputs.items()}


class _FakeSession:
    def __init__(self, compute: Compute) -> None:
        self._compute = compute

    def run(self, inputs: Mapping[str, Array], output_names: Sequence[str]) -> dict[str, Array]:
        outputs = self._compute(inputs)
        return {n: outputs[n] for n in output_names} if output_names else outputs


class FakeCall:
    def __init__(self, actor: FakeActor, method: str, args: tuple[Any, ...]) -> None:
        self.actor = actor
        self.method = method
        self.args = args
        self.result: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self.result.add_done_callback(_retrieve)  # a failed call nobody waits for any more is no error

    def settle(self, value: Any = None, error: BackendError | None = None) -> None:
        if self.result.done():
            return
        if error is not None:
            self.result.set_exception(error)
        else:
            self.result.set_result(value)


class FakeActor:
    """One actor of the fake cluster."""

    def __init__(self, spec: ActorSpec, model: bytes, backend: FakeRayBackend, placed: bool) -> None:
        self.spec = spec
        self.name = spec.name
        self.namespace = spec.namespace
        self.model = model
        self.placed = placed
        self.alive = True
        self.paused = False
        """Batches wait (control calls still answer) until :meth:`resume`."""
        self.unresponsive = False
        """Nothing answers: calls stay pending until the actor dies."""
        self.batches: list[Mapping[str, Array]] = []
        self.dropped = 0
        """Batches the actor skipped because their front end dropped them."""
        self._backend = backend
        self._queue: deque[FakeCall] = deque()
        self._stalled: list[FakeCall] = []
        self._pumping = False
        self.impl = ReplicaActor(
            model,
            spec.init,
            load=backend.load,
            clock=backend.now,
            node_id=lambda: "fake-node",
            exit_actor=lambda: backend.kill_actor(self.name, "no front end holds a lease"),
            reap=False,
        )

    def submit(self, call: FakeCall, control: bool) -> None:
        loop = asyncio.get_running_loop()
        if not self.alive:
            loop.call_soon(call.settle, None, ActorGoneError(f"actor {self.name} is dead"))
        elif not self.placed or self.unresponsive:
            self._stalled.append(call)
        elif control:
            loop.call_soon(self._answer, call)
        else:
            self._queue.append(call)
            self._pump()

    def _answer(self, call: FakeCall) -> None:
        if not self.alive or call.result.done():
            return
        method = getattr(self.impl, call.method)
        call.settle(method(*call.args))

    def _pump(self) -> None:
        if self._pumping or self.paused or not self._queue or not self.alive:
            return
        self._pumping = True
        asyncio.get_running_loop().call_soon(self._run_next)

    def _run_next(self) -> None:
        self._pumping = False
        if self.paused or not self._queue or not self.alive:
            return
        call = self._queue.popleft()
        inputs, names, batch = call.args
        reply = self.impl.run(inputs, names, batch)
        if reply[0] == "dropped":
            self.dropped += 1
        else:
            self.batches.append(inputs)
        call.settle(reply)
        self._pump()

    def pause(self) -> None:
        self.paused = True

    def resume(self) -> None:
        self.paused = False
        self._pump()

    @property
    def queued(self) -> int:
        return len(self._queue)

    def die(self, error: BackendError) -> None:
        self.alive = False
        for call in [*self._queue, *self._stalled]:
            call.settle(None, error)
        self._queue.clear()
        self._stalled.clear()


class FakeRayBackend:
    """An in-memory :class:`~sloserve.cluster.ray.backend.RayBackend` with ``cpus`` CPUs on one node."""

    def __init__(
        self,
        *,
        cpus: float = 4.0,
        compute: Compute = double,
        load_error: SloserveError | None = None,
        now: Callable[[], float] = time.monotonic,
        address: str = "127.0.0.1:6379",
    ) -> None:
        self._address = address
        self.cpus = cpus
        self.compute = compute
        self.load_error = load_error
        self.now = now
        self.cluster_up = True
        self.connected = False
        self.connects = 0
        self.disconnects = 0
        self.actors: dict[tuple[str, str], FakeActor] = {}
        """Live actors by (namespace, name)."""
        self.created: list[FakeActor] = []
        self.killed: list[FakeActor] = []
        self.puts = 0

    def load(self, model: bytes, intra_op_threads: int) -> Session:
        if self.load_error is not None:
            raise self.load_error
        return _FakeSession(self.compute)

    # ------------------------------------------------------------ test controls

    def actor(self, name: str, namespace: str = "sloserve") -> FakeActor:
        return self.actors[(namespace, name)]

    def kill_actor(self, name: str, reason: str = "killed by the test", namespace: str = "sloserve") -> None:
        actor = self.actors.pop((namespace, name), None)
        if actor is None:
            return
        self.killed.append(actor)
        actor.die(ActorGoneError(f"the actor died: {reason}"))

    def lose_cluster(self) -> None:
        """The head goes away with every actor: calls in flight fail as unreachable."""
        self.cluster_up = False
        for actor in list(self.actors.values()):
            actor.die(ActorUnreachableError("the actor is temporarily unavailable: RPC failed"))
        self.actors.clear()

    def restore_cluster(self) -> None:
        self.cluster_up = True

    @property
    def used_cpus(self) -> float:
        return sum(a.spec.num_cpus for a in self.actors.values() if a.placed)

    # ------------------------------------------------------------ RayBackend

    @property
    def address(self) -> str:
        return self._address

    async def reachable(self, timeout_s: float) -> bool:
        return self.cluster_up

    async def connect(self, namespace: str) -> None:
        if not self.cluster_up:
            raise UnavailableError(f"cannot connect to the Ray cluster at {self._address}")
        self.connected = True
        self.connects += 1

    async def disconnect(self) -> None:
        self.connected = False
        self.disconnects += 1

    def _require_connected(self) -> None:
        if not self.connected or not self.cluster_up:
            raise ActorUnreachableError("not connected to the cluster")

    async def find_actor(self, name: str, namespace: str) -> object | None:
        self._require_connected()
        return self.actors.get((namespace, name))

    async def create_actor(self, spec: ActorSpec, model: bytes) -> object:
        self._require_connected()
        existing = self.actors.get((spec.namespace, spec.name))
        if existing is not None:
            return existing
        self.puts += 1
        placed = self.used_cpus + spec.num_cpus <= self.cpus
        actor = FakeActor(spec, model, self, placed)
        self.actors[(spec.namespace, spec.name)] = actor
        self.created.append(actor)
        return actor

    def call(self, actor: object, method: str, *args: Any, control: bool = False) -> FakeCall:
        self._require_connected()
        assert isinstance(actor, FakeActor)
        call = FakeCall(actor, method, args)
        actor.submit(call, control)
        return call

    async def kill(self, actor: object) -> None:
        assert isinstance(actor, FakeActor)
        if self.actors.get((actor.namespace, actor.name)) is actor:
            self.kill_actor(actor.name, "ray.kill", actor.namespace)

    async def nodes(self) -> list[NodeInfo]:
        self._require_connected()
        return [NodeInfo("fake-node", "127.0.0.1:0", True, {"CPU": self.cpus})]

    async def resources(self) -> tuple[dict[str, float], dict[str, float]]:
        self._require_connected()
        return {"CPU": self.cpus}, {"CPU": self.cpus - self.used_cpus}

    async def actor_names(self, namespace: str) -> list[str]:
        self._require_connected()
        return sorted(name for ns, name in self.actors if ns == namespace)


def _retrieve(future: asyncio.Future[Any]) -> None:
    if not future.cancelled():
        future.exception()
