"""Fault and straggler injection in worker processes, for tests and benchmarks.

Off by default. A :class:`FaultSpec` reaches a worker only from code that builds
a :class:`~sloserve.cluster.local.LocalReplica` (tests, benchmarks) or from the
server operator's environment, read once when replicas are made
(:func:`faults_from_env`); nothing in a request can turn it on.

The worker applies it before it starts each batch: with probability
``slow_fraction`` it sleeps ``slow_ms`` first (a straggler: a GC pause, a noisy
neighbour), and after ``crash_after`` batches it exits abruptly, as a crashing
model would (each new worker counts again from zero).

This module imports only the standard library: the worker imports it before
numpy is allowed to load.
"""

from __future__ import annotations

import fnmatch
import os
import random
import time
from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Final

ENV_VAR: Final = "SLOSERVE_FAULTS"
"""``replica=<glob>;slow_fraction=0.1;slow_ms=50;crash_after=1000;seed=1`` (every key optional)."""

CRASH_EXIT_CODE: Final = 70


@dataclass(frozen=True, slots=True)
class FaultSpec:
    slow_fraction: float = 0.0
    """Share of batches delayed by ``slow_ms`` before they start, in [0, 1]."""
    slow_ms: float = 0.0
    crash_after: int | None = None
    """Exit abruptly before the batch after this many batches (None: never)."""
    seed: int | None = None
    """Seed of the straggler draws (None: a different sequence per worker)."""

    def __post_init__(self) -> None:
        if not 0.0 <= self.slow_fraction <= 1.0:
            raise ValueError(f"slow_fraction must be in [0, 1], got {self.slow_fraction}")
        if self.slow_ms < 0:
            raise ValueError(f"slow_ms must be >= 0, got {self.slow_ms}")
        if self.crash_after is not None and self.crash_after < 0:
            raise ValueError(f"crash_after must be >= 0, got {self.crash_after}")

    @property
    def active(self) -> bool:
        return (self.slow_fraction > 0 and self.slow_ms > 0) or self.crash_after is not None


def parse_faults(text: str) -> tuple[str, FaultSpec]:
    """``(replica glob, spec)`` from the :data:`ENV_VAR` syntax; raises ValueError on anything unknown."""
    pattern = "*"
    values: dict[str, float | int | None] = {}
    known = {f.name for f in fields(FaultSpec)}
    for item in filter(None, (part.strip() for part in text.split(";"))):
        key, sep, raw = item.partition("=")
        key, raw = key.strip(), raw.strip()
        if not sep:
            raise ValueError(f"{ENV_VAR}: expected key=value, got {item!r}")
        if key == "replica":
            pattern = raw
        elif key in ("crash_after", "seed"):
            values[key] = int(raw)
        elif key in known:
            values[key] = float(raw)
        else:
            raise ValueError(f"{ENV_VAR}: unknown key {key!r}; known: replica, {', '.join(sorted(known))}")
    return pattern, FaultSpec(**values)  # type: ignore[arg-type]


def faults_from_env(replica_id: str, environ: Mapping[str, str] | None = None) -> FaultSpec | None:
    """The faults the operator's environment asks for on ``replica_id``, or None."""
    text = (os.environ if environ is None else environ).get(ENV_VAR, "")
    if not text.strip():
        return None
    pattern, spec = parse_faults(text)
    return spec if fnmatch.fnmatchcase(replica_id, pattern) and spec.active else None


class FaultInjector:
    """The worker's side: call :meth:`before_batch` before starting each batch."""

    def __init__(self, spec: FaultSpec) -> None:
        self._spec = spec
        self._rng = random.Random(spec.seed)
        self._batches = 0
        self.slowed = 0

    def before_batch(self) -> None:
        spec = self._spec
        if spec.crash_after is not None and self._batches >= spec.crash_after:
            os._exit(CRASH_EXIT_CODE)
        self._batches += 1
        if spec.slow_fraction > 0 and self._rng.random() < spec.slow_fraction:
            self.slowed += 1
            time.sleep(spec.slow_ms / 1000.0)
