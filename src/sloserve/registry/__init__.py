"""registry: the model repository on disk (and, later, SQLite metadata)."""

from sloserve.registry.repository import IndexEntry, ModelEntry, ModelRepository

__all__ = ["IndexEntry", "ModelEntry", "ModelRepository"]
