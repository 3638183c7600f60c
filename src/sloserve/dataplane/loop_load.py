"""How far behind the serving process's event loop runs, and how busy it is (:class:`LoopLag`).

The server is one event loop: what it does per query (parsing, selection, batching,
answering) queues on it, and as that nears a whole core every query waits longer for
the loop, in bursts that no variant's queue shows. The batcher holds requests for
bigger batches only while the loop keeps up (:func:`sloserve.policy.batching.lag_hold_scale`) and has time
to spare (:func:`~sloserve.policy.batching.loop_hold_scale` of its busy share),
holds tight classes only while it has room (:func:`sloserve.policy.batching.loop_room`
of its busy share), and admission control refuses a query whose latency SLO the loop's lag
already spends, or, once the loop is saturated, its backlog (:attr:`LoopLag.backlog_ms`).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

from sloserve.policy.batching import (
    LOOP_LOAD_WINDOW_S,
    holdable_ms,
    lag_hold_scale,
    loop_hold_scale,
    loop_room,
)

LAG_PERIOD_S = 0.002
"""How often :class:`LoopLag` looks while the loop works (a timer each time: ~0.3% of a core)."""
IDLE_BUSY = 0.05
IDLE_PERIOD_S = 0.032
"""A loop that spent less than this share of the time since the last look running (its thread's CPU) is idle:
the next look comes twice as late, up to :data:`IDLE_PERIOD_S`, and at the period again once it works. On an
idle loop a look is all that wakes it, and a wake-up costs a VM tens of µs: an idle server looking every 2 ms
used 18-30 ms of CPU a second."""
LAG_EWMA = 0.3
"""The weight of a new look :data:`LAG_PERIOD_S` after the last in :attr:`LoopLag.lag_ms` (more after a longer
gap: the average follows time, not looks; it follows a change within ~10 ms)."""
LOOP_BUSY_SATURATED = 0.95
"""From this share of a core busy the loop is saturated: requests queue for it, outside any variant's queue
(with a client's connections all in use, in the client, where the server cannot see them at all), and
:attr:`LoopLag.backlog_ms` counts. Below, the loop's CPU per request also holds its timers and idle wake-ups,
and the requests in flight are mostly waiting out their holds, not for the loop. At ~100% of `digits'`
capacity (26,000 queries/s, `benchmarks/paired.py`, 6 reps a run) admission on the backlog took attainment
to 42.54%, 54.98% and 56.96% in three runs, against 2.77% and 15.36% without it (the lag check alone refusing
0.2-1%); at 80% (21,000, 16 reps) 99.08% against 99.08%. Refusing at twice the backlog (as many again waiting
to be read) made 74.24% at 100%, but at 80% it refused ~1% of a tight class that would have made it (a full
run's 80% of `digits` 98.73% with 0.9% refused, against 99.23% an hour before)."""
TIMER_SLACK_MS = 1.0
"""How late a timer may fire on an idle loop (uvloop's timers count whole milliseconds): not lag."""


class LoopLag:
    """How far behind the event loop runs: its own queueing delay, which no variant's queue shows.

    A timer every :data:`LAG_PERIOD_S` (backing off to :data:`IDLE_PERIOD_S` while the loop idles); :attr:`lag_ms` is the moving average of how late it fires, less
    :data:`TIMER_SLACK_MS`. On an idle loop that is 0. On one near its limit each turn reads, parses and
    answers more requests than the last, and a request waits for turns of that length between its steps
    (its batch's turn, and its answer's unless the batch's turn writes it): the data plane refuses at once a query
    whose latency SLO that wait would spend (:meth:`~sloserve.dataplane.dataplane.DataPlane.admit`), which sheds the load the loop cannot
    carry instead of serving everything late. ``clock`` reads seconds."""

    def __init__(
        self,
        clock: Callable[[], float] = time.monotonic,
        period_s: float = LAG_PERIOD_S,
        cpu: Callable[[], float] = time.thread_time,
    ) -> None:
        self._clock = clock
        self._cpu = cpu
        self._period_s = period_s
        self._timer: asyncio.TimerHandle | None = None
        self._due = 0.0
        self._next_s = period_s
        """Until the next look: the period, or longer while the loop idles."""
        self._clearing = False
        """The next look comes a period after a stall, whatever :attr:`_next_s` says."""
        self._window = (0.0, 0.0)
        self._last = (0.0, 0.0)
        """When the last look was, and the thread's CPU time then."""
        self.lag_ms = 0.0
        self.stall_ms = 0.0
        """How much later than due the last look came while the thread did no work (its process or VM was
        stopped, or it waited on another thread): what the requests read in the turn after it may have waited unseen, before they were read.
        Not averaged in :attr:`lag_ms`: the next look on time clears it, where averaging a 100 ms stall in
        would refuse every tight query for the ~20 ms the average takes to forget it."""
        self.stalls = 0
        """Looks that found a stall, since this was made (exported as ``sloserve_event_loop_stalls_total``)."""
        self.stalled_s = 0.0
        """Their :attr:`stall_ms` summed, in seconds."""
        self.busy = 0.0
        """The loop thread's CPU seconds per second over the last :data:`LOOP_LOAD_WINDOW_S` (``cpu`` reads the
        thread's CPU time; inline batches compute on it too)."""
        self.hold_share = 1.0
        """The lesser of :func:`lag_hold_scale` of :attr:`lag_ms` and :func:`loop_hold_scale` of :attr:`busy`,
        worked out at each look rather than per request."""
        self._busy_share = 1.0
        """:func:`loop_hold_scale` of :attr:`busy`, worked out with it."""
        self.room = 0.0
        """:func:`loop_room` of :attr:`busy`; none until a window has been measured."""
        self.holdable_ms = holdable_ms(0.0)
        """:func:`holdable_ms` of :attr:`room`, worked out with it rather than per request."""
        self.in_flight = 0
        """Requests the data plane has taken in and not yet answered (it counts them)."""
        self.taken = 0
        """Requests the data plane has taken in (served, failed or refused by the loop's check), since this was
        made (it counts them)."""
        self.ms_per_request = 0.0
        """The loop thread's CPU ms per request taken in over the last window while it was saturated
        (:data:`LOOP_BUSY_SATURATED`), else 0: times :attr:`in_flight`, the loop's work ahead of a request read
        now (:attr:`backlog_ms`)."""
        self._taken_then = 0

    def start(self) -> None:
        """Start looking (in the running loop); idempotent."""
        if self._timer is None:
            self._window = self._last = (self._clock(), self._cpu())
            self._next_s = self._period_s
            self._schedule(self._next_s)

    def stop(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self.lag_ms = self.stall_ms = self.busy = self.room = self.ms_per_request = 0.0
        self.hold_share = self._busy_share = 1.0
        self.holdable_ms = holdable_ms(0.0)

    @property
    def backlog_ms(self) -> float:
        """The loop's work ahead of a request read now while it is saturated: the requests in flight times its
        CPU per request, which on a loop busy every ms is the time they take to be answered (Little's law).
        0 below :data:`LOOP_BUSY_SATURATED`."""
        return self.in_flight * self.ms_per_request

    def _schedule(self, delay_s: float) -> None:
        self._due = self._clock() + delay_s
        self._timer = asyncio.get_running_loop().call_later(delay_s, self._look)

    def _look(self) -> None:
        now, cpu = self._clock(), self._cpu()
        last, cpu_last = self._last
        late_ms, worked_ms = (now - self._due) * 1e3, (cpu - cpu_last) * 1e3
        self.stall_ms = max(0.0, late_ms - worked_ms - TIMER_SLACK_MS)
        if self.stall_ms > 0.0:
            self.stalls += 1
            self.stalled_s += self.stall_ms / 1e3
        if not self._clearing:  # the look a period after a stall leaves the spacing as it was
            self._next_s = next_look_s(self._next_s, self._period_s, worked_ms / 1e3, now - last)
        late_ms = loop_late_ms(late_ms, worked_ms)
        self.lag_ms += lag_weight(now - last, self._period_s) * (late_ms - self.lag_ms)
        self.hold_share = min(lag_hold_scale(self.lag_ms), self._busy_share)
        self._last = (now, cpu)
        since, cpu_then = self._window
        if now - since >= LOOP_LOAD_WINDOW_S:
            self.busy = (cpu - cpu_then) / (now - since)
            self.room = loop_room(self.busy)
            self._busy_share = loop_hold_scale(self.busy)
            self.holdable_ms = holdable_ms(self.room)
            taken, self._taken_then = self.taken - self._taken_then, self.taken
            saturated = self.busy >= LOOP_BUSY_SATURATED and taken
            self.ms_per_request = (cpu - cpu_then) * 1e3 / taken if saturated else 0.0
            self._window = (now, cpu)
        # after a stall, one look a period on even on an idle loop (whose next would come up to IDLE_PERIOD_S
        # later, refusing for as long): once the loop has read what came meanwhile, it clears the stall
        self._clearing = self.stall_ms > 0.0
        self._schedule(self._period_s if self._clearing else self._next_s)


def loop_late_ms(late_ms: float, worked_ms: float) -> float:
    """How late a look was for the loop's work: ``late_ms`` past its due time, of which no more than the
    ``worked_ms`` of CPU its thread used since the last look, less :data:`TIMER_SLACK_MS`.

    A loop behind on its work is late because its turns run long: its thread works all the while, and the
    turns to come will be as long. A process that was not running at all (its VM or the kernel stopped it
    for 100 ms) finds its timer as late with no work done: that is :attr:`LoopLag.stall_ms`, which the
    requests read in the next turn waited and the turns after do not."""
    return max(0.0, min(late_ms, worked_ms) - TIMER_SLACK_MS)


def lag_weight(since_s: float, period_s: float) -> float:
    """The weight in :attr:`LoopLag.lag_ms` of a look ``since_s`` after the last: :data:`LAG_EWMA` a period after
    it, as if each period between had looked the same after a longer gap."""
    return 1.0 - float((1.0 - LAG_EWMA) ** max(1.0, since_s / period_s))


def next_look_s(current_s: float, period_s: float, cpu_s: float, since_s: float) -> float:
    """Until the next look, after one that found the loop's thread used ``cpu_s`` since the last, ``since_s`` ago:
    twice ``current_s`` (up to :data:`IDLE_PERIOD_S`) if that is under :data:`IDLE_BUSY` of the time, else the
    period."""
    if cpu_s < IDLE_BUSY * since_s:
        return max(period_s, min(2 * current_s, IDLE_PERIOD_S))
    return period_s
