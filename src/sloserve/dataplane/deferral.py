"""While the event loop runs behind, requests with time to spare wait, so that the tight ones go first.

The server is one event loop, and every request it has read takes its turns on it in the order it was
read: decoding, selection, batching, answering. The batcher serves its queue earliest deadline first, but
by the time a request reaches the batcher it has waited behind everything read before it, whatever their
deadlines. Near the knee the loop runs behind in bursts (a turn reads, parses and answers tens of requests),
and the class that misses is the tight one: a 25 ms query has 20 ms to spare where a 5 ms one has none.

So while the loop's lag (:class:`~sloserve.dataplane.loop_load.LoopLag`) is at least :data:`DEFER_LAG_MS`,
a request whose latency budget has more than :func:`release_slack_ms` left once its SLO is known waits in
a deadline-ordered heap before the rest of its work; the others go ahead. Waiting requests are released
in deadline order when their slack is down to :func:`release_slack_ms`, and, while the loop keeps up,
:data:`RELEASE_CHUNK` at each look of the lag (every 2 ms). The work is the same, done in deadline order:
the event loop's own earliest-deadline-first, which only deadlines make possible (requests without a
latency SLO never wait here).
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
from collections.abc import Callable
from typing import Protocol

DEFER_LAG_MS = 0.5
"""The loop's lag (after the timer's own slack) from which requests with time to spare wait."""
RELEASE_SLACK_MS = 8.0
"""A waiting request is released with this much of its budget left, plus :data:`RELEASE_LAG_TURNS` of the
loop's lag: enough for a turn of the loop to decode and batch it and another to answer it."""
RELEASE_LAG_TURNS = 3
RELEASE_CHUNK = 16
"""Requests released at each look while the loop keeps up (a burst of them all would make the next tight
requests wait behind it)."""


def release_slack_ms(lag_ms: float) -> float:
    """The budget a request keeps when it is released (and the least it must have left to wait at all)."""
    return RELEASE_SLACK_MS + RELEASE_LAG_TURNS * lag_ms


class Lag(Protocol):
    """What deferral reads of the event loop (:class:`~sloserve.dataplane.loop_load.LoopLag`)."""

    @property
    def lag_ms(self) -> float: ...


class Deferral:
    """The deadline-ordered waiting room; ``clock`` reads seconds. :meth:`pump` must be called regularly
    (the data plane calls it at each of :class:`~sloserve.dataplane.loop_load.LoopLag`'s looks)."""

    def __init__(self, clock: Callable[[], float], loop: Lag) -> None:
        self._clock = clock
        self._loop = loop
        self._heap: list[tuple[float, int, asyncio.Future[None]]] = []
        self._seq = itertools.count()
        self.deferred = 0
        """Requests that have waited here, in all."""

    def __len__(self) -> int:
        return len(self._heap)

    def wait(self, deadline_s: float) -> asyncio.Future[None] | None:
        """A future to await before going on, or None to go on at once: the loop keeps up, or the request
        has no time to spare."""
        lag_ms = self._loop.lag_ms
        if lag_ms < DEFER_LAG_MS or (deadline_s - self._clock()) * 1e3 <= release_slack_ms(lag_ms):
            return None
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        heapq.heappush(self._heap, (deadline_s, next(self._seq), future))
        self.deferred += 1
        return future

    def pump(self) -> None:
        """Release the requests whose slack is used up, and while the loop keeps up a chunk more."""
        heap = self._heap
        if not heap:
            return
        lag_ms = self._loop.lag_ms
        due = self._clock() + release_slack_ms(lag_ms) / 1e3
        extra = RELEASE_CHUNK if lag_ms < DEFER_LAG_MS else 0
        while heap and (heap[0][0] <= due or extra > 0):
            if heap[0][0] > due:
                extra -= 1
            future = heapq.heappop(heap)[2]
            if not future.done():  # not cancelled (the client went away)
                future.set_result(None)

    def release_all(self) -> None:
        """Release every waiting request (the server stops being ready: nothing will pump any more)."""
        while self._heap:
            future = heapq.heappop(self._heap)[2]
            if not future.done():
                future.set_result(None)
