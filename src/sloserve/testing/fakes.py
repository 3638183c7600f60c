"""Fakes for unit tests of logic. Integration tests use the real components."""

from __future__ import annotations

import asyncio
import heapq
import itertools
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from sloserve.clock import Clock
from sloserve.errors import ReplicaDiedError
from sloserve.replica import Arrays
from sloserve.types import ReplicaId


class FakeClock:
    """A clock that moves only when the test calls :meth:`advance`.

    ``sleep`` parks the caller until the clock has been advanced past its wake
    time; :meth:`advance` then wakes sleepers in time order and lets them run.
    """

    def __init__(self, start: float = 1000.0) -> None:
        self._now = start
        self._sleepers: list[tuple[float, int, asyncio.Future[None]]] = []
        self._seq = itertools.count()

    def now(self) -> float:
        return self._now

    async def sleep(self, seconds: float) -> None:
        if seconds <= 0:
            await asyncio.sleep(0)
            return
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        heapq.heappush(self._sleepers, (self._now + seconds, next(self._seq), fut))
        await fut

    async def advance(self, seconds: float) -> None:
        """Move time forward, waking every sleeper due by then, in order."""
        target = self._now + seconds
        while self._sleepers and self._sleepers[0][0] <= target:
            wake, _, fut = heapq.heappop(self._sleepers)
            self._now = max(self._now, wake)
            if not fut.done():
                fut.set_result(None)
            await settle()
        self._now = target
        await settle()


async def settle(rounds: int = 20) -> None:
    """Let every ready task run until the loop is quiet."""
    for _ in range(rounds):
        await asyncio.sleep(0)


class FakeReplica:
    """A replica whose batches complete when the test says so.

    Each call to :meth:`run` records its inputs in ``batches`` and waits on a
    future the test resolves with :meth:`complete` / :meth:`fail`, or, when
    ``compute`` is given, answers with ``compute(inputs)``: at once, or after
    ``delay_s`` (seconds, or a function of the batch index) of ``clock`` time.
    Setting ``crashing`` makes every later batch fail with ReplicaDiedError (after
    its delay) and the replica unhealthy. A run cancelled by its caller is
    recorded in ``cancelled`` (batch indexes), one that answered in ``answered``.
    """

    def __init__(
        self,
        replica_id: str = "fake-0",
        capacity: int = 1,
        compute: Callable[[Arrays], dict[str, np.ndarray[Any, Any]]] | None = None,
        *,
        clock: Clock | None = None,
        delay_s: float | Callable[[int], float] = 0.0,
    ) -> None:
        self._id = ReplicaId(replica_id)
        self._capacity = capacity
        self._compute = compute
        self._clock = clock
        self._delay_s = delay_s
        self.healthy_flag = True
        self.crashing = False
        self.batches: list[Arrays] = []
        self.cancelled: list[int] = []
        self.answered: list[int] = []
        self._running = 0
        self._pending: list[asyncio.Future[dict[str, np.ndarray[Any, Any]]]] = []

    @property
    def id(self) -> ReplicaId:
        return self._id

    @property
    def healthy(self) -> bool:
        return self.healthy_flag

    @property
    def outstanding(self) -> int:
        return self._running + sum(1 for f in self._pending if not f.done())

    @property
    def capacity(self) -> int:
        return self._capacity

    async def start(self) -> None:
        return None

    async def run(self, inputs: Arrays, output_names: Sequence[str]) -> dict[str, np.ndarray[Any, Any]]:
        index = len(self.batches)
        self.batches.append(dict(inputs))
        try:
            if self._compute is not None:
                outputs = await self._computed(index, inputs)
            else:
                fut: asyncio.Future[dict[str, np.ndarray[Any, Any]]] = asyncio.get_running_loop().create_future()
                self._pending.append(fut)
                outputs = await fut
        except asyncio.CancelledError:
            self.cancelled.append(index)
            raise
        self.answered.append(index)
        return outputs

    async def _computed(self, index: int, inputs: Arrays) -> dict[str, np.ndarray[Any, Any]]:
        assert self._compute is not None
        self._running += 1
        try:
            delay = self._delay_s(index) if callable(self._delay_s) else self._delay_s
            if delay > 0:
                assert self._clock is not None, "a FakeReplica with a delay needs a clock"
                await self._clock.sleep(delay)
            if self.crashing:
                self.healthy_flag = False
                raise ReplicaDiedError(f"replica {self._id} crashed")
            return self._compute(inputs)
        finally:
            self._running -= 1

    def complete(self, index: int, outputs: dict[str, np.ndarray[Any, Any]]) -> None:
        self._pending[index].set_result(outputs)

    def fail(self, index: int, error: BaseException) -> None:
        self._pending[index].set_exception(error)

    async def stop(self) -> None:
        self.healthy_flag = False
