"""Typed identifiers shared by every layer."""

from __future__ import annotations

from typing import NewType

ModelName = NewType("ModelName", str)
"""Name of a model in the repository (a folder name)."""

VersionId = NewType("VersionId", str)
"""A model version as it travels on the wire (the later variant id)."""

ReplicaId = NewType("ReplicaId", str)
"""Identifies one replica (worker process or actor) of a model."""

VariantId = VersionId
"""A variant of a model (``fp32``, ``int8-dynamic``, ...): on the wire, a version of the model."""
