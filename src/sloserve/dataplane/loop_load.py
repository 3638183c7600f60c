"""How far behind the serving process's event loop runs, and how busy it is (:class:`LoopLag`).

The server is one event loop: what it does per query (parsing, selection, batching,
answering) queues on it, and as that nears a whole core every query waits longer for
the loop, in bursts that no variant's queue shows. The batcher holds requests for
bigger batches only while the loop keeps up (:func:`sloserve.policy.batching.lag_hold_scale`),
holds tight classes only while it has room (:func:`sloserve.policy.batching.loop_hold_scale`
of its busy share), and admission control refuses a query whose latency SLO the loop's lag
already spends.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

from sloserve.policy.batching import LOOP_LOAD_WINDOW_S, lag_hold_scale, loop_hold_scale

LAG_PERIOD_S = 0.002
"""How often :class:`LoopLag` looks (a timer each time: ~0.3% of a core)."""
LAG_EWMA = 0.3
"""The weight of each new look in :attr:`LoopLag.lag_ms` (it follows a change within ~10 ms)."""
TIMER_SLACK_MS = 1.0
"""How late a timer may fire on an idle loop (uvloop's timers count whole milliseconds): not lag."""


class LoopLag:
    """How far behind the event loop runs: its own queueing delay, which no variant's queue shows.

    A timer every :data:`LAG_PERIOD_S`; :attr:`lag_ms` is the moving average of how late it fires, less
    :data:`TIMER_SLACK_MS`. On an idle loop that is 0. On one near its limit each turn reads, parses and
    answers more requests than the last, and a request waits for turns of that length between its steps
    (its batch's turn, its answer): the data plane refuses at once a query whose latency SLO that wait
    would spend (:meth:`~sloserve.dataplane.dataplane.DataPlane.infer`), which sheds the load the loop cannot
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
        self._window = (0.0, 0.0)
        self.lag_ms = 0.0
        self.busy = 0.0
        """The loop thread's CPU seconds per second over the last :data:`LOOP_LOAD_WINDOW_S` (``cpu`` reads the
        thread's CPU time; inline batches compute on it too)."""
        self.hold_share = 1.0
        """:func:`lag_hold_scale` of :attr:`lag_ms`, worked out at each look rather than per request."""
        self.room = 0.0
        """:func:`loop_hold_scale` of :attr:`busy`; none until a window has been measured."""

    def start(self) -> None:
        """Start looking (in the running loop); idempotent."""
        if self._timer is None:
            self._window = (self._clock(), self._cpu())
            self._schedule()

    def stop(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self.lag_ms = self.busy = self.room = 0.0
        self.hold_share = 1.0

    def _schedule(self) -> None:
        self._due = self._clock() + self._period_s
        self._timer = asyncio.get_running_loop().call_later(self._period_s, self._look)

    def _look(self) -> None:
        now = self._clock()
        late_ms = max(0.0, (now - self._due) * 1e3 - TIMER_SLACK_MS)
        self.lag_ms += LAG_EWMA * (late_ms - self.lag_ms)
        self.hold_share = lag_hold_scale(self.lag_ms)
        since, cpu_then = self._window
        if now - since >= LOOP_LOAD_WINDOW_S:
            cpu = self._cpu()
            self.busy = (cpu - cpu_then) / (now - since)
            self.room = loop_hold_scale(self.busy)
            self._window = (now, cpu)
        self._schedule()
