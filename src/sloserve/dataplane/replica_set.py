"""A model's replicas: slot reservation, least-loaded choice, retry on death.

The batcher reserves a slot (:meth:`ReplicaSet.acquire`) *before* it forms a
batch, so requests keep merging while every replica is busy. A batch whose
replica dies is retried once on a healthy replica; only a second failure reaches
the client, as UNAVAILABLE.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

import numpy as np

from sloserve.clock import Clock
from sloserve.dataplane.waiting import wait_event
from sloserve.errors import ReplicaDiedError, UnavailableError
from sloserve.replica import Arrays, Replica
from sloserve.types import ReplicaId

# How often to look again for a healthy replica while none is (health changes are not signalled).
_HEALTH_POLL_S = 0.02


class ReplicaSet:
    def __init__(
        self,
        replicas: Sequence[Replica],
        output_names: Sequence[str],
        clock: Clock,
        *,
        retry_wait_s: float = 30.0,
    ) -> None:
        if not replicas:
            raise ValueError("a replica set needs at least one replica")
        self._replicas = tuple(replicas)
        self._output_names = tuple(output_names)
        self._clock = clock
        self._retry_wait_s = retry_wait_s
        self._reserved: dict[ReplicaId, int] = {r.id: 0 for r in self._replicas}
        self._freed = asyncio.Event()
        self.retries = 0

    @property
    def replicas(self) -> tuple[Replica, ...]:
        return self._replicas

    def _pick(self) -> Replica | None:
        best: Replica | None = None
        best_load = 0
        for replica in self._replicas:
            load = self._reserved[replica.id]
            if replica.healthy and load < replica.capacity and (best is None or load < best_load):
                best, best_load = replica, load
        return best

    def try_acquire(self) -> Replica | None:
        replica = self._pick()
        if replica is not None:
            self._reserved[replica.id] += 1
        return replica

    async def acquire(self, timeout_s: float | None = None) -> Replica:
        """Reserve a slot on the least-loaded healthy replica, waiting for one."""
        deadline = None if timeout_s is None else self._clock.now() + timeout_s
        while True:
            replica = self.try_acquire()
            if replica is not None:
                return replica
            self._freed.clear()
            wait_s = _HEALTH_POLL_S
            if deadline is not None:
                remaining = deadline - self._clock.now()
                if remaining <= 0:
                    raise UnavailableError("no healthy replica became available in time")
                wait_s = min(wait_s, remaining)
            await wait_event(self._freed, self._clock, wait_s)

    def release(self, replica: Replica) -> None:
        self._reserved[replica.id] -= 1
        self._freed.set()

    async def execute(self, replica: Replica, inputs: Arrays) -> dict[str, np.ndarray[Any, Any]]:
        """Run a batch on an acquired replica (released here); retry once if it dies."""
        try:
            return await replica.run(inputs, self._output_names)
        except ReplicaDiedError as first:
            reason = first.message
        finally:
            self.release(replica)
        self.retries += 1
        backup = await self.acquire(timeout_s=self._retry_wait_s)
        try:
            return await backup.run(inputs, self._output_names)
        except ReplicaDiedError as second:
            raise UnavailableError(
                f"the batch failed twice because its replica died ({reason}; then {second.message})"
            ) from None
        finally:
            self.release(backup)
