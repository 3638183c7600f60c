"""Loading and unloading models: the control plane's side of the repository extension.

The lifecycle reads the repository, starts replicas, and publishes a new immutable
:class:`CatalogSnapshot` after every change. Loading a model starts its default
version; another version (a variant) starts when a request first pins it
(:meth:`ModelLifecycle.ensure_running`). Publishing awaits the subscriber (the data
plane), so by the time ``unload`` stops a model's replicas, the data plane has
already drained its queues.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any

from sloserve.catalog import CatalogSnapshot, LoadedModel, ModelState, ModelStatus, RunningVersion
from sloserve.errors import NotFoundError, SloserveError
from sloserve.model_config import ModelConfig
from sloserve.registry.repository import ModelRepository
from sloserve.replica import Replica
from sloserve.types import ModelName, VersionId
from sloserve.variant import VariantProfile

log = logging.getLogger(__name__)

ReplicaFactory = Callable[[ModelConfig, Path, int], Replica]
"""Builds (not starts) replica number ``index`` of a model from its config and artifact."""

Publisher = Callable[[CatalogSnapshot], Awaitable[None]]


@dataclass(frozen=True, slots=True)
class VersionPlan:
    """The versions a model serves, its default one, and the profiles of those that were measured."""

    versions: tuple[VersionId, ...]
    default: VersionId
    profiles: Mapping[VersionId, VariantProfile] = field(default_factory=dict)


VersionPlanner = Callable[[ModelName, Sequence[VersionId]], VersionPlan]
"""Given the versions on disk, what the model serves."""

VariantLister = Callable[[ModelName], list[dict[str, Any]]]
"""A model's variants with their profiles, as JSON objects (empty for a model never registered)."""


def no_variants(name: ModelName) -> list[dict[str, Any]]:
    return []


def plan_from_disk(name: ModelName, on_disk: Sequence[VersionId]) -> VersionPlan:
    """Every version on disk is served; the default is the highest numeric one (else the last)."""
    numeric = [v for v in on_disk if v.isdigit()]
    default = max(numeric, key=int) if numeric else on_disk[-1]
    return VersionPlan(tuple(on_disk), default)


@dataclass(slots=True)
class _Model:
    config: ModelConfig
    artifacts: dict[VersionId, Path]
    versions: tuple[VersionId, ...]
    default: VersionId
    profiles: Mapping[VersionId, VariantProfile]
    running: dict[VersionId, RunningVersion] = field(default_factory=dict)

    def published(self) -> LoadedModel:
        return LoadedModel(
            self.config,
            self.versions,
            self.default,
            MappingProxyType(dict(self.running)),
            MappingProxyType(dict(self.profiles)),
        )


