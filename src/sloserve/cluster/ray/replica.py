"""RayReplica: the :class:`~sloserve.replica.Replica` interface over one named Ray actor.

From the outside it behaves as :class:`~sloserve.cluster.local.LocalReplica`:
``healthy``, ``outstanding``, ``capacity``, ``start``, ``run`` (ReplicaDiedError
when the actor dies under a batch, so the ReplicaSet retries it elsewhere) and
``stop``. Batching, routing, hedging and selection cannot tell them apart.

Lifecycle::

    NEW ─start()─► STARTING ─attached─► READY ─actor died─► RESTARTING ─attached─► READY
                      │                  │  ▲                 │ attempts used up
                      │     no answer ───┘  └─ heartbeat ok   └──────────► FAILED
                      │           SUSPECT
                      └─ not placed in time: ResourceExhaustedError
    READY/SUSPECT/RESTARTING ─cluster lost─► DISCONNECTED ─cluster back─► RESTARTING
    any state ─stop()─► STOPPED

Starting finds the actor by name (``<model>/<version>/<index>`` in the
``sloserve`` namespace) or creates it, detached, with the model's bytes put in
Ray's object store, and takes a lease on it (:mod:`~sloserve.cluster.ray.actor`).
An actor that is not placed and loaded within ``start_timeout_s`` (the cluster
is full) is killed and ``start`` raises ResourceExhaustedError saying what the
cluster has free; the lifecycle and the autoscaler log it.

Faults. A batch whose actor dies fails with ReplicaDiedError, and so does every
other batch in flight on it; the replica then replaces the actor in the
background (find by name, else create: if another front end already replaced it,
this one attaches to that). A batch whose actor does not answer (network or node
trouble) also fails with ReplicaDiedError, and the replica is SUSPECT (not
healthy) until a heartbeat gets through. The heartbeat (:meth:`check`, called by
the cluster's health loop) also renews the lease and notices an idle actor's
death. When the cluster is lost, :meth:`on_cluster_lost` fails what is in flight
and :meth:`resume` attaches again once it is back.

Stopping drops this front end's lease; the front end that drops the last one
kills the actor.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import hashlib
import itertools
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from sloserve.clock import Clock, SystemClock
from sloserve.cluster.ray.backend import (
    ActorGoneError,
    ActorMethodError,
    ActorSpec,
    BackendError,
    Call,
    CallCancelledError,
    RayBackend,
)
from sloserve.errors import (
    InternalError,
    InvalidArgumentError,
    ReplicaDiedError,
    ResourceExhaustedError,
    SloserveError,
    UnavailableError,
    error_from_code,
)
from sloserve.replica import Arrays, Replica
from sloserve.types import ReplicaId

log = logging.getLogger(__name__)

Array = np.ndarray[Any, Any]
_Outputs = dict[str, Array]


class _State(enum.Enum):
    NEW = "new"
    STARTING = "starting"
    READY = "ready"
    SUSPECT = "suspect"
    RESTARTING = "restarting"
    DISCONNECTED = "disconnected"
    FAILED = "failed"
    STOPPED = "stopped"


_GONE = (_State.RESTARTING, _State.SUSPECT, _State.DISCONNECTED, _State.FAILED, _State.STOPPED)


@dataclass(eq=False, slots=True)
class _Actor:
    """One actor this replica is attached to: one generation of the replica."""

    handle: object
    info: dict[str, Any]
    pending: set[Call] = field(default_factory=set)
    alive: bool = True

    def fail(self, error: SloserveError) -> None:
        self.alive = False
        for call in self.pending:
            if not call.result.done():
                call.result.set_exception(error)
        self.pending.clear()


class _Retry(UnavailableError):
    """An attach that may work a moment later (the name still points at a dead or closing actor)."""


class RayReplica:
    """A :class:`~sloserve.replica.Replica` served by a named Ray actor (see the module docstring).

    Up to ``capacity`` batches are in flight at once; the actor runs them in order.
    ``frontend`` names this front end's lease. ``probe_timeout_s`` bounds a
    heartbeat and a detach. A dead actor is replaced up to ``max_restart_attempts``
    times in a row, waiting ``restart_backoff_s`` doubled at each attempt (at most
    ``max_backoff_s``).
    """

    def __init__(
        self,
        replica_id: ReplicaId,
        spec: ActorSpec,
        artifact: Path,
        backend: RayBackend,
        *,
        capacity: int = 2,
        start_timeout_s: float = 60.0,
        probe_timeout_s: float = 2.0,
        max_restart_attempts: int = 8,
        restart_backoff_s: float = 0.1,
        max_backoff_s: float = 5.0,
        clock: Clock | None = None,
        read_model: Callable[[Path], bytes] = Path.read_bytes,
        on_stop: Callable[[RayReplica], None] | None = None,
    ) -> None:
        if capacity < 1:
            raise InvalidArgumentError("capacity must be at least 1")
        self._id = replica_id
        self._spec = spec
        self._artifact = artifact
        self._backend = backend
        self._capacity = capacity
        self._start_timeout_s = start_timeout_s
        self._probe_timeout_s = probe_timeout_s
        self._max_restart_attempts = max_restart_attempts
        self._restart_backoff_s = restart_backoff_s
        self._max_backoff_s = max_backoff_s
        self._clock: Clock = clock or SystemClock()
        self._read_model = read_model
        self._on_stop = on_stop
        self._state = _State.NEW
        self._actor: _Actor | None = None
        self._restart_task: asyncio.Task[None] | None = None
        self._restarts = 0
        self._restart_attempts = 0
        self._batches = itertools.count()

    # ------------------------------------------------------------ Replica protocol

    @property
    def id(self) -> ReplicaId:
        return self._id

    @property
    def healthy(self) -> bool:
        return self._state is _State.READY and self._actor is not None and self._actor.alive

    @property
    def outstanding(self) -> int:
        return len(self._actor.pending) if self._actor is not None else 0

    @property
    def capacity(self) -> int:
        return self._capacity

    @property
    def state(self) -> str:
        """new, starting, ready, suspect, restarting, disconnected, failed or stopped."""
        return self._state.value

    @property
    def actor_name(self) -> str:
        """``namespace/name`` of the actor, as ``sloserve cluster status`` shows it."""
        return f"{self._spec.namespace}/{self._spec.name}"

    @property
    def actor_info(self) -> dict[str, Any]:
        """What the current actor said about itself when this replica attached (pid, node, ...)."""
        return dict(self._actor.info) if self._actor is not None else {}

    @property
    def restarts(self) -> int:
        """Actors attached to replace one that died (or one lost with the cluster)."""
        return self._restarts

    @property
    def restart_attempts(self) -> int:
        return self._restart_attempts

    async def start(self) -> None:
        if self._state is _State.READY:
            return
        if self._state is not _State.NEW:
            raise UnavailableError(f"replica {self._id} cannot start: it is {self._state.value}")
        self._state = _State.STARTING
        try:
            actor = await self._launch_retrying()
        except BaseException:
            if self._state is _State.STARTING:
                self._state = _State.NEW
            raise
        if self._state is not _State.STARTING:  # stopped (or the cluster was lost) meanwhile
            await self._release(actor)
            raise UnavailableError(f"replica {self._id} was {self._state.value} while starting")
        self._actor = actor
        self._state = _State.READY

    async def run(self, inputs: Arrays, output_names: Sequence[str]) -> _Outputs:
        actor = self._actor
        if self._state is not _State.READY or actor is None or not actor.alive:
            if self._state in _GONE:
                # Chosen while it was up; it died or stopped since: the batch never ran, retry elsewhere.
                raise ReplicaDiedError(f"replica {self._id} is {self._state.value}")
            raise UnavailableError(f"replica {self._id} is {self._state.value}")
        batch = f"{self._spec.init.frontend}/{next(self._batches)}"
        try:
            call = self._backend.call(actor.handle, "run", dict(inputs), tuple(output_names), batch)
        except BackendError as exc:
            self._suspect(actor, exc.message)
            raise ReplicaDiedError(f"replica {self._id}: {exc.message}") from None
        actor.pending.add(call)
        try:
            reply = await asyncio.shield(call.result)
        except asyncio.CancelledError:
            if not call.result.done():
                # Dropped if still queued in the actor, else it runs and the answer is discarded.
                # Either way the slot stays busy until the actor (or its death) says so.
                with contextlib.suppress(BackendError):
                    self._backend.call(actor.handle, "drop", batch, control=True)
                with contextlib.suppress(BaseException):
                    await asyncio.shield(call.result)
            raise
        except ActorGoneError as exc:
            self._lost_actor(actor, exc.message)
            raise ReplicaDiedError(f"replica {self._id}: actor {self.actor_name} died ({exc.message})") from None
        except CallCancelledError:
            raise UnavailableError(f"replica {self._id}: the batch was cancelled") from None
        except ActorMethodError as exc:
            raise InternalError(f"replica {self._id}: the actor failed: {exc.message}") from None
        except BackendError as exc:
            self._suspect(actor, exc.message)
            raise ReplicaDiedError(
                f"replica {self._id}: actor {self.actor_name} did not answer ({exc.message})"
            ) from None
        finally:
            actor.pending.discard(call)
        return _outputs(reply, self._id)

    async def stop(self) -> None:
        if self._state is _State.STOPPED:
            return
        self._state = _State.STOPPED
        if self._restart_task is not None:
            self._restart_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._restart_task
        actor, self._actor = self._actor, None
        if actor is not None:
            actor.fail(UnavailableError(f"replica {self._id} was stopped"))
            await self._release(actor)
        if self._on_stop is not None:
            self._on_stop(self)

    # ------------------------------------------------------------ health (the cluster's loop calls these)

    async def check(self) -> None:
        """Heartbeat: renew the lease, notice a dead or unreachable actor, clear SUSPECT."""
        actor = self._actor
        if actor is None or self._state not in (_State.READY, _State.SUSPECT):
            return
        try:
            attached = await self._control(actor, "heartbeat", self._spec.init.frontend)
        except ActorGoneError as exc:
            self._lost_actor(actor, exc.message)
            return
        except (BackendError, TimeoutError) as exc:
            self._suspect(actor, getattr(exc, "message", "") or f"no heartbeat within {self._probe_timeout_s:g} s")
            return
        if actor is not self._actor:
            return
        if not attached:  # our lease lapsed (we were away longer than its TTL), or the actor is closing
            try:
                reply = await self._control(actor, "attach", self._spec.init.frontend, self._spec.init.digest)
            except (BackendError, TimeoutError) as exc:
                self._suspect(actor, getattr(exc, "message", "") or "no answer to attach")
                return
            if reply.get("status") != "ok":
                self._lost_actor(actor, f"it refused this front end ({reply.get('status')})")
                return
        if self._state is _State.SUSPECT and actor is self._actor:
            log.info("replica %s: actor %s answers again", self._id, self.actor_name)
            self._state = _State.READY

    def on_cluster_lost(self) -> None:
        """The front end lost the cluster: fail what is in flight, wait for :meth:`resume`."""
        if self._state in (_State.NEW, _State.STARTING, _State.STOPPED):
            return
        if self._restart_task is not None:
            self._restart_task.cancel()
            self._restart_task = None
        actor, self._actor = self._actor, None
        if actor is not None:
            actor.fail(ReplicaDiedError(f"replica {self._id}: lost the Ray cluster"))
        self._state = _State.DISCONNECTED

    async def resume(self) -> None:
        """The cluster is back: find the actor again (or a new one) and wait until attached or failed."""
        if self._state is not _State.DISCONNECTED:
            return
        self._state = _State.RESTARTING
        task = self._restart_task = asyncio.create_task(self._restart(), name=f"resume {self._id}")
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.shield(task)

    # ------------------------------------------------------------ actors

    async def _launch_retrying(self, attempts: int = 4) -> _Actor:
        """:meth:`_launch`, again after a moment while the name still points at a closing or dead actor."""
        for attempt in range(attempts):
            try:
                return await self._launch()
            except _Retry as exc:
                if attempt == attempts - 1:
                    raise
                log.info("replica %s: %s; trying again", self._id, exc.message)
                await self._clock.sleep(min(self._restart_backoff_s * 2**attempt, self._max_backoff_s))
        raise AssertionError("unreachable")

    async def _launch(self) -> _Actor:
        """Find or create the named actor and take a lease on it."""
        spec = self._spec
        model = await asyncio.to_thread(self._read_model, self._artifact)
        digest = hashlib.sha256(model).hexdigest()
        if digest != spec.init.digest:
            spec = self._spec = replace(spec, init=replace(spec.init, digest=digest))
        try:
            async with asyncio.timeout(self._start_timeout_s):
                handle = await self._backend.find_actor(spec.name, spec.namespace)
                created = handle is None
                if handle is None:
                    handle = await self._backend.create_actor(spec, model)
        except BackendError as exc:
            raise _Retry(f"replica {self._id}: {exc.message}") from None
        except TimeoutError:
            raise _Retry(f"replica {self._id}: the cluster did not answer within {self._start_timeout_s:g} s") from None
        del model
        call = self._backend.call(handle, "attach", spec.init.frontend, digest, control=True)
        try:
            async with asyncio.timeout(self._start_timeout_s):
                reply: dict[str, Any] = await asyncio.shield(call.result)
        except TimeoutError:
            if created:
                await self._backend.kill(handle)
            raise await self._not_placed() from None
        except ActorGoneError as exc:
            raise _Retry(f"replica {self._id}: actor {self.actor_name} is gone ({exc.message})") from None
        except BackendError as exc:
            raise _Retry(f"replica {self._id}: actor {self.actor_name} did not answer ({exc.message})") from None
        status = reply.get("status")
        if status == "ok":
            return _Actor(handle, dict(reply.get("info") or {}))
        if status == "closing":
            raise _Retry(f"replica {self._id}: actor {self.actor_name} is shutting down")
        if status == "mismatch":
            raise InvalidArgumentError(
                f"replica {self._id}: actor {self.actor_name} serves another model (sha256 {reply.get('digest')}, "
                f"this front end has {digest}): front ends sharing a cluster must serve the same registry"
            )
        if status == "load_failed":
            if created:
                await self._backend.kill(handle)
            code, message = reply["error"]
            raise error_from_code(code, f"replica {self._id}: {message}")
        raise InternalError(f"replica {self._id}: actor {self.actor_name} answered attach with {reply!r}")

    async def _not_placed(self) -> ResourceExhaustedError:
        spec = self._spec
        need = f"{spec.num_cpus:g} CPU" + (f" and {spec.num_gpus:g} GPU" if spec.num_gpus else "")
        try:
            total, free = await asyncio.wait_for(self._backend.resources(), self._probe_timeout_s)
            have = f"the cluster has {free.get('CPU', 0.0):g} of {total.get('CPU', 0.0):g} CPU free"
            if spec.num_gpus:
                have += f" and {free.get('GPU', 0.0):g} of {total.get('GPU', 0.0):g} GPU"
        except (BackendError, TimeoutError):
            have = "the cluster's resources could not be read"
        return ResourceExhaustedError(
            f"replica {self._id}: the Ray cluster did not start actor {self.actor_name} within "
            f"{self._start_timeout_s:g} s: it needs {need}; {have}. Add nodes, lower instance_count, "
            "or allow more time if the model is slow to load"
        )

    async def _control(self, actor: _Actor, method: str, *args: Any) -> Any:
        call = self._backend.call(actor.handle, method, *args, control=True)
        async with asyncio.timeout(self._probe_timeout_s):
            return await asyncio.shield(call.result)

    async def _release(self, actor: _Actor) -> None:
        """Drop this front end's lease; kill the actor if it was the last one."""
        try:
            remaining = await self._control(actor, "detach", self._spec.init.frontend)
        except ActorGoneError:
            return
        except (BackendError, TimeoutError) as exc:
            log.warning(
                "replica %s: could not detach from %s (%s); its lease will expire", self._id, self.actor_name, exc
            )
            return
        if remaining == 0:
            await self._backend.kill(actor.handle)

    def _lost_actor(self, actor: _Actor, reason: str) -> None:
        if actor is not self._actor or not actor.alive:
            return
        log.warning("replica %s: actor %s died (%s)", self._id, self.actor_name, reason)
        actor.fail(ReplicaDiedError(f"replica {self._id}: actor {self.actor_name} died ({reason})"))
        if self._state in (_State.READY, _State.SUSPECT):
            self._state = _State.RESTARTING
            self._restart_task = asyncio.create_task(self._restart(), name=f"restart {self._id}")

    def _suspect(self, actor: _Actor, reason: str) -> None:
        if actor is self._actor and self._state is _State.READY:
            log.warning("replica %s: actor %s does not answer (%s)", self._id, self.actor_name, reason)
            self._state = _State.SUSPECT

    async def _restart(self) -> None:
        failures = 0
        while self._state is _State.RESTARTING:
            await self._clock.sleep(min(self._restart_backoff_s * 2**failures, self._max_backoff_s))
            if self._state is not _State.RESTARTING:
                return
            self._restart_attempts += 1
            try:
                actor = await self._launch()
            except SloserveError as exc:
                failures += 1
                log.warning("replica %s: restart attempt %d failed: %s", self._id, failures, exc.message)
                if failures >= self._max_restart_attempts:
                    self._state = _State.FAILED
                    log.error("replica %s: gave up after %d restart attempts", self._id, failures)
                continue
            if self._state is not _State.RESTARTING:
                await self._release(actor)
                return
            self._actor = actor
            self._restarts += 1
            self._state = _State.READY
            log.info("replica %s: attached to actor %s (pid %s)", self._id, self.actor_name, actor.info.get("pid"))


def _outputs(reply: Any, replica_id: ReplicaId) -> _Outputs:
    if not isinstance(reply, tuple) or not reply:
        raise InternalError(f"replica {replica_id}: malformed reply from its actor")
    if reply[0] == "error" and len(reply) == 3:
        raise error_from_code(str(reply[1]), str(reply[2]))
    if reply[0] == "dropped":
        raise UnavailableError(f"replica {replica_id}: the batch was cancelled")
    if reply[0] != "ok" or len(reply) != 2 or not isinstance(reply[1], dict):
        raise InternalError(f"replica {replica_id}: malformed reply from its actor")
    # Arrays Ray hands back may be read-only views of its object store: give the caller its own.
    return {name: a if a.flags.writeable else a.copy() for name, a in reply[1].items()}


if TYPE_CHECKING:

    def _is_a_replica(replica: RayReplica) -> Replica:
        return replica
