"""What serving needs from the registry: which versions a registered model serves, and its variants."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sloserve.control.lifecycle import VariantLister, VersionPlan, VersionPlanner, plan_from_disk
from sloserve.registry.db import RegistryDB
from sloserve.types import ModelName, VersionId
from sloserve.variant import VariantStatus, variant_json

REFERENCE_VARIANT = VersionId("fp32")


def registry_planner(db: RegistryDB) -> VersionPlanner:
    """A registered model serves its ready variants (``fp32`` by default); any other model what is on disk.

    Version folders without a ready record (a registration cut short) are never served.
    """

    def plan(name: ModelName, on_disk: Sequence[VersionId]) -> VersionPlan:
        if db.model(name) is None:
            return plan_from_disk(name, on_disk)
        ready = [r for r in db.variants(name) if r.status is VariantStatus.READY and r.id in on_disk and r.profile]
        if not ready:
            return plan_from_disk(name, on_disk)
        ids = tuple(VersionId(r.id) for r in ready)
        default = REFERENCE_VARIANT if REFERENCE_VARIANT in ids else ids[0]
        profiles = {VersionId(r.id): r.profile for r in ready if r.profile is not None}
        return VersionPlan(ids, default, profiles)

    return plan


def registry_lister(db: RegistryDB) -> VariantLister:
    def variants(name: ModelName) -> list[dict[str, Any]]:
        return [variant_json(r) for r in db.variants(name)]

    return variants
