"""One variant's simulated replicas and queue: the engine's mutable state, one object per variant.

Replicas of a variant are identical, so a pool keeps counts, not replica objects:
``ready`` replicas are up (``free`` idle, ``busy`` running one batch each, ``retiring``
of the busy ones leave when their batch is done) and ``starting`` holds the times the
ones in their cold start come up.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass

from sloserve.policy.batching import QUIET_WINDOWS, AimdConfig, LatencyModel
from sloserve.sim.config import SimConfig
from sloserve.sim.family import SimVariant


class Pool:
    __slots__ = (
        "aimd",
        "arrivals_since",
        "arrived",
        "base",
        "batches",
        "busy",
        "busy_ms",
        "correction",
        "dirty",
        "drops",
        "edf",
        "fifo",
        "free",
        "gathers",
        "hold_scale",
        "index",
        "key",
        "limit",
        "live",
        "max_replicas",
        "model",
        "pos",
        "queue_wait_ms",
        "queue_waits",
        "queued_rows",
        "quiet",
        "ready",
        "refused_rows",
        "release_at",
        "retiring",
        "routed_rows",
        "running_ms",
        "selected",
        "served_rows",
        "starting",
        "timer_at",
        "variant",
    )

    def __init__(self, index: int, key: str, model: int, pos: int, variant: SimVariant, config: SimConfig) -> None:
        self.index = index
        """Position among all pools (the outcome code of the requests it serves)."""
        self.key = key
        """``variant`` or, with several models, ``model/variant``."""
        self.model = model
        self.pos = pos
        """Position in its family."""
        self.variant = variant
        self.base = LatencyModel(variant.intercept_ms, variant.per_row_ms)
        """The profile's latency model."""
        self.correction = 1.0
        """EWMA of observed / profiled service time."""
        self.live = self.base
        """The latency model corrected by ``correction``: what batching and queue estimates use."""
        self.aimd = AimdConfig(variant.max_batch, config.aimd_increase, config.aimd_decrease)
        self.limit = variant.best_batch
        self.edf: list[tuple[float, int]] = []
        """Heap of (deadline ms, request id): earliest deadline first, then arrival order."""
        self.fifo: deque[int] = deque()
        self.queued_rows = 0
        self.hold_scale = 1.0
        """How much of their hold requests get (the batcher's AIMD on near misses)."""
        self.release_at = math.inf
        self.gathers = True
        """Holds are expected to gather more requests (:func:`~sloserve.policy.batching.holds_gather`, as the
        batcher decides it: from the requests admitted in each ``ARRIVALS_WINDOW_S``, off after ``QUIET_WINDOWS``)."""
        self.quiet = QUIET_WINDOWS - 1  # no traffic seen yet: one quiet window turns holds off
        self.arrived = 0
        self.arrivals_since = 0.0
        """The earliest time a queued request stops waiting for others to join its batch (nan: recompute)."""
        self.ready = 0
        self.free = 0
        self.busy = 0
        self.running_ms = 0.0
        """Predicted service time of the batches running now (half of it is left, on average)."""
        self.retiring = 0
        self.starting: deque[float] = deque()
        self.dirty = False
        """Its candidate must be rebuilt before the next selection."""
        self.timer_at = -1.0
        # Since the last autoscaler tick:
        self.routed_rows = 0
        self.refused_rows = 0
        self.queue_wait_ms = 0.0
        self.queue_waits = 0
        # Over the run:
        self.selected = 0
        self.drops = 0
        self.batches = 0
        self.served_rows = 0
        self.busy_ms = 0.0
        self.max_replicas = 0

    @property
    def staying(self) -> int:
        """Replicas up and not leaving."""
        return self.ready - self.retiring

    @property
    def provisioned(self) -> int:
        """Replicas up or coming up, not leaving: what the autoscaler sees."""
        return self.ready - self.retiring + len(self.starting)

    def stats(self, model: str) -> PoolStats:
        return PoolStats(
            self.key,
            model,
            self.variant,
            self.selected,
            self.drops,
            self.batches,
            self.served_rows,
            self.busy_ms,
            self.provisioned,
            self.max_replicas,
            self.limit,
            self.correction,
        )


@dataclass(frozen=True, slots=True)
class PoolStats:
    key: str
    model: str
    variant: SimVariant
    selected: int
    drops: int
    batches: int
    served_rows: int
    busy_ms: float
    final_replicas: int
    max_replicas: int
    final_batch_limit: int
    final_correction: float
