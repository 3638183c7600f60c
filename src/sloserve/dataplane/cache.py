"""Prediction cache: answers to repeated inputs, per model, bounded in bytes, expiring.

An entry is keyed by the version that computed it (the accuracy tier, once
variants are selected by SLO) and a digest of the input tensors
(:func:`input_digest`: BLAKE2b-256 over an unambiguous encoding of every
tensor's name, dtype, shape and bytes, so two different inputs never share a
key short of a hash collision). Each model has its own LRU bounded by its
:class:`~sloserve.model_config.CacheConfig` ``max_bytes`` (the answer arrays'
bytes plus a fixed overhead per entry) and entries expire ``ttl_s`` after they
were stored, by the injected clock.

Answers are tied to the replicas that computed them: :meth:`PredictionCache.retain`
takes every catalog snapshot and drops the entries of models that are gone or
whose config changed, and of versions that are gone or run by entirely new
replicas (a reloaded artifact starts new workers; scaling a version keeps some
of its replicas, and its answers). An answer computed by replicas that were
replaced while it ran is not stored.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from sloserve.catalog import CatalogSnapshot, RunningVersion
from sloserve.clock import Clock
from sloserve.model_config import CacheConfig, ModelConfig
from sloserve.replica import Arrays, Replica
from sloserve.types import ModelName, VersionId

Outputs = dict[str, np.ndarray[Any, Any]]

ENTRY_OVERHEAD_BYTES = 256
"""Charged per entry on top of its arrays: the key, the dict, the array headers."""


def input_digest(inputs: Arrays) -> bytes:
    """A 32-byte digest of the tensors (names, dtypes, shapes, contents), independent of their order."""
    h = hashlib.blake2b(digest_size=32)
    for name in sorted(inputs):
        array = inputs[name]
        encoded = name.encode()
        h.update(len(encoded).to_bytes(8, "little"))
        h.update(encoded)
        dtype = array.dtype.str.encode()
        h.update(len(dtype).to_bytes(8, "little"))
        h.update(dtype)
        h.update(len(array.shape).to_bytes(8, "little"))
        for dim in array.shape:
            h.update(int(dim).to_bytes(8, "little"))
        if array.dtype.hasobject:
            for item in array.ravel():
                raw = item if isinstance(item, bytes) else str(item).encode()
                tag = b"b" if isinstance(item, bytes) else b"s"
                h.update(tag + len(raw).to_bytes(8, "little"))
                h.update(raw)
        else:
            data = np.ascontiguousarray(array)
            h.update(data.nbytes.to_bytes(8, "little"))
            h.update(memoryview(data).cast("B"))  # type: ignore[arg-type]
    return h.digest()


def _nbytes(outputs: Mapping[str, np.ndarray[Any, Any]]) -> int:
    total = ENTRY_OVERHEAD_BYTES
    for array in outputs.values():
        total += array.nbytes
        if array.dtype.hasobject:
            total += sum(len(x) if isinstance(x, bytes | str) else 64 for x in array.ravel())
    return total


@dataclass(slots=True)
class _Entry:
    outputs: Outputs
    nbytes: int
    expires_s: float


class _ModelCache:
    def __init__(self, config: ModelConfig) -> None:
        self.config = config
        self.entries: OrderedDict[tuple[VersionId, bytes], _Entry] = OrderedDict()
        self.nbytes = 0
        self.running: dict[VersionId, tuple[Replica, ...]] = {}
        """The replicas each cached version's answers come from."""

    def drop(self, key: tuple[VersionId, bytes]) -> None:
        entry = self.entries.pop(key, None)
        if entry is not None:
            self.nbytes -= entry.nbytes

    def drop_version(self, version: VersionId) -> None:
        for key in [k for k in self.entries if k[0] == version]:
            self.drop(key)


class PredictionCache:
    def __init__(self, clock: Clock) -> None:
        self._clock = clock
        self._models: dict[ModelName, _ModelCache] = {}

    def nbytes(self, model: str) -> int:
        cache = self._models.get(ModelName(model))
        return cache.nbytes if cache is not None else 0

    def __len__(self) -> int:
        return sum(len(c.entries) for c in self._models.values())

    def retain(self, snapshot: CatalogSnapshot) -> None:
        """Keep only what ``snapshot``'s running versions computed; call with every snapshot applied."""
        for name in list(self._models):
            cache = self._models[name]
            loaded = snapshot.loaded.get(name)
            if loaded is None or loaded.config != cache.config:
                del self._models[name]
                continue
            for version, replicas in list(cache.running.items()):
                running = loaded.running.get(version)
                if running is None or not _shared(running.replicas, replicas):
                    cache.drop_version(version)
                    del cache.running[version]
        for name, loaded in snapshot.loaded.items():
            if not loaded.config.cache.enabled:
                continue
            kept = self._models.get(name)
            if kept is None:
                kept = self._models[name] = _ModelCache(loaded.config)
            for version, running in loaded.running.items():
                kept.running[version] = running.replicas

    def lookup(self, model: str, version: VersionId, key: bytes) -> Outputs | None:
        cache = self._models.get(ModelName(model))
        if cache is None:
            return None
        entry = cache.entries.get((version, key))
        if entry is None:
            return None
        if self._clock.now() >= entry.expires_s:
            cache.drop((version, key))
            return None
        cache.entries.move_to_end((version, key))
        return entry.outputs

    def store(
        self, model: str, running: RunningVersion, key: bytes, outputs: Mapping[str, np.ndarray[Any, Any]]
    ) -> None:
        """Keep ``outputs`` (copied, read-only) if ``running`` still serves the model and they fit."""
        cache = self._models.get(ModelName(model))
        if cache is None or not _shared(running.replicas, cache.running.get(running.version, ())):
            return  # cache off, or the version was replaced while this answer was computed
        config: CacheConfig = cache.config.cache
        copies: Outputs = {}
        for name, array in outputs.items():
            copy = np.array(array, copy=True, order="C")
            copy.flags.writeable = False
            copies[name] = copy
        nbytes = _nbytes(copies)
        if nbytes > config.max_bytes:
            return
        slot = (running.version, key)
        cache.drop(slot)
        while cache.entries and cache.nbytes + nbytes > config.max_bytes:
            _, evicted = cache.entries.popitem(last=False)
            cache.nbytes -= evicted.nbytes
        cache.entries[slot] = _Entry(copies, nbytes, self._clock.now() + config.ttl_s)
        cache.nbytes += nbytes


def _shared(a: tuple[Replica, ...], b: tuple[Replica, ...]) -> bool:
    """Whether two replica tuples have a replica (the same object) in common."""
    return any(x is y for x in a for y in b)
