"""Variant families for the simulator: from the registry's profiles, a JSON file, or a synthetic generator.

A :class:`SimVariant` is what the simulator needs of a variant: its accuracy, its
fitted latency model (``intercept_ms + per_row_ms * rows``), its cost, batch limits,
cold start and what one replica sustains. A replica's simulated service time is the
latency model at the batch size times lognormal noise (see the engine).
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sloserve.errors import InvalidArgumentError, NotFoundError
from sloserve.policy.selection import Slo
from sloserve.registry.db import RegistryDB
from sloserve.sim.workload import SloClass
from sloserve.variant import VariantRecord, VariantStatus


@dataclass(frozen=True, slots=True)
class SimVariant:
    id: str
    accuracy: float | None
    intercept_ms: float
    per_row_ms: float
    cost_cpu_s_per_1k: float
    """CPU-seconds per 1,000 rows (selection's cost)."""
    best_batch: int
    max_batch: int
    load_ms: float
    capacity_rps: float
    """Rows per second one replica sustains at ``best_batch``."""
    cpus: int = 1

    def latency_ms(self, rows: int) -> float:
        return self.intercept_ms + self.per_row_ms * rows


@dataclass(frozen=True, slots=True)
class Family:
    model: str
    variants: tuple[SimVariant, ...]


def make_variant(
    id: str,
    accuracy: float | None,
    intercept_ms: float,
    per_row_ms: float,
    *,
    max_batch: int = 32,
    best_batch: int | None = None,
    load_ms: float = 0.0,
    cost_cpu_s_per_1k: float | None = None,
    cpus: int = 1,
) -> SimVariant:
    """A variant whose capacity (and, unless given, cost) follow from its latency model at the best batch."""
    if intercept_ms < 0 or per_row_ms < 0 or intercept_ms + per_row_ms <= 0:
        raise InvalidArgumentError(f"variant {id!r}: latency must be positive (intercept_ms, per_row_ms >= 0)")
    if max_batch < 1 or cpus < 1 or load_ms < 0:
        raise InvalidArgumentError(f"variant {id!r}: max_batch and cpus must be >= 1, load_ms >= 0")
    best = max_batch if best_batch is None else best_batch
    if not 1 <= best <= max_batch:
        raise InvalidArgumentError(f"variant {id!r}: best_batch must be between 1 and max_batch ({max_batch})")
    batch_ms = intercept_ms + per_row_ms * best
    cost = batch_ms / best * cpus if cost_cpu_s_per_1k is None else cost_cpu_s_per_1k
    return SimVariant(
        id, accuracy, intercept_ms, per_row_ms, cost, best, max_batch, load_ms, best / batch_ms * 1e3, cpus
    )


def from_records(model: str, records: Sequence[VariantRecord]) -> Family:
    """The ready, profiled variants of a registered model."""
    variants = []
    for r in records:
        p = r.profile
        if r.status is not VariantStatus.READY or p is None:
            continue
        max_batch = max(p.latency_ms) if p.latency_ms else max(p.best_batch, 1)
        intercept = max(p.latency_intercept_ms, 0.0)
        per_row = max(p.latency_per_row_ms, 0.0)
        if intercept + per_row <= 0:  # a degenerate fit: fall back to the measured batch-1 median
            intercept = p.latency_ms[min(p.latency_ms)].p50_ms if p.latency_ms else 1.0
        variants.append(
            SimVariant(
                r.id,
                p.accuracy,
                intercept,
                per_row,
                p.cost_cpu_s_per_1k,
                max(1, min(p.best_batch, max_batch)),
                max_batch,
                p.load_ms,
                p.throughput_sps,
                max(1, p.intra_op_threads),
            )
        )
    if not variants:
        raise NotFoundError(f"model {model!r} has no ready, profiled variant to simulate")
    return Family(model, tuple(variants))


def from_registry(db_path: Path, repository: Path, model: str) -> Family:
    if not db_path.exists():
        raise NotFoundError(f"no registry database at {db_path}; register {model!r} first (`sloserve register`)")
    with RegistryDB(db_path, repository) as db:
        records = db.variants(model)
    if not records:
        raise NotFoundError(f"model {model!r} is not registered in {repository}; see `sloserve register`")
    return from_records(model, records)


_JSON_FIELDS = ("id", "accuracy", "intercept_ms", "per_row_ms", "cost_cpu_s_per_1k", "best_batch", "load_ms")
_JSON_OPTIONAL = ("max_batch", "cpus")


def from_json(path: Path) -> Family:
    """A family file: a list of variants, or ``{"model": NAME, "variants": [...]}``.

    Each variant: ``id``, ``accuracy`` (or null), ``intercept_ms``, ``per_row_ms`` required;
    ``cost_cpu_s_per_1k`` (default: CPU time per row at the best batch), ``best_batch``
    (default ``max_batch``), ``max_batch`` (default 32), ``load_ms`` (default 0), ``cpus`` (default 1).
    """
    try:
        raw = json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise InvalidArgumentError(f"{path}: not valid JSON: {error}") from None
    model = path.stem
    if isinstance(raw, dict):
        model = str(raw.get("model", model))
        raw = raw.get("variants")
    if not isinstance(raw, list) or not raw:
        raise InvalidArgumentError(f"{path}: expected a non-empty list of variants (or {{'model', 'variants'}})")
    variants = [_json_variant(path, i, item) for i, item in enumerate(raw)]
    ids = [v.id for v in variants]
    if len(set(ids)) != len(ids):
        raise InvalidArgumentError(f"{path}: variant ids must be unique, got {ids}")
    return Family(model, tuple(variants))


def _json_variant(path: Path, index: int, item: Any) -> SimVariant:
    where = f"{path}: variant {index}"
    if not isinstance(item, dict):
        raise InvalidArgumentError(f"{where}: expected an object")
    unknown = set(item) - set(_JSON_FIELDS) - set(_JSON_OPTIONAL)
    if unknown:
        raise InvalidArgumentError(f"{where}: unknown field(s) {', '.join(sorted(unknown))}")
    for key in ("id", "intercept_ms", "per_row_ms"):
        if key not in item:
            raise InvalidArgumentError(f"{where}: missing {key!r}")

    def number(key: str, default: float) -> float:
        value = item.get(key, default)
        if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
            raise InvalidArgumentError(f"{where}: {key} must be a number, got {value!r}")
        return float(value)

    def integer(key: str, default: int) -> int:
        value = item.get(key, default)
        if isinstance(value, bool) or not isinstance(value, int):
            raise InvalidArgumentError(f"{where}: {key} must be an integer, got {value!r}")
        return value

    accuracy = None if item.get("accuracy") is None else number("accuracy", 0.0)
    if accuracy is not None and accuracy > 1:
        raise InvalidArgumentError(f"{where}: accuracy must be at most 1, got {accuracy}")
    max_batch = integer("max_batch", 32)
    try:
        return make_variant(
            str(item["id"]),
            accuracy,
            number("intercept_ms", 0.0),
            number("per_row_ms", 0.0),
            max_batch=max_batch,
            best_batch=integer("best_batch", max_batch),
            load_ms=number("load_ms", 0.0),
            cost_cpu_s_per_1k=None if item.get("cost_cpu_s_per_1k") is None else number("cost_cpu_s_per_1k", 0.0),
            cpus=integer("cpus", 1),
        )
    except InvalidArgumentError as error:
        raise InvalidArgumentError(f"{path}: {error.message}") from None


def synthetic(count: int, model: str = "synthetic") -> Family:
    """``count`` variants along a latency/accuracy/cost frontier, for scale studies.

    From ``syn-0`` (accuracy 0.80, 2 ms + 1 ms/row, cold start 0.2 s) to ``syn-{count-1}``
    (accuracy 0.98, 20 ms + 20 ms/row, cold start 1 s), geometric in between; batches up to
    32 rows, one CPU per replica. Deterministic: no seed involved.
    """
    if count < 1:
        raise InvalidArgumentError(f"--synthetic needs at least one variant, got {count}")
    variants = []
    for i in range(count):
        f = i / (count - 1) if count > 1 else 0.0
        variants.append(
            make_variant(
                f"syn-{i}",
                round(0.80 + 0.18 * (1 - (1 - f) ** 2), 4),
                round(2.0 * 10**f, 4),
                round(1.0 * 20**f, 4),
                max_batch=32,
                load_ms=round(200.0 * 5**f, 1),
            )
        )
    return Family(model, tuple(variants))


def default_classes(family: Family) -> tuple[SloClass, ...]:
    """Two SLO classes from a family's profiles, half the arrivals each.

    ``tight``: 4x the fastest variant's batch-1 latency, any accuracy. ``loose``: 4x the most
    accurate variant's batch-1 latency, at least the family's median accuracy.
    """
    fastest = min(v.latency_ms(1) for v in family.variants)
    accuracies = sorted(v.accuracy for v in family.variants if v.accuracy is not None)
    if not accuracies:
        return (SloClass("tight", Slo(round(4 * fastest, 3)), 0.5),)
    best = max(family.variants, key=lambda v: (v.accuracy if v.accuracy is not None else -math.inf, -v.latency_ms(1)))
    median = accuracies[(len(accuracies) - 1) // 2]
    return (
        SloClass("tight", Slo(round(4 * fastest, 3)), 0.5),
        SloClass("loose", Slo(round(4 * best.latency_ms(1), 3), median), 0.5),
    )
