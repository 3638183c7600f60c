"""One running version of a model on the request path: its batcher, replicas and statistics."""

from __future__ import annotations

from sloserve.catalog import RunningVersion
from sloserve.clock import Clock
from sloserve.dataplane.batcher import BatchingSpec, DynamicBatcher
from sloserve.dataplane.replica_set import ReplicaSet
from sloserve.dataplane.stats import ModelStats
from sloserve.metrics import ServingMetrics
from sloserve.model_config import ModelConfig


class VersionHost:
    def __init__(self, config: ModelConfig, running: RunningVersion, clock: Clock, metrics: ServingMetrics) -> None:
        self.config = config
        self.running = running
        self.version = running.version
        self.stats = ModelStats(name=config.name, version=running.version)
        self.replicas = ReplicaSet(running.replicas, [o.name for o in config.outputs], clock)
        spec = BatchingSpec(
            max_batch_size=config.max_batch_size,
            max_queue_delay_s=config.batching.max_queue_delay_us / 1e6,
            max_queue_size=config.batching.max_queue_size,
        )
        name = config.name

        def on_batch(rows: int, compute_s: float) -> None:
            self.stats.batch_executed(rows, compute_s)
            metrics.batch_executed(name, rows, compute_s)

        self.batcher = DynamicBatcher(spec, self.replicas, clock, on_batch)

    def start(self) -> None:
        self.batcher.start()

    async def close(self) -> None:
        await self.batcher.close()
