"""Deadline-aware adaptive batching for one running version of a model.

Requests wait in an earliest-deadline-first queue (requests without a deadline
after those with one, first come first served). A single loop turns the queue
into batches:

* once a replica slot is free it dispatches what is waiting, after holding it
  for others to join up to the earliest *release* among the requests waiting: a
  request with a deadline may wait :func:`~sloserve.policy.batching.hold_ms` of
  its latency budget (at most ``max_slo_hold_s``, times :attr:`hold_scale`,
  which AIMD shrinks when requests come near their deadlines, and less while
  the event loop runs behind; a tight class only while the loop has room:
  :class:`LoopShare`), one without a
  deadline ``max_queue_delay_s``; never later than a full batch could still make
  the head's deadline, and not at all once the batch is full (an arrival wakes
  the loop only when it fills the batch or brings the release forward);
* the batch size adapts by AIMD (Clipper): the limit grows by a few rows after a
  batch that ran within the tightest latency SLO in it and halves after one that
  did not (lateness from waiting is the queue's, not the batch size's); the
  batch actually taken is the largest under the limit whose predicted latency fits
  the tightest deadline waiting (:mod:`sloserve.policy.batching`);
* a request that can no longer meet its deadline, even alone, is dropped before
  compute with DEADLINE_EXCEEDED; it is never answered silently late;
* the queue is bounded: past ``max_queue_size`` waiting requests new ones are
  refused at once with RESOURCE_EXHAUSTED.

A request's answer goes to its *reply*: an asyncio future (:meth:`DynamicBatcher.submit`), or an object
whose ``set_result`` carries on from there (:meth:`DynamicBatcher.submit_reply`: the HTTP front end writes
the answer from the batcher's own turn of the event loop, sparing the wake-up of the request's task and the
turn it waits for). A batch failure fails every request in it with that error. Latency predictions
come from :attr:`DynamicBatcher.model`, which the owner keeps current (profile
times a live correction).
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import itertools
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from sloserve.clock import Clock
from sloserve.dataplane.replica_set import ReplicaSet
from sloserve.dataplane.waiting import Signal
from sloserve.errors import (
    DeadlineExceededError,
    InternalError,
    ResourceExhaustedError,
    SloserveError,
    UnavailableError,
)
from sloserve.policy.batching import (
    ARRIVALS_WINDOW_S,
    MIN_HOLD_MS,
    QUIET_WINDOWS,
    AimdConfig,
    LatencyModel,
    aimd_update,
    batch_take,
    batch_too_slow,
    expired,
    hold_ms,
    hold_scale_update,
    holdable_ms,
    holds_gather,
    near_miss_after,
)
from sloserve.replica import Arrays, Replica, ReplicaOutputs
from sloserve.types import ReplicaId

Outputs = dict[str, np.ndarray[Any, Any]]

_TIMER_GRAIN_S = MIN_HOLD_MS / 1e3
"""A hold with less left than this ends now: the event loop's timers have a resolution of a millisecond
(uvloop's fire at once below half of it), and waiting on them would spin the loop."""
_HOLDABLE_MS = holdable_ms(0.0)
"""The least latency budget :func:`hold_ms` can give a hold to on a busy loop (7.5 ms): a tighter request is not
held, and spared working out by how much."""
INLINE_TURN_S = 0.02
"""With inline replicas the batcher runs batches in its own turn of the event loop, one after another while
requests wait, for at most this long before it lets the loop read more (see :meth:`DynamicBatcher._loop`): in
practice it runs what waited when its turn began (nothing new arrives while it computes), and the bound only
keeps a model that is slow to compute from holding the loop longer.

It was 2 ms. After a burst near the loop's capacity more waited than 2 ms of batches (with their answers'
sends: ~17 µs a row for `digits`) could run, and the backlog drained in 2 ms slices between reads that grew
with the turns: turns of 5-9 ms while it lasted, whose lag refused the tight class (`benchmarks/timeline.py`,
22,000 queries/s). Running what waits drains it in one long turn instead. Paired (`benchmarks/paired.py`,
session 26, `benchmarks/NOTEBOOK.md`) the two bounds are level at 5,400-16,000 queries/s of `digits` and at
40-60% of `digits_wide`'s capacity; at 22,000, about the loop's capacity, about a point better over 36 reps,
within the spread of the collapses both still have there."""


@dataclass(frozen=True, slots=True)
class BatchingSpec:
    max_batch_size: int
    """Rows per batch; 0 means the model takes no batch dimension: one request per batch."""
    max_queue_delay_s: float
    """How long a request without a deadline may wait for others while a replica is free."""
    max_queue_size: int
    max_slo_hold_s: float = 0.0
    """The most a request with a deadline may wait for others (:func:`hold_ms` of its budget)."""


@dataclass(frozen=True, slots=True)
class RowsResult:
    outputs: Outputs
    queue_s: float
    compute_s: float


class Reply(Protocol):
    """Where a request's answer goes: an ``asyncio.Future``, or a continuation run in the batcher's turn (which
    must not raise: the rest of the batch is answered after it)."""

    def done(self) -> bool:
        """Answered already, or given up by its caller (then it is not computed)."""
        ...

    def set_result(self, result: RowsResult, /) -> None: ...

    def set_exception(self, exception: BaseException, /) -> None: ...


@dataclass(slots=True, eq=False, order=False)
class _Waiting:
    inputs: Arrays
    rows: int
    enqueued_s: float
    deadline_s: float | None
    release_s: float
    """Until when it may wait for others to join its batch."""
    future: Reply
    budget_ms: float = math.inf
    """Its latency budget (deadline less arrival); none without a deadline."""
    near_s: float = math.inf
    """An answer after this came near its deadline (:func:`near_miss_after`); never without one."""


@dataclass(slots=True)
class _Queue:
    """EDF heap of waiting requests: (deadline or +inf, arrival number, request)."""

    heap: list[tuple[float, int, _Waiting]] = field(default_factory=list)
    rows: int = 0
    seq: itertools.count[int] = field(default_factory=itertools.count)

    def push(self, waiting: _Waiting) -> None:
        key = math.inf if waiting.deadline_s is None else waiting.deadline_s
        heapq.heappush(self.heap, (key, next(self.seq), waiting))
        self.rows += waiting.rows

    def head(self) -> _Waiting:
        return self.heap[0][2]

    def pop(self) -> _Waiting:
        return self.pop_entry()[2]

    def pop_entry(self) -> tuple[float, int, _Waiting]:
        entry = heapq.heappop(self.heap)
        self.rows -= entry[2].rows
        return entry

    def put_back(self, entry: tuple[float, int, _Waiting]) -> None:
        """Return a popped request to its place (same key, same arrival number)."""
        heapq.heappush(self.heap, entry)
        self.rows += entry[2].rows

    def release_s(self) -> float:
        return min(w.release_s for _, _, w in self.heap)


class LoopShare(Protocol):
    """What the batcher reads of the event loop (:class:`~sloserve.dataplane.loop_load.LoopLag`)."""

    @property
    def hold_share(self) -> float:
        """The share of its hold a request gets given how far behind the loop runs and how busy it is
        (:func:`lag_hold_scale`, :func:`~sloserve.policy.batching.loop_hold_scale`)."""
        ...

    @property
    def room(self) -> float:
        """The room the loop has for holding tight classes, in [0, 1] (:func:`hold_ms`)."""
        ...

    @property
    def holdable_ms(self) -> float:
        """:func:`holdable_ms` of :attr:`room`: a request with less budget is not held, and spared working out by
        how much."""
        ...


BatchObserver = Callable[[int, float], None]
"""Called with (rows, service seconds) for every batch that ran successfully.

Service time is dispatch to the replica's finishing the batch (its
:attr:`~sloserve.replica.ReplicaOutputs.done_at` when it says, else the answer's
arrival), less the time the batch spent queued in the replica behind the one
before it (a replica runs its batches in order, up to ``capacity`` in flight):
what the batch itself took, which is what the latency model predicts. Waiting
behind other batches is the queue estimate's part; waiting for a busy event loop
to read the answer is the front end's."""


class DynamicBatcher:
    def __init__(
        self,
        spec: BatchingSpec,
        replicas: ReplicaSet,
        clock: Clock,
        on_batch: BatchObserver | None = None,
        model: LatencyModel | None = None,
        loop: LoopShare | None = None,
    ) -> None:
        self._spec = spec
        self._replicas = replicas
        self._clock = clock
        self._on_batch = on_batch
        self.model = model or LatencyModel(0.0, 0.0)
        """Predicted batch latency; kept current by the owner."""
        self._aimd = AimdConfig(max_batch=max(spec.max_batch_size, 1))
        self.limit = self._aimd.max_batch
        """The AIMD batch-size limit."""
        self._queue = _Queue()
        self._arrival = Signal(clock)
        self._inline = bool(replicas.replicas) and all(getattr(r, "inline", False) for r in replicas.replicas)
        """Every replica computes on the event loop: batches run synchronously (:meth:`_loop`)."""
        self._slo_holds = spec.max_batch_size > 0 and spec.max_slo_hold_s > 0
        """Requests with a deadline may be held for their batch to grow. Inline too: a batch's fixed cost there is
        the batcher's turn, the run call and the answers (`digits` at 3,100 queries/s, model-less, 8 paired runs:
        8% less server CPU per query with holds)."""
        self._max_hold_ms = spec.max_slo_hold_s * 1e3
        self._gathers = True
        """Holds are expected to gather more requests (:func:`holds_gather`, decided every
        :data:`ARRIVALS_WINDOW_S` from the requests that came in it, off after :data:`QUIET_WINDOWS` in a row)."""
        self._quiet = QUIET_WINDOWS - 1
        """Quiet windows in a row; a new batcher has seen no traffic, so one quiet window turns holds off."""
        self._arrived = 0
        self._arrivals_since = clock.now()
        self._holds = self._slo_holds or (spec.max_batch_size > 0 and spec.max_queue_delay_s > 0)
        self._window_until: float | None = None
        """While the loop holds a batch for more requests: until when."""
        self._loop_share = loop
        """How the event loop fares (None: as if idle for the lag, busy for tight holds)."""
        self.hold_scale = 1.0
        """How much of their hold requests with a deadline get (:func:`hold_scale_update`)."""
        self._closed = False
        self._running: set[asyncio.Task[None]] = set()
        self._loop_task: asyncio.Task[None] | None = None
        self.expired = 0
        """Requests dropped because they could no longer meet their deadline."""
        self.running_ms = 0.0
        """Predicted latency of the batches running now, summed."""
        self._finished: dict[ReplicaId, float] = {}
        """When each replica last answered a batch (for service times)."""

    @property
    def queued(self) -> int:
        return len(self._queue.heap)

    @property
    def queued_rows(self) -> int:
        return self._queue.rows

    @property
    def queue(self) -> _Queue:
        """The waiting requests (its ``rows`` are :attr:`queued_rows`); the same object for the batcher's life."""
        return self._queue

    @property
    def busy(self) -> int:
        """Batches running on replicas now."""
        return len(self._running)

    def start(self) -> None:
        if self._loop_task is None:
            self._loop_task = asyncio.create_task(self._loop(), name="batcher")

    def submit(self, inputs: Arrays, rows: int, deadline_s: float | None = None) -> asyncio.Future[RowsResult]:
        """Queue a request; the returned future resolves with its own rows' outputs."""
        future: asyncio.Future[RowsResult] = asyncio.get_running_loop().create_future()
        self.submit_reply(inputs, rows, deadline_s, future)
        return future

    def submit_reply(self, inputs: Arrays, rows: int, deadline_s: float | None, reply: Reply) -> None:
        """Queue a request whose answer (its own rows' outputs, or the error) goes to ``reply``. Raises at once
        (nothing queued) when the batcher is closing or its queue is full."""
        if self._closed:
            raise UnavailableError("the model is unloading and takes no new requests")
        if len(self._queue.heap) >= self._spec.max_queue_size:
            raise ResourceExhaustedError(
                f"the queue is full ({self._spec.max_queue_size} requests waiting); retry later"
            )
        now = self._clock.now()
        self._arrived += 1
        if now - self._arrivals_since >= ARRIVALS_WINDOW_S:
            gathers = holds_gather(self._arrived, now - self._arrivals_since, self._max_hold_ms)
            self._quiet = 0 if gathers else self._quiet + 1
            self._gathers = self._quiet < QUIET_WINDOWS
            self._arrived, self._arrivals_since = 0, now
        if deadline_s is None:
            release = now + self._spec.max_queue_delay_s if self._holds else now
            waiting = _Waiting(inputs, rows, now, None, release, reply)
        else:
            budget_ms = (deadline_s - now) * 1e3
            release = now
            if self._slo_holds and self._gathers:
                loop = self._loop_share
                if loop is None:
                    if budget_ms >= _HOLDABLE_MS:
                        release += hold_ms(budget_ms, self._max_hold_ms, self.hold_scale) / 1e3
                elif budget_ms >= loop.holdable_ms and (scale := self.hold_scale * loop.hold_share) > 0.0:
                    release += hold_ms(budget_ms, self._max_hold_ms, scale, loop.room) / 1e3  # none on a busy loop
            near_s = near_miss_after(release, deadline_s)
            waiting = _Waiting(inputs, rows, now, deadline_s, release, reply, budget_ms, near_s)
        self._queue.push(waiting)
        if release <= now and self._dispatch_now():
            return
        until = self._window_until
        if until is None or self._queue.rows >= self.limit or self._latest_start(waiting) < until:
            self._arrival.set()

    def _latest_start(self, waiting: _Waiting) -> float:
        """The end of the window ``waiting`` allows: its release, or earlier if its deadline needs it."""
        if waiting.deadline_s is None:
            return waiting.release_s
        full_ms = self.model.predict_ms(max(self._queue.rows, self.limit))
        return min(waiting.release_s, waiting.deadline_s - full_ms / 1e3)

    def _dispatch_now(self) -> bool:
        """Fast path at low load: a lone request not to be held and a free slot: start the batch here and
        spare the loop a wake-up (one event-loop hop, tens of µs, on every lightly loaded request)."""
        if self._loop_task is None or len(self._queue.heap) != 1 or self._inline:
            return False  # inline: the batcher's next turn takes whatever arrived meanwhile, in one batch
        replica = self._replicas.try_acquire()
        if replica is None:
            return False
        batch = self._take()
        if not batch:
            self._replicas.release(replica)
            return True
        self._start(batch, replica)
        return True

    async def close(self) -> None:
        """Refuse new requests, let queued and running ones finish, stop the loop."""
        self._closed = True
        self._arrival.set()
        if self._loop_task is not None:
            await self._loop_task
        if self._running:
            await asyncio.gather(*self._running, return_exceptions=True)

    async def _loop(self) -> None:
        """Wait for requests, hold the window, take a batch, start it on a free replica; again.

        A replica in another process computes while the loop goes on, so its batch runs in a task of its own
        once a replica slot is free. A replica that computes inline would only add turns of the loop (a task
        to start the batch, another to hand the slot back): near saturation a turn is long (it reads and
        parses everything that came in meanwhile), and a batcher that needs turns per batch falls behind the
        more requests arrive. Inline batches run here, synchronously, one after another while requests wait
        (their answers written as each batch ends), for up to :data:`INLINE_TURN_S` (from the wake-up, or the
        end of a hold, in which the loop had its turns) before the loop gets a turn to read more. Counted from
        the wake-up alone, a hold made every batch after it yield a turn first (0.7-0.9 of the batches at 20%
        of `digits`' capacity, with the bound at 2 ms)."""
        turn_started = self._clock.now()
        while True:
            while not self._queue.heap:
                if self._closed:
                    return
                self._arrival.clear()
                await self._arrival.wait()
                turn_started = self._clock.now()
            if await self._wait_window():  # the loop had its turns meanwhile: the batches run from now
                turn_started = self._clock.now()
            if self._inline:
                batch = self._take()
                if batch:
                    self._run_inline(batch)
                if self._clock.now() - turn_started >= INLINE_TURN_S:
                    await asyncio.sleep(0)
                    turn_started = self._clock.now()
                continue
            replica = self._replicas.try_acquire() or await self._acquire()
            if replica is None:
                continue
            batch = self._take()
            if not batch:
                self._replicas.release(replica)
                continue
            self._start(batch, replica)

    async def _acquire(self) -> Replica | None:
        """Wait for a replica slot (every one busy, or none healthy). Meanwhile the request at the head is failed
        the moment it can no longer make its deadline, not when a slot frees: a replica that is down for a
        while must not keep a client with a 10 ms SLO waiting for as long. None once nothing waits."""
        queue = self._queue
        while True:
            now = self._clock.now()
            while queue.heap:
                first = queue.head()
                if first.future.done():  # the caller gave up while waiting
                    queue.pop()
                elif first.deadline_s is not None and expired(
                    now * 1e3, first.deadline_s * 1e3, first.rows, self.model
                ):
                    self._drop_late(queue.pop(), now)
                else:
                    break
            if not queue.heap:
                return None
            head = queue.head()
            wait_s = None
            if head.deadline_s is not None:
                wait_s = max(_TIMER_GRAIN_S, head.deadline_s - self.model.predict_ms(head.rows) / 1e3 - now)
            with contextlib.suppress(UnavailableError):  # no slot within wait_s: look at the head again
                return await self._replicas.acquire(wait_s)

    def _drop_late(self, waiting: _Waiting, now: float) -> None:
        """Fail a request that can no longer finish in time even alone with DEADLINE_EXCEEDED. Its SLO runs from
        when the server began reading it, so the message says what is left of it, not only the queue's wait."""
        self.expired += 1
        deadline_s = now if waiting.deadline_s is None else waiting.deadline_s
        self.hold_scale = hold_scale_update(self.hold_scale, True)
        _fail(
            [waiting],
            DeadlineExceededError(
                f"dropped before compute: the request could no longer finish within its latency SLO "
                f"({max(0.0, deadline_s - now) * 1e3:.1f} ms of it left after {(now - waiting.enqueued_s) * 1e3:.1f} "
                f"ms in the batching queue; a batch takes ~{self.model.predict_ms(waiting.rows):.2f} ms)"
            ),
        )

    def _start(self, batch: list[_Waiting], replica: Replica) -> None:
        task = asyncio.create_task(self._run(batch, replica))
        self._running.add(task)
        task.add_done_callback(self._running.discard)

    async def _wait_window(self) -> bool:
        """Hold the batch for later requests until the earliest release waiting, never past the head's
        last moment; at once when the batch is full. Whether it held."""
        held = False
        if not self._holds:
            return held
        queue = self._queue
        while queue.heap and queue.rows < self.limit and not self._closed:
            now = self._clock.now()
            until = queue.release_s()
            head = queue.head()
            if head.deadline_s is not None:
                until = min(until, head.deadline_s - self.model.predict_ms(max(queue.rows, self.limit)) / 1e3)
            if until - now < _TIMER_GRAIN_S:
                return held
            held = True
            self._arrival.clear()
            self._window_until = until
            try:
                await self._arrival.wait(until - now)
            finally:
                self._window_until = None
        return held

    def _take(self) -> list[_Waiting]:
        """The next batch in deadline order (:func:`batch_take` decides how much of it); requests that can no
        longer make their deadline are failed here."""
        now = self._clock.now()
        queue = self._queue
        entries: list[tuple[float, int, _Waiting]] = []
        rows = 0
        # a request with a later deadline and no more rows than a full batch is in time: spared the check
        safe_rows = self._aimd.max_batch
        safe_s = now + self.model.predict_ms(safe_rows) / 1e3
        while queue.heap and (not entries or rows < self.limit):
            entry = queue.pop_entry()
            waiting = entry[2]
            if waiting.future.done():  # the caller gave up (cancelled) while waiting
                continue
            if (
                (entry[0] < safe_s or waiting.rows > safe_rows)
                and waiting.deadline_s is not None
                and expired(now * 1e3, waiting.deadline_s * 1e3, waiting.rows, self.model)
            ):
                self._drop_late(waiting, now)
                continue
            entries.append(entry)
            rows += waiting.rows
            if self._spec.max_batch_size == 0:
                break
        if len(entries) > 1:
            deadlines = [key * 1e3 for key, _, _ in entries]
            take = batch_take(deadlines, [e[2].rows for e in entries], now * 1e3, self.limit, self.model)
            for entry in entries[take:]:
                queue.put_back(entry)
            entries = entries[:take]
        return [entry[2] for entry in entries]

    def _run_inline(self, batch: list[_Waiting]) -> None:
        """:meth:`_run` for inline replicas: the batch computes now, on this thread."""
        started = self._clock.now()
        try:
            replica, outputs = self._replicas.run_inline(_merge(batch))
        except SloserveError as error:
            _fail(batch, error)
            return
        except Exception as error:  # a bug: still answer every waiting request
            _fail(batch, InternalError(f"batch failed: {error!r}"))
            return
        self._finish(batch, replica, outputs, started)

    async def _run(self, batch: list[_Waiting], replica: Replica) -> None:
        started = self._clock.now()
        predicted_ms = self.model.predict_ms(sum(w.rows for w in batch))
        self.running_ms += predicted_ms
        try:
            outputs = await self._replicas.execute(replica, _merge(batch))
        except SloserveError as error:
            _fail(batch, error)
            return
        except Exception as error:  # a bug: still answer every waiting request
            _fail(batch, InternalError(f"batch failed: {error!r}"))
            return
        finally:
            self.running_ms = max(0.0, self.running_ms - predicted_ms)
        self._finish(batch, replica, outputs, started)

    def _finish(self, batch: list[_Waiting], replica: Replica, outputs: Outputs, started: float) -> None:
        """Learn from a batch that ran (service time, AIMD, hold scale) and answer its requests."""
        rows = sum(w.rows for w in batch)
        finished = self._clock.now()
        compute_s = finished - started
        # The replica's own time: from when it could start this batch (after the one ahead of it there)
        # to when it finished, if it says (not when the event loop got round to the answer).
        done = outputs.done_at if isinstance(outputs, ReplicaOutputs) else None
        end = finished if done is None else min(finished, max(started, done))
        service_s = end - max(started, self._finished.get(replica.id, started))
        self._finished[replica.id] = end
        tightest_ms = near_s = math.inf
        for w in batch:  # one pass of reads: this runs for every batch
            if w.budget_ms < tightest_ms:
                tightest_ms = w.budget_ms
            if w.near_s < near_s:
                near_s = w.near_s
        if tightest_ms == math.inf:  # no deadline in it
            self.limit = aimd_update(self.limit, False, self._aimd)
        else:
            self.limit = aimd_update(self.limit, batch_too_slow(service_s * 1e3, tightest_ms), self._aimd)
            self.hold_scale = hold_scale_update(self.hold_scale, finished > near_s)
        if self._on_batch is not None:
            self._on_batch(rows, service_s)
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
        reply = waiting.future
        if not reply.done():
            reply.set_exception(error)
            if isinstance(reply, asyncio.Future):  # the caller may have gone away: no warning about it
                with contextlib.suppress(BaseException):
                    reply.exception()
