"""How busy the serving process is: the share of a core its CPU time took over the last window.

The server is one event loop: what it does per query (parsing, selection, batching,
answering) is CPU time of this process, and as that nears a whole core every query
waits longer for the loop, in bursts. The batcher holds requests for bigger batches
only while the loop has room (:func:`sloserve.policy.batching.loop_hold_scale`).
"""

from __future__ import annotations

import time
from collections.abc import Callable

from sloserve.clock import Clock
from sloserve.policy.batching import LOOP_LOAD_WINDOW_S


class LoopLoad:
    """CPU seconds per second of this process, over windows of ``window_s`` of ``clock`` time."""

    def __init__(
        self, clock: Clock, cpu_s: Callable[[], float] = time.process_time, window_s: float = LOOP_LOAD_WINDOW_S
    ) -> None:
        self._clock = clock
        self._cpu_s = cpu_s
        self._window_s = window_s
        self._since = clock.now()
        self._cpu_at = cpu_s()
        self._busy = 0.0

    def busy(self) -> float:
        """The last complete window's share of a core (0 until one has passed); at most one CPU-time
        reading a window, so it costs a comparison per call."""
        now = self._clock.now()
        if now - self._since >= self._window_s:
            cpu = self._cpu_s()
            self._busy = (cpu - self._cpu_at) / (now - self._since)
            self._since, self._cpu_at = now, cpu
        return self._busy
