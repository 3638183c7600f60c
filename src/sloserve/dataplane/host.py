"""One loaded model on the request path: its batcher, replicas and statistics."""

from __future__ import annotations

from sloserve.catalog import LoadedModel
from sloserve.clock import Clock
from sloserve.dataplane.batcher import BatchingSpec, DynamicBatcher
from sloserve.dataplane.replica_set import ReplicaSet
from sloserve.dataplane.stats import ModelStats
from sloserve.errors import NotFoundError
from sloserve.metrics import ServingMetrics


class ModelHost:
    def __init__(self, loaded: LoadedModel, clock: Clock, metrics: ServingMetrics) -> None:
        config = loaded.config
        self.loaded = loaded
        self.config = config
        self.stats = ModelStats(name=config.name, version=loaded.version)
        self.replicas = ReplicaSet(loaded.replicas, [o.name for o in config.outputs], clock)
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

    def check_version(self, version: str | None) -> None:
        if version not in (None, "", self.loaded.version):
            raise NotFoundError(
                f"model {self.config.name!r} has no version {version!r}; available: {self.loaded.version!r}"
            )

    async def close(self) -> None:
        await self.batcher.close()
