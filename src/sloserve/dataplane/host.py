"""One running version of a model on the request path: its batcher, replicas and statistics."""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np

from sloserve.catalog import RunningVersion
from sloserve.clock import Clock
from sloserve.dataplane.batcher import BatchingSpec, DynamicBatcher, LoopShare
from sloserve.dataplane.hedger import Hedger
from sloserve.dataplane.replica_set import ReplicaSet
from sloserve.dataplane.stats import ModelStats
from sloserve.metrics import ServingMetrics
from sloserve.model_config import ModelConfig
from sloserve.policy.batching import LatencyModel
from sloserve.policy.routing import DEFAULT_ROUTING, Routing
from sloserve.variant import VariantProfile

EWMA_ALPHA = 0.1
MIN_CORRECTION, MAX_CORRECTION = 0.25, 8.0
ANSWERED_BULK = 512
"""Answers a host records before it adds them to the metrics, statistics and load window in one go, with numpy
(and before anything reads those: :meth:`VersionHost.flush`). One at a time, four calls an answer cost the event
loop ~1.7 µs a query more (`benchmarks/requestpath.py --http --against`, session 27: 33.0 against 34.7 µs
model-less, 30.4 against 32.0 `fp32` pinned), and near the loop's capacity every µs of a request's cost moves
the knee (`benchmarks/NOTEBOOK.md`, session 27)."""


@dataclass(slots=True)
class _LoadWindow:
    rows: int = 0
    refused_rows: int = 0
    queue_s: float = 0.0
    waits: int = 0


