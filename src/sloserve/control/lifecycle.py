"""Loading and unloading models: the control plane's side of the repository extension.

The lifecycle reads the repository, starts a model's replicas, and publishes a
new immutable :class:`CatalogSnapshot` after every change. Publishing awaits
the subscriber (the data plane), so by the time ``unload`` stops a model's
replicas, the data plane has already drained its queue.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from pathlib import Path
from types import MappingProxyType

from sloserve.catalog import CatalogSnapshot, LoadedModel, ModelState, ModelStatus
from sloserve.errors import NotFoundError, SloserveError
from sloserve.model_config import ModelConfig
from sloserve.registry.repository import ModelRepository
from sloserve.replica import Replica
from sloserve.types import ModelName, VersionId

log = logging.getLogger(__name__)

ReplicaFactory = Callable[[ModelConfig, Path, int], Replica]
"""Builds (not starts) replica number ``index`` of a model from its config and artifact."""

Publisher = Callable[[CatalogSnapshot], Awaitable[None]]


class ModelLifecycle:
    def __init__(self, repository: ModelRepository, make_replica: ReplicaFactory, publish: Publisher) -> None:
        self._repository = repository
        self._make_replica = make_replica
        self._publish = publish
        self._loaded: dict[ModelName, LoadedModel] = {}
        self._failed: dict[ModelName, ModelStatus] = {}
        self._lock = asyncio.Lock()

    @property
    def loaded(self) -> dict[ModelName, LoadedModel]:
        return dict(self._loaded)

    def index(self) -> list[ModelStatus]:
        """Every model in the repository with its state, loaded or not."""
        statuses = []
        for entry in self._repository.index():
            name = ModelName(entry.name)
            versions = tuple(entry.versions)
            if name in self._loaded:
                statuses.append(ModelStatus(name, ModelState.READY, versions))
            elif name in self._failed:
                statuses.append(self._failed[name])
            else:
                reason = "not loaded" if entry.state == "ok" else entry.reason
                statuses.append(ModelStatus(name, ModelState.UNAVAILABLE, versions, reason))
        return statuses

    async def _announce(self) -> None:
        statuses = {s.name: s for s in self.index()}
        for name, loaded in self._loaded.items():  # loaded models whose folder has gone stay listed
            statuses.setdefault(name, ModelStatus(name, ModelState.READY, (loaded.version,)))
        await self._publish(
            CatalogSnapshot(loaded=MappingProxyType(dict(self._loaded)), statuses=MappingProxyType(statuses))
        )

    async def load_all(self) -> list[ModelStatus]:
        """Load every model in the repository; a broken model is reported, not fatal."""
        for name in self._repository.names():
            with contextlib.suppress(SloserveError):
                await self.load(name)
        return self.index()

    async def load(self, name: str) -> None:
        """(Re)load a model from the repository; the old replicas stop once the new ones serve."""
        async with self._lock:
            model = ModelName(name)
            if model not in self._repository.names():
                raise NotFoundError(f"model {name!r} is not in the repository {self._repository.root}")
            try:
                loaded = await self._start(model)
            except SloserveError as error:
                self._failed[model] = ModelStatus(model, ModelState.UNAVAILABLE, (), error.message)
                await self._announce()
                raise
            self._failed.pop(model, None)
            old = self._loaded.get(model)
            self._loaded[model] = loaded
            await self._announce()
            if old is not None:
                await _stop_all(old.replicas)

    async def _start(self, name: ModelName) -> LoadedModel:
        entry = self._repository.load(name)
        version = max(entry.versions, key=lambda v: int(v) if v.isdigit() else -1)
        artifact = entry.versions[VersionId(version)]
        config = entry.config
        replicas = tuple(self._make_replica(config, artifact, i) for i in range(config.instance_count))
        results = await asyncio.gather(*(r.start() for r in replicas), return_exceptions=True)
        errors = [r for r in results if isinstance(r, BaseException)]
        if errors:
            await _stop_all(replicas)
            raise errors[0]
        log.info("loaded model %s version %s with %d replica(s)", name, version, len(replicas))
        return LoadedModel(config=config, version=VersionId(version), replicas=replicas)

    async def unload(self, name: str) -> None:
        async with self._lock:
            model = ModelName(name)
            loaded = self._loaded.pop(model, None)
            if loaded is None:
                if model not in self._repository.names():
                    raise NotFoundError(f"unknown model {name!r}")
                return  # already unloaded: unloading is idempotent
            await self._announce()
            await _stop_all(loaded.replicas)
            log.info("unloaded model %s", name)

    async def close(self) -> None:
        """Unload everything (data plane drains first, then replicas stop)."""
        async with self._lock:
            loaded = list(self._loaded.values())
            self._loaded.clear()
            await self._announce()
            for model in loaded:
                await _stop_all(model.replicas)


async def _stop_all(replicas: tuple[Replica, ...]) -> None:
    await asyncio.gather(*(r.stop() for r in replicas), return_exceptions=True)
