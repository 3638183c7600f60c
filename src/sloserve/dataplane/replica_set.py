"""A version's replicas: slot reservation, routing, hedging, retry on death.

The batcher reserves a slot (:meth:`ReplicaSet.acquire`) *before* it forms a
batch, so requests keep merging while every replica is busy. Which replica gets
the slot is :func:`sloserve.policy.routing.choose_replica` over the outstanding
batches of the replicas that can take one.

:meth:`ReplicaSet.execute` runs the batch. With a :class:`Hedger`, a batch still
running after the version's live p95 gets a backup on another replica (when the
hedging policy allows); the first answer wins and the other run is cancelled: a
worker drops it if it has not started, and its slot is released only once the
replica is really done with it. A batch whose replica dies is retried once on a
healthy replica (a running backup counts as that retry); only a second failure
reaches the client, as UNAVAILABLE. Either way the batch has one answer.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections.abc import Callable, Collection, Sequence
from typing import Any

import numpy as np

from sloserve.clock import Clock
from sloserve.dataplane.hedger import Hedger
from sloserve.dataplane.waiting import Alarm, set_alarm, wait_event
from sloserve.errors import ReplicaDiedError, UnavailableError
from sloserve.policy.routing import DEFAULT_ROUTING, Routing, choose_replica
from sloserve.replica import Arrays, Replica
from sloserve.types import ReplicaId

Outputs = dict[str, np.ndarray[Any, Any]]

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
        routing: Routing = DEFAULT_ROUTING,
        hedger: Hedger | None = None,
        rng: random.Random | None = None,
    ) -> None:
        if not replicas:
            raise ValueError("a replica set needs at least one replica")
        self._replicas = tuple(replicas)
        self._output_names = tuple(output_names)
        self._clock = clock
        self._retry_wait_s = retry_wait_s
        self._routing = routing
        self._hedger = hedger if len(self._replicas) > 1 else None
        self._rng = rng if rng is not None else random.Random()
        self._reserved: dict[ReplicaId, int] = {r.id: 0 for r in self._replicas}
        self._turn = 0
        self._freed = asyncio.Event()
        self._losers: set[asyncio.Task[Outputs]] = set()
        self.retries = 0

    @property
    def replicas(self) -> tuple[Replica, ...]:
        return self._replicas

    @property
    def hedger(self) -> Hedger | None:
        return self._hedger

    def reserved(self, replica: Replica) -> int:
        """Batches reserved on ``replica`` and not yet released."""
        return self._reserved[replica.id]

    def _available(self, exclude: Collection[ReplicaId] = ()) -> list[Replica]:
        return [
            r
            for r in self._replicas
            if r.healthy and self._reserved[r.id] < r.capacity and (not exclude or r.id not in exclude)
        ]

    def try_acquire(self) -> Replica | None:
        if len(self._replicas) == 1:  # the usual case (one replica on the event loop): nothing to choose
            replica = self._replicas[0]
            if not replica.healthy or self._reserved[replica.id] >= replica.capacity:
                return None
            self._reserved[replica.id] += 1
            return replica
        available = self._available()
        if not available:
            return None
        loads = [self._reserved[r.id] for r in available]
        replica = available[choose_replica(loads, self._rng, self._routing, self._turn)]
        self._turn += 1
        self._reserved[replica.id] += 1
        return replica

    async def acquire(self, timeout_s: float | None = None) -> Replica:
        """Reserve a slot on a healthy replica chosen by the routing policy, waiting for one."""
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

    async def execute(self, replica: Replica, inputs: Arrays) -> Outputs:
        """Run a batch on an acquired replica (released here); hedge it when it is slow; retry once if it dies."""
        hedger = self._hedger
        if hedger is None:
            return await self._with_retry(replica, inputs, 0)
        rows = _rows(inputs)
        delay_s = hedger.batch_started(rows)
        if delay_s is None:
            return await self._with_retry(replica, inputs, rows)
        return await self._hedged(replica, inputs, rows, delay_s, hedger)

    def run_inline(self, inputs: Arrays) -> tuple[Replica, Outputs]:
        """Run a batch now, on this thread, on a free replica that computes inline (``compute``); for replica
        sets whose replicas all run on the event loop (nothing to wait for, hedge or retry: it has finished
        when this returns). UnavailableError when none is healthy."""
        replica = self.try_acquire()
        if replica is None:
            raise UnavailableError("no healthy replica to run the batch")
        try:
            return replica, replica.compute(inputs, self._output_names)  # type: ignore[attr-defined]
        finally:
            self.release(replica)

    async def _attempt(self, replica: Replica, inputs: Arrays, rows: int) -> Outputs:
        """One run on a reserved replica, released when the replica is done with it (even if cancelled)."""
        started = self._clock.now()
        try:
            outputs = await replica.run(inputs, self._output_names)
        finally:
            self.release(replica)
        if self._hedger is not None:
            self._hedger.observe(replica.id, rows, self._clock.now() - started)
        return outputs

    async def _reporting(self, replica: Replica, inputs: Arrays, rows: int, report: Callable[[], None]) -> Outputs:
        """:meth:`_attempt`, calling ``report`` as it ends: the waiter resumes one loop turn sooner
        than from a done callback, and the task is done by then."""
        try:
            return await self._attempt(replica, inputs, rows)
        finally:
            report()

    async def _with_retry(self, replica: Replica, inputs: Arrays, rows: int) -> Outputs:
        try:
            return await self._attempt(replica, inputs, rows)
        except ReplicaDiedError as first:
            reason = first.message
        self.retries += 1
        backup = await self.acquire(timeout_s=self._retry_wait_s)
        try:
            return await self._attempt(backup, inputs, rows)
        except ReplicaDiedError as second:
            raise _failed_twice(reason, second.message) from None

    async def _hedged(self, primary: Replica, inputs: Arrays, rows: int, delay_s: float, hedger: Hedger) -> Outputs:
        loop = asyncio.get_running_loop()
        started = self._clock.now()
        runs: dict[asyncio.Task[Outputs], Replica] = {}
        wake: asyncio.Future[None] = loop.create_future()

        def poke(_: object = None) -> None:  # cheaper than asyncio.wait, which costs ~15 us per call
            if not wake.done():
                wake.set_result(None)

        def launch(replica: Replica) -> asyncio.Task[Outputs]:
            task = asyncio.create_task(self._reporting(replica, inputs, rows, poke))
            runs[task] = replica
            return task

        rang = False

        def ring() -> None:
            nonlocal rang
            rang = True
            poke()

        first = launch(primary)
        backup: asyncio.Task[Outputs] | None = None
        timer: Alarm | None = set_alarm(self._clock, delay_s, ring)
        checks = 1
        used = {primary.id}
        deaths: list[str] = []
        try:
            while True:
                finished = [t for t in runs if t.done()]
                fired = timer is not None and rang
                if not finished and not fired:
                    wake = loop.create_future()
                    await wake
                    continue
                for task in finished:
                    del runs[task]
                    error = task.exception()
                    if error is None:
                        if backup is not None:
                            hedger.outcome(won=task is backup)
                            if task is backup and first in runs:
                                hedger.observe(primary.id, rows, self._clock.now() - started)  # at least this
                        return task.result()
                    if isinstance(error, ReplicaDiedError):
                        deaths.append(error.message)
                    elif task is backup and runs:
                        backup = None  # the backup failed; the original is still running
                    else:
                        raise error  # as without hedging
                if fired:
                    timer, rang = None, False
                    target = self._reserve_backup(used, hedger, checks)
                    if target is not None:
                        used.add(target.id)
                        backup = launch(target)
                    elif checks < hedger.params.checks and runs:  # look again later: stragglers stay slow
                        timer = set_alarm(self._clock, delay_s * 2 ** (checks - 1), ring)  # at d, 2d, 4d, ...
                        checks += 1
                if not runs:  # every run so far died
                    if len(deaths) >= 2:
                        raise _failed_twice(deaths[0], deaths[1])
                    if timer is not None:
                        timer.cancel()
                        timer = None
                    self.retries += 1
                    launch(await self.acquire(timeout_s=self._retry_wait_s))
        finally:
            if timer is not None:
                timer.cancel()
            for task in runs:
                self._abandon(task, hedger)

    def _reserve_backup(self, used: Collection[ReplicaId], hedger: Hedger, check: int) -> Replica | None:
        candidates = self._available(exclude=used)
        index = hedger.choose_backup([(r.id, self._reserved[r.id]) for r in candidates], check)
        if index is None:
            return None
        replica = candidates[index]
        self._reserved[replica.id] += 1
        return replica

    def _abandon(self, task: asyncio.Task[Outputs], hedger: Hedger) -> None:
        """Cancel a run whose answer is no longer wanted; it releases its slot when its replica is done."""
        if not task.done():
            task.cancel()
            hedger.loser_cancelled()
        self._losers.add(task)
        task.add_done_callback(self._forget)

    def _forget(self, task: asyncio.Task[Outputs]) -> None:
        self._losers.discard(task)
        if not task.cancelled():
            with contextlib.suppress(BaseException):
                task.exception()  # retrieved: nobody waits for a loser's outcome


def _rows(inputs: Arrays) -> int:
    for array in inputs.values():
        return int(array.shape[0]) if array.ndim else 1
    return 1


def _failed_twice(first: str, second: str) -> UnavailableError:
    return UnavailableError(f"the batch failed twice because its replica died ({first}; then {second})")
