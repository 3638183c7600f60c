"""What the control plane publishes and the data plane reads.

A :class:`CatalogSnapshot` is immutable: the control plane builds a new one for
every change (load, unload, a version started) and hands it to subscribers; the
request path reads the latest one and never takes a lock on control state.

A loaded model lists every version it can serve (for registered models, every
ready variant) and runs replicas for some of them: the default version at load,
others when first asked for (a pinned request waits for that cold start).
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

from sloserve.model_config import ModelConfig
from sloserve.replica import Replica
from sloserve.types import ModelName, VersionId
from sloserve.variant import VariantProfile


class ModelState(enum.Enum):
    READY = "READY"
    LOADING = "LOADING"
    UNLOADING = "UNLOADING"
    UNAVAILABLE = "UNAVAILABLE"


@dataclass(frozen=True, slots=True)
class RunningVersion:
    """One version with live replicas."""

    version: VersionId
    replicas: tuple[Replica, ...]


@dataclass(frozen=True, slots=True)
class LoadedModel:
    """A model that can serve: its config, its versions and those that are running."""

    config: ModelConfig
    versions: tuple[VersionId, ...]
    default: VersionId
    running: Mapping[VersionId, RunningVersion]
    profiles: Mapping[VersionId, VariantProfile] = field(default_factory=lambda: MappingProxyType({}))
    """Measured profiles of the versions that have one (registered models' variants)."""

    @property
    def name(self) -> ModelName:
        return self.config.name


@dataclass(frozen=True, slots=True)
class ModelStatus:
    """What the repository index reports for one model."""

    name: ModelName
    state: ModelState
    versions: tuple[VersionId, ...] = ()
    reason: str = ""


@dataclass(frozen=True, slots=True)
class CatalogSnapshot:
    loaded: Mapping[ModelName, LoadedModel] = field(default_factory=lambda: MappingProxyType({}))
    statuses: Mapping[ModelName, ModelStatus] = field(default_factory=lambda: MappingProxyType({}))