class ModelLifecycle:
    def __init__(
        self,
        repository: ModelRepository,
        make_replica: ReplicaFactory,
        publish: Publisher,
        plan: VersionPlanner = plan_from_disk,
        list_variants: VariantLister = no_variants,
    ) -> None:
        self._repository = repository
        self._make_replica = make_replica
        self._publish = publish
        self._plan = plan
        self._list_variants = list_variants
        self._models: dict[ModelName, _Model] = {}
        self._failed: dict[ModelName, ModelStatus] = {}
        self._lock = asyncio.Lock()

    @property
    def loaded(self) -> dict[ModelName, LoadedModel]:
        return {name: model.published() for name, model in self._models.items()}

    def index(self) -> list[ModelStatus]:
        """Every model in the repository with its state, loaded or not."""
        statuses = []
        for entry in self._repository.index():
            name = ModelName(entry.name)
            if name in self._models:
                statuses.append(ModelStatus(name, ModelState.READY, self._models[name].versions))
            elif name in self._failed:
                statuses.append(self._failed[name])
            else:
                reason = "not loaded" if entry.state == "ok" else entry.reason
                statuses.append(ModelStatus(name, ModelState.UNAVAILABLE, tuple(entry.versions), reason))
        return statuses

    def variants(self, name: str) -> list[dict[str, Any]]:
        return self._list_variants(ModelName(name))

    async def _announce(self) -> None:
        statuses = {s.name: s for s in self.index()}
        for name, model in self._models.items():  # loaded models whose folder has gone stay listed
            statuses.setdefault(name, ModelStatus(name, ModelState.READY, model.versions))
        loaded = {name: model.published() for name, model in self._models.items()}
        await self._publish(CatalogSnapshot(loaded=MappingProxyType(loaded), statuses=MappingProxyType(statuses)))

    async def load_all(self) -> list[ModelStatus]:
        """Load every model in the repository; a broken model is reported, not fatal."""
        for name in self._repository.names():
            with contextlib.suppress(SloserveError):
                await self.load(name)
        return self.index()

    async def load(self, name: str) -> None:
        """(Re)load a model from the repository; old replicas stop once the new ones serve."""
        async with self._lock:
            model_name = ModelName(name)
            if model_name not in self._repository.names():
                raise NotFoundError(f"model {name!r} is not in the repository {self._repository.root}")
            try:
                model = self._read(model_name)
                model.running[model.default] = await self._start(model, model.default)
            except SloserveError as error:
                self._failed[model_name] = ModelStatus(model_name, ModelState.UNAVAILABLE, (), error.message)
                await self._announce()
                raise
            self._failed.pop(model_name, None)
            old = self._models.get(model_name)
            self._models[model_name] = model
            await self._announce()
            if old is not None:
                await _stop_all(old.running.values())

    def _read(self, name: ModelName) -> _Model:
        entry = self._repository.load(name)
        plan = self._plan(name, list(entry.versions))
        artifacts = {v: entry.versions[v] for v in plan.versions}
        return _Model(entry.config, artifacts, plan.versions, plan.default, plan.profiles)

    async def _start(self, model: _Model, version: VersionId, count: int | None = None) -> RunningVersion:
        replicas = await self._start_replicas(model, version, range(count or model.config.instance_count))
        log.info("model %s version %s: %d replica(s) running", model.config.name, version, len(replicas))
        return RunningVersion(version, replicas)

    async def _start_replicas(self, model: _Model, version: VersionId, indexes: range) -> tuple[Replica, ...]:
        config = model.config
        artifact = model.artifacts[version]
        replicas = tuple(self._make_replica(config, artifact, i) for i in indexes)
        results = await asyncio.gather(*(r.start() for r in replicas), return_exceptions=True)
        errors = [r for r in results if isinstance(r, BaseException)]
        if errors:
            await _stop_all([RunningVersion(version, replicas)])
            raise errors[0]
        return replicas

    async def scale(self, name: str, version: str, replicas: int) -> None:
        """Run ``replicas`` replicas of a served version (0 stops it; the default version keeps one)."""
        async with self._lock:
            model = self._models.get(ModelName(name))
            wanted = VersionId(version)
            if model is None or wanted not in model.versions:
                raise NotFoundError(f"model {name!r} has no served version {version!r}")
            if wanted == model.default:
                replicas = max(1, replicas)
            current = model.running.get(wanted)
            have = len(current.replicas) if current else 0
            if replicas == have:
                return
            if replicas > have:
                added = await self._start_replicas(model, wanted, range(have, replicas))
                model.running[wanted] = RunningVersion(wanted, (current.replicas if current else ()) + added)
                await self._announce()
                return
            assert current is not None
            kept, dropped = current.replicas[:replicas], current.replicas[replicas:]
            if kept:
                model.running[wanted] = RunningVersion(wanted, kept)
            else:
                del model.running[wanted]
            await self._announce()  # the data plane stops routing new batches to them
            await _drain(dropped)
            await _stop_all([RunningVersion(wanted, dropped)])

    async def ensure_running(self, name: str, version: str) -> None:
        """Start replicas for a served version that is not running yet (a cold start)."""
        async with self._lock:
            model = self._models.get(ModelName(name))
            if model is None:
                raise NotFoundError(f"model {name!r} is not loaded")
            wanted = VersionId(version)
            if wanted not in model.versions:
                raise NotFoundError(f"model {name!r} has no version {version!r}; versions: {list(model.versions)}")
            if wanted in model.running:
                return
            model.running[wanted] = await self._start(model, wanted)
            await self._announce()

    async def unload(self, name: str) -> None:
        async with self._lock:
            model_name = ModelName(name)
            model = self._models.pop(model_name, None)
            if model is None:
                if model_name not in self._repository.names():
                    raise NotFoundError(f"unknown model {name!r}")
                return  # already unloaded: unloading is idempotent
            await self._announce()
            await _stop_all(model.running.values())
            log.info("unloaded model %s", name)

    async def close(self) -> None:
        """Unload everything (the data plane drains first, then replicas stop)."""
        async with self._lock:
            models = list(self._models.values())
            self._models.clear()
            await self._announce()
            for model in models:
                await _stop_all(model.running.values())


async def _drain(replicas: Sequence[Replica], timeout_s: float = 30.0, poll_s: float = 0.01) -> None:
    """Wait (bounded) until replicas taken out of service have answered what they were running."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while any(r.outstanding for r in replicas) and loop.time() < deadline:  # noqa: ASYNC110 (no event to wait on)
        await asyncio.sleep(poll_s)


async def _stop_all(running: Iterable[RunningVersion]) -> None:
    replicas = [r for version in running for r in version.replicas]
    await asyncio.gather(*(r.stop() for r in replicas), return_exceptions=True)
