"""What serving needs from the registry: which versions a registered model serves, and its variants."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sloserve.control.lifecycle import VariantLister, VersionPlanner, plan_from_disk
from sloserve.registry.db import RegistryDB
from sloserve.types import ModelName, VersionId
from sloserve.variant import VariantStatus, variant_json

REFERENCE_VARIANT = VersionId("fp32")


def registry_planner(db: RegistryDB) -> VersionPlanner:
    """A registered model serves its ready variants (``fp32`` by default); any other model what is on disk.

    Version folders without a ready record (a registration cut short) are never served.
    """

    def plan(name: ModelName, on_disk: Sequence[VersionId]) -> tuple[tuple[VersionId, ...], VersionId]:
        if db.model(name) is None:
            return plan_from_disk(name, on_disk)
        ready = [VersionId(r.id) for r in db.variants(name) if r.status is VariantStatus.READY and r.id in on_disk]
        if not ready:
            return plan_from_disk(name, on_disk)
        default = REFERENCE_VARIANT if REFERENCE_VARIANT in ready else ready[0]
        return tuple(ready), default

    return plan


def registry_lister(db: RegistryDB) -> VariantLister:
    def variants(name: ModelName) -> list[dict[str, Any]]:
        return [variant_json(r) for r in db.variants(name)]

    return variants