class VersionHost:
    """``split_rows`` is the batch a larger request is split into (scatter-gather): the version's best
    batch, ``max_batch_size`` until the profile's is fed in."""

    def __init__(
        self,
        config: ModelConfig,
        running: RunningVersion,
        clock: Clock,
        metrics: ServingMetrics,
        *,
        split_rows: int | None = None,
        routing: Routing = DEFAULT_ROUTING,
        profile: VariantProfile | None = None,
        loop: LoopShare | None = None,
    ) -> None:
        self.config = config
        self.running = running
        self.inline = any(getattr(r, "inline", False) for r in running.replicas)
        """Its replicas run on the event loop (``InlineReplica.inline``): selection counts their queue as the
        loop's. A host's replicas never change (a new set gets a new host)."""
        self.version = running.version
        self.stats = ModelStats(name=config.name, version=running.version)
        name = config.name
        self._name = name
        self._clock = clock
        self._metrics = metrics
        self._answered: list[tuple[int, float, float, float, bool]] = []
        """(rows, total s, queue s, compute s, SLO met) of the answers not added up yet (:meth:`flush`)."""
        self._answered_at = 0.0
        """When the latest of them was answered (the clock's time)."""
        self.split_rows = split_rows if split_rows is not None else config.max_batch_size
        hedger = None
        if config.hedging.enabled and config.hedging.budget > 0 and len(running.replicas) > 1:
            hedger = Hedger(config.hedging, clock, listener=lambda event: metrics.hedge_event(name, event))
            metrics.hedge_budget(name, lambda: hedger.tokens if hedger is not None else 0.0)
        self.replicas = ReplicaSet(
            running.replicas, [o.name for o in config.outputs], clock, routing=routing, hedger=hedger
        )
        spec = BatchingSpec(
            max_batch_size=config.max_batch_size,
            max_queue_delay_s=config.batching.max_queue_delay_us / 1e6,
            max_queue_size=config.batching.max_queue_size,
            max_slo_hold_s=config.batching.max_slo_hold_us / 1e6,
        )

        self.profile = profile
        self.correction = 1.0
        """EWMA of observed / profiled batch latency: the machine is shared and drifts."""
        self._load = _LoadWindow()

        def on_batch(rows: int, service_s: float) -> None:
            self.stats.batch_executed(rows, service_s)
            metrics.batch_executed(name, rows, service_s)
            self._observe(rows, service_s * 1e3)

        initial = self._profiled_model(profile) if profile is not None else LatencyModel(0.0, 0.0)
        self.batcher = DynamicBatcher(spec, self.replicas, clock, on_batch, initial, loop)
        self.queue = self.batcher.queue
        """The batcher's queue, which selection's kept check reads directly (``LiveState.queue``)."""

    def _profiled_model(self, p: VariantProfile) -> LatencyModel:
        return LatencyModel(p.latency_intercept_ms * self.correction, p.latency_per_row_ms * self.correction)

    def _observe(self, rows: int, compute_ms: float) -> None:
        """Correct the latency model by what batches really take (unprofiled: learn a flat one)."""
        if self.profile is None:
            previous = self.batcher.model.intercept_ms
            learned = compute_ms if previous == 0 else previous + EWMA_ALPHA * (compute_ms - previous)
            self.batcher.model = LatencyModel(learned, 0.0)
            return
        predicted = max(self.profile.predict_latency_ms(rows), 1e-3)
        ratio = min(MAX_CORRECTION, max(MIN_CORRECTION, compute_ms / predicted))
        self.correction += EWMA_ALPHA * (ratio - self.correction)
        self.batcher.model = self._profiled_model(self.profile)

    # -- what selection (LiveState) and the autoscaler read -----------------------------------------

    @property
    def queued_rows(self) -> int:
        return self.batcher.queued_rows

    @property
    def busy(self) -> int:
        return self.batcher.busy

    @property
    def running_ms(self) -> float:
        return self.batcher.running_ms

    @property
    def replica_count(self) -> int:
        """Replicas that can take a batch now, which selection divides the queue by: 0 while every worker or
        actor is down or restarting, so admission refuses SLO queries at once (429) instead of queueing them to
        expire. Inline replicas are always all of them (they are down only while the version unloads)."""
        replicas = self.running.replicas
        if self.inline:
            return len(replicas)
        return sum(1 for r in replicas if r.healthy)

    @property
    def batch_limit(self) -> int:
        return self.batcher.limit

    def routed(self, rows: int) -> None:
        self._load.rows += rows

    def refused(self, rows: int) -> None:
        self._load.refused_rows += rows

    def answered(self, rows: int, total_s: float, queue_s: float, compute_s: float, slo_met: bool, now: float) -> None:
        """A query it served was answered at ``now``: counted in the metrics, statistics and load window, in bulk
        (:data:`ANSWERED_BULK`)."""
        answered = self._answered
        answered.append((rows, total_s, queue_s, compute_s, slo_met))
        self._answered_at = now
        if len(answered) >= ANSWERED_BULK:  # memory stays bounded with nobody reading
            self.flush()

    def flush(self) -> None:
        """Add the answers recorded so far to the metrics, the statistics and the load window: whatever reads
        them calls this first (the metrics' read, the statistics endpoint, :meth:`take_load`, :meth:`close`)."""
        answered, self._answered = self._answered, []
        if not answered:
            return
        rows, total, queue, compute, met = zip(*answered, strict=True)
        count, row_sum, met_count = len(answered), sum(rows), sum(met)
        total_s, queue_s, compute_s = np.array(total), np.array(queue), np.array(compute)
        last_ms = int((time.time() - (self._clock.now() - self._answered_at)) * 1000)
        self._metrics.requests_succeeded(self._name, count, row_sum, total_s, queue_s)
        self._metrics.slo_outcomes(self._name, self.version, met_count, count - met_count)
        self.stats.requests_succeeded(row_sum, total_s, queue_s, compute_s, last_ms)
        self._load.queue_s += float(queue_s.sum())
        self._load.waits += count

    def take_load(self) -> tuple[int, int, float]:
        """(rows routed, rows refused, mean queue wait in ms) since the last call."""
        self.flush()
        load, self._load = self._load, _LoadWindow()
        mean_ms = load.queue_s / load.waits * 1e3 if load.waits else 0.0
        return load.rows, load.refused_rows, mean_ms

    def start(self) -> None:
        self.batcher.start()

    async def close(self) -> None:
        await self.batcher.close()
        self.flush()
