"""One running version of a model on the request path: its batcher, replicas and statistics."""

from __future__ import annotations

from sloserve.catalog import RunningVersion
from sloserve.clock import Clock
from sloserve.dataplane.batcher import BatchingSpec, DynamicBatcher
from sloserve.dataplane.hedger import Hedger
from sloserve.dataplane.replica_set import ReplicaSet
from sloserve.dataplane.stats import ModelStats
from sloserve.metrics import ServingMetrics
from sloserve.model_config import ModelConfig
from sloserve.policy.routing import DEFAULT_ROUTING, Routing


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
    ) -> None:
        self.config = config
        self.running = running
        self.version = running.version
        self.stats = ModelStats(name=config.name, version=running.version)
        name = config.name
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
        )

        def on_batch(rows: int, compute_s: float) -> None:
            self.stats.batch_executed(rows, compute_s)
            metrics.batch_executed(name, rows, compute_s)

        self.batcher = DynamicBatcher(spec, self.replicas, clock, on_batch)

    def start(self) -> None:
        self.batcher.start()

    async def close(self) -> None:
        await self.batcher.close()
