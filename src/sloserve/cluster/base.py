"""Compatibility re-export; the interface lives in :mod:`sloserve.replica`."""

from sloserve.replica import Arrays, Replica

__all__ = ["Arrays", "Replica"]
