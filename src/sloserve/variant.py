"""Variants of a model and their measured profiles: the vocabulary of model-less serving.

A registered model owns a family of variants (``fp32``, ``int8-dynamic``, ...). Each
variant is a version of its model in the repository (``<repo>/<model>/<variant id>/
model.onnx``) with a :class:`VariantRecord` in the registry database and, once
measured, a :class:`VariantProfile`. A variant is visible (``ready``) only together
with its profile.
"""

from __future__ import annotations

import enum
from dataclasses import asdict, dataclass, field
from typing import Any

from sloserve.types import ModelName, VariantId


class VariantStatus(enum.Enum):
    READY = "ready"
    SKIPPED = "skipped"
    FAILED = "failed"


class Task(enum.Enum):
    CLASSIFICATION = "classification"
    REGRESSION = "regression"
    OTHER = "other"


class AccuracyKind(enum.Enum):
    """How ``accuracy`` was measured (higher is better, at most 1)."""

    TOP1 = "top1"  # classifier, against labels
    R2 = "r2"  # regressor, against labels
    FIDELITY_TOP1 = "fidelity_top1"  # classifier, agreement with the reference model's top-1
    FIDELITY = "fidelity"  # 1 - relative error against the reference model's outputs


@dataclass(frozen=True, slots=True)
class LatencyStats:
    p50_ms: float
    p95_ms: float
    p99_ms: float


@dataclass(frozen=True, slots=True)
class VariantProfile:
    """What the profiler measured for one variant on this machine."""

    latency_ms: dict[int, LatencyStats]
    """Batch size -> latency of one batch through a serving worker (IPC included)."""
    latency_intercept_ms: float
    latency_per_row_ms: float
    """Fitted latency model: latency(b) ~ intercept + per_row * b (INFaaS)."""
    best_batch: int
    throughput_sps: float
    """Rows per second at ``best_batch``."""
    accuracy: float | None
    accuracy_kind: AccuracyKind | None
    memory_mb: float
    """Peak resident memory of the worker process serving the variant."""
    size_bytes: int
    load_ms: float
    """Cold start: from starting a worker to its first answer."""
    flops_per_row: int
    parameters: int
    cost_cpu_s_per_1k: float
    """CPU seconds spent by the worker per 1,000 rows at ``best_batch``."""
    intra_op_threads: int = 1
    measured_at: float = 0.0

    def predict_latency_ms(self, batch: int) -> float:
        return self.latency_intercept_ms + self.latency_per_row_ms * batch

    def to_dict(self) -> dict[str, Any]:
        raw = asdict(self)
        raw["latency_ms"] = {str(b): asdict(s) for b, s in sorted(self.latency_ms.items())}
        raw["accuracy_kind"] = self.accuracy_kind.value if self.accuracy_kind else None
        return raw

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> VariantProfile:
        values = dict(raw)
        values["latency_ms"] = {int(b): LatencyStats(**s) for b, s in raw["latency_ms"].items()}
        kind = raw.get("accuracy_kind")
        values["accuracy_kind"] = AccuracyKind(kind) if kind else None
        return cls(**values)


@dataclass(frozen=True, slots=True)
class VariantRecord:
    model: ModelName
    id: VariantId
    recipe: str
    status: VariantStatus
    reason: str = ""
    parent: VariantId | None = None
    artifact: str | None = None
    """Path of the variant's ONNX file (None when skipped or failed)."""
    execution_provider: str = "CPUExecutionProvider"
    meant_for: str = "cpu"
    """Hardware the recipe targets ("gpu" for fp16: profiled here on CPU regardless)."""
    profile: VariantProfile | None = None
    pareto: bool = False
    details: dict[str, Any] = field(default_factory=dict)


def variant_json(record: VariantRecord) -> dict[str, Any]:
    """The JSON object of one variant: ``sloserve variants --json`` and ``GET /v2/models/{m}/variants``."""
    p = record.profile
    return {
        "id": record.id,
        "recipe": record.recipe,
        "status": record.status.value,
        "reason": record.reason,
        "parent": record.parent,
        "meant_for": record.meant_for,
        "execution_provider": record.execution_provider,
        "accuracy": p.accuracy if p else None,
        "accuracy_kind": p.accuracy_kind.value if p and p.accuracy_kind else None,
        "latency_ms": {str(b): {"p50": s.p50_ms, "p95": s.p95_ms, "p99": s.p99_ms} for b, s in p.latency_ms.items()}
        if p
        else {},
        "latency_model_ms": {"intercept": p.latency_intercept_ms, "per_row": p.latency_per_row_ms} if p else None,
        "best_batch": p.best_batch if p else None,
        "throughput_sps": p.throughput_sps if p else None,
        "memory_mb": p.memory_mb if p else None,
        "size_bytes": p.size_bytes if p else None,
        "load_ms": p.load_ms if p else None,
        "flops_per_row": p.flops_per_row if p else None,
        "parameters": p.parameters if p else None,
        "cost_cpu_s_per_1k": p.cost_cpu_s_per_1k if p else None,
        "pareto": record.pareto,
        "artifact": record.artifact,
        "details": record.details,
    }
