"""Dynamic batching for one model.

Requests queue here; a single loop merges them into batches of at most
``max_batch_size`` rows. It is work-conserving: once a replica slot is free it
dispatches whatever has arrived, waiting at most ``max_queue_delay_s`` after the
oldest request for more to come (0: no wait). While every replica is busy,
requests keep merging, so batches grow with load on their own. A batch failure
fails every request in it with that error. The queue is bounded: past
``max_queue_size`` waiting requests, new ones are refused at once.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from sloserve.clock import Clock
from sloserve.dataplane.replica_set import ReplicaSet
from sloserve.dataplane.waiting import wait_event
from sloserve.errors import InternalError, ResourceExhaustedError, SloserveError, UnavailableError
from sloserve.replica import Arrays, Replica

Outputs = dict[str, np.ndarray[Any, Any]]


@dataclass(frozen=True, slots=True)
class BatchingSpec:
    max_batch_size: int
    """Rows per batch; 0 means the model takes no batch dimension: one request per batch."""
    max_queue_delay_s: float
    max_queue_size: int


@dataclass(frozen=True, slots=True)
class RowsResult:
    outputs: Outputs
    queue_s: float
    compute_s: float


@dataclass(slots=True, eq=False)
class _Waiting:
    inputs: Arrays
    rows: int
    enqueued_s: float
    future: asyncio.Future[RowsResult]


BatchObserver = Callable[[int, float], None]
"""Called with (rows, compute seconds) for every batch that ran successfully."""


class DynamicBatcher:
    def __init__(
        self,
        spec: BatchingSpec,
        replicas: ReplicaSet,
        clock: Clock,
        on_batch: BatchObserver | None = None,
    ) -> None:
        self._spec = spec
        self._replicas = replicas
        self._clock = clock
        self._on_batch = on_batch
        self._queue: deque[_Waiting] = deque()
        self._queued_rows = 0
        self._arrival = asyncio.Event()
        self._closed = False
        self._running: set[asyncio.Task[None]] = set()
        self._loop_task: asyncio.Task[None] | None = None

    @property
    def queued(self) -> int:
        return len(self._queue)

    def start(self) -> None:
        if self._loop_task is None:
            self._loop_task = asyncio.create_task(self._loop(), name="batcher")

    def submit(self, inputs: Arrays, rows: int) -> Awaitable[RowsResult]:
        """Queue a request; the returned future resolves with its own rows' outputs."""
        if self._closed:
            raise UnavailableError("the model is unloading and takes no new requests")
        if len(self._queue) >= self._spec.max_queue_size:
            raise ResourceExhaustedError(
                f"the queue is full ({self._spec.max_queue_size} requests waiting); retry later"
            )
        future: asyncio.Future[RowsResult] = asyncio.get_running_loop().create_future()
        self._queue.append(_Waiting(inputs, rows, self._clock.now(), future))
        self._queued_rows += rows
        self._arrival.set()
        return future

    async def close(self) -> None:
        """Refuse new requests, let queued and running ones finish, stop the loop."""
        self._closed = True
        self._arrival.set()
        if self._loop_task is not None:
            await self._loop_task
        if self._running:
            await asyncio.gather(*self._running, return_exceptions=True)

    async def _loop(self) -> None:
        while True:
            while not self._queue:
                if self._closed:
                    return
                self._arrival.clear()
                await self._arrival.wait()
            await self._wait_window()
            replica = await self._replicas.acquire()
            batch = self._take()
            if not batch:
                self._replicas.release(replica)
                continue
            task = asyncio.create_task(self._run(batch, replica))
            self._running.add(task)
            task.add_done_callback(self._running.discard)

    async def _wait_window(self) -> None:
        """Give later requests up to ``max_queue_delay_s`` after the oldest to join it."""
        delay = self._spec.max_queue_delay_s
        if delay <= 0 or self._spec.max_batch_size == 0:
            return
        deadline = self._queue[0].enqueued_s + delay
        while self._queued_rows < self._spec.max_batch_size and not self._closed:
            remaining = deadline - self._clock.now()
            if remaining <= 0:
                return
            self._arrival.clear()
            await wait_event(self._arrival, self._clock, remaining)

    def _take(self) -> list[_Waiting]:
        batch: list[_Waiting] = []
        rows = 0
        limit = self._spec.max_batch_size
        while self._queue:
            head = self._queue[0]
            if head.future.done():  # the caller gave up (cancelled) while waiting
                self._queue.popleft()
                self._queued_rows -= head.rows
                continue
            if batch and (limit == 0 or rows + head.rows > limit):
                break
            self._queue.popleft()
            self._queued_rows -= head.rows
            batch.append(head)
            rows += head.rows
        return batch

    async def _run(self, batch: list[_Waiting], replica: Replica) -> None:
        started = self._clock.now()
        try:
            outputs = await self._replicas.execute(replica, _merge(batch))
        except SloserveError as error:
            _fail(batch, error)
            return
        except Exception as error:  # a bug: still answer every waiting request
            _fail(batch, InternalError(f"batch failed: {error!r}"))
            return
        finished = self._clock.now()
        compute_s = finished - started
        rows = sum(w.rows for w in batch)
        if self._on_batch is not None:
            self._on_batch(rows, compute_s)
        _answer(batch, outputs, started, compute_s, split=self._spec.max_batch_size > 0)


def _merge(batch: list[_Waiting]) -> Arrays:
    if len(batch) == 1:
        return batch[0].inputs
    names = batch[0].inputs.keys()
    return {name: np.concatenate([w.inputs[name] for w in batch]) for name in names}


def _answer(batch: list[_Waiting], outputs: Outputs, started: float, compute_s: float, split: bool) -> None:
    offset = 0
    for waiting in batch:
        if split and len(batch) > 1:
            stop = offset + waiting.rows
            mine = {name: array[offset:stop] for name, array in outputs.items()}
            offset = stop
        else:
            mine = outputs
        if not waiting.future.done():
            waiting.future.set_result(RowsResult(mine, started - waiting.enqueued_s, compute_s))


def _fail(batch: list[_Waiting], error: SloserveError) -> None:
    for waiting in batch:
        if not waiting.future.done():
            waiting.future.set_exception(error)
            # The caller may have gone away; don't warn about an exception nobody retrieves.
            with contextlib.suppress(BaseException):
                waiting.future.exception()
