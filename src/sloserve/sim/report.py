"""What a simulation shows: SLO attainment, rejections, drops, accuracy delivered, latency, cost, replicas.

Attainment is *served within the deadline / all arrivals*: a rejection or a drop is a
miss. ``attainment_admitted`` is the same among the queries admitted (served or
dropped), which is what admission control promises to keep high. Accuracy delivered
is the mean accuracy of the variants that served (variants without one left out);
CPU-seconds per 1,000 queries is the replicas' busy time x their CPUs per served query.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from sloserve.sim.engine import DROPS, REJECTIONS, Trace


@dataclass(frozen=True, slots=True)
class ClassReport:
    name: str
    latency_slo_ms: float | None
    min_accuracy: float | None
    best_effort: bool
    arrivals: int
    admitted: int
    served: int
    met: int
    rejected: int
    dropped: int
    attainment: float | None
    attainment_admitted: float | None
    p50_ms: float | None
    p99_ms: float | None
    accuracy: float | None


@dataclass(frozen=True, slots=True)
class VariantReport:
    key: str
    model: str
    id: str
    accuracy: float | None
    cost_cpu_s_per_1k: float
    selected: int
    served: int
    met: int
    dropped: int
    attainment: float | None
    """Met / selected: how well the variant kept the promises made when it was chosen."""
    p50_ms: float | None
    p99_ms: float | None
    batches: int
    mean_batch_rows: float | None
    cpu_s: float
    final_replicas: int
    max_replicas: int
    final_batch_limit: int
    final_correction: float


@dataclass(frozen=True, slots=True)
class ReplicaSample:
    t_s: float
    replicas: dict[str, int]
    cpus: int


@dataclass(frozen=True, slots=True)
class Window:
    """Arrivals in ``[start_s, end_s)`` and how they fared (one per autoscaler interval)."""

    start_s: float
    end_s: float
    arrivals: int
    met: int
    rejected: int
    attainment: float | None


@dataclass(frozen=True, slots=True)
class ScaleEvent:
    t_s: float
    variant: str
    action: str
    replicas: int
    previous: int
    reason: str


@dataclass(frozen=True, slots=True)
class Timing:
    """How fast the simulator ran (the only fields that differ between identical runs)."""

    events: int
    wall_s: float
    events_per_s: float
    simulated_s_per_wall_s: float


@dataclass(frozen=True, slots=True)
class SimReport:
    policy: str
    seed: int
    cpus: int
    duration_s: float
    arrivals: int
    admitted: int
    served: int
    met: int
    attainment: float | None
    attainment_admitted: float | None
    rejections: dict[str, int]
    drops: dict[str, int]
    accuracy_delivered: float | None
    p50_ms: float | None
    p99_ms: float | None
    cpu_s_per_1k: float | None
    frontend_ms_per_query: float | None
    """What a request cost the front ends, on average (their CPU, not counted in ``cpu_s_per_1k``)."""
    classes: tuple[ClassReport, ...]
    variants: tuple[VariantReport, ...]
    replicas: tuple[ReplicaSample, ...]
    windows: tuple[Window, ...]
    scaling: tuple[ScaleEvent, ...]
    timing: Timing

    @property
    def deadline_drops(self) -> int:
        return self.drops.get("deadline", 0)

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready dict (undefined ratios and infinities become null)."""
        raw = _clean(dataclasses.asdict(self))
        assert isinstance(raw, dict)
        return raw

    def outcome(self) -> dict[str, Any]:
        """The JSON without :attr:`timing`: equal for equal inputs and seed."""
        raw = self.to_json()
        raw.pop("timing")
        return raw


def _clean(value: Any) -> Any:
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_clean(v) for v in value]
    return value


def _ratio(num: float, den: float) -> float | None:
    return num / den if den else None


def _quantiles(values: np.ndarray[Any, Any]) -> tuple[float | None, float | None]:
    if len(values) == 0:
        return None, None
    p50, p99 = np.percentile(values, [50, 99])
    return float(p50), float(p99)


def _grouped_quantiles(
    groups: np.ndarray[Any, Any], values: np.ndarray[Any, Any], count: int
) -> list[tuple[float | None, float | None]]:
    order = np.argsort(groups, kind="stable")
    bounds = np.searchsorted(groups[order], np.arange(count + 1))
    sorted_values = values[order]
    return [_quantiles(sorted_values[bounds[g] : bounds[g + 1]]) for g in range(count)]


def summarize(trace: Trace) -> SimReport:
    wl = trace.workload
    out = trace.outcome.astype(np.int64)
    served = out >= 0
    latency = trace.finish_ms - wl.time_ms
    met = served & (trace.finish_ms <= trace.deadlines_ms)
    rejected = np.isin(out, list(REJECTIONS))
    dropped = np.isin(out, list(DROPS))
    pools = trace.pools
    accuracy = np.array([math.nan if p.variant.accuracy is None else p.variant.accuracy for p in pools])
    served_by = out[served]
    served_accuracy = accuracy[served_by] if len(pools) else np.empty(0)
    served_classes = wl.klass[served]
    served_latency = latency[served]

    n_classes = len(wl.classes)
    per_class = {
        name: np.bincount(wl.klass, weights=mask, minlength=n_classes).astype(np.int64)
        for name, mask in (
            ("arrivals", np.ones(len(wl))),
            ("served", served),
            ("met", met),
            ("rejected", rejected),
            ("dropped", dropped),
        )
    }
    class_q = _grouped_quantiles(served_classes, served_latency, n_classes)
    classes = []
    for c, sc in enumerate(wl.classes):
        arrivals, n_rejected = int(per_class["arrivals"][c]), int(per_class["rejected"][c])
        n_met = int(per_class["met"][c])
        mask = served_classes == c
        classes.append(
            ClassReport(
                sc.name,
                sc.slo.latency_ms,
                sc.slo.min_accuracy,
                sc.slo.best_effort,
                arrivals,
                arrivals - n_rejected,
                int(per_class["served"][c]),
                n_met,
                n_rejected,
                int(per_class["dropped"][c]),
                _ratio(n_met, arrivals),
                _ratio(n_met, arrivals - n_rejected),
                *class_q[c],
                _nanmean(served_accuracy[mask]),
            )
        )

    n_pools = len(pools)
    v_served = np.bincount(served_by, minlength=n_pools)
    v_met = np.bincount(out[met], minlength=n_pools)
    variant_q = _grouped_quantiles(served_by, served_latency, n_pools)
    variants = []
    for i, p in enumerate(pools):
        v = p.variant
        variants.append(
            VariantReport(
                p.key,
                p.model,
                v.id,
                v.accuracy,
                v.cost_cpu_s_per_1k,
                p.selected,
                int(v_served[i]),
                int(v_met[i]),
                p.drops,
                _ratio(int(v_met[i]), p.selected),
                *variant_q[i],
                p.batches,
                _ratio(p.served_rows, p.batches),
                p.busy_ms * v.cpus / 1000.0,
                p.final_replicas,
                p.max_replicas,
                p.final_batch_limit,
                p.final_correction,
            )
        )

    n_served = int(served.sum())
    n_met = int(met.sum())
    n_rejected = int(rejected.sum())
    p50, p99 = _quantiles(served_latency)
    cpu_s = sum(v.cpu_s for v in variants)
    replicas = tuple(
        ReplicaSample(
            t,
            {p.key: count for p, count in zip(pools, counts, strict=True)},
            sum(count * p.variant.cpus for p, count in zip(pools, counts, strict=True)),
        )
        for t, counts in trace.samples
    )
    windows = _windows(wl.time_ms, met, rejected, trace.config.autoscale_interval_s, wl.duration_s)
    scaling = tuple(ScaleEvent(t, d.variant, d.action, d.replicas, d.previous, d.reason) for t, d in trace.decisions)
    duration = wl.duration_s
    return SimReport(
        trace.config.policy.describe(),
        trace.config.seed,
        trace.config.cpus,
        duration,
        len(wl),
        len(wl) - n_rejected,
        n_served,
        n_met,
        _ratio(n_met, len(wl)),
        _ratio(n_met, len(wl) - n_rejected),
        {name: int((out == code).sum()) for code, name in REJECTIONS.items()},
        {name: int((out == code).sum()) for code, name in DROPS.items()},
        _nanmean(served_accuracy),
        p50,
        p99,
        _ratio(cpu_s * 1000.0, n_served),
        _ratio(trace.frontend_busy_ms, len(wl)),
        tuple(classes),
        tuple(variants),
        replicas,
        windows,
        scaling,
        Timing(
            trace.events,
            trace.wall_s,
            trace.events / trace.wall_s if trace.wall_s > 0 else math.inf,
            duration / trace.wall_s if trace.wall_s > 0 else math.inf,
        ),
    )


def _nanmean(values: np.ndarray[Any, Any]) -> float | None:
    finite = values[~np.isnan(values)]
    return float(finite.mean()) if len(finite) else None


def _windows(
    time_ms: np.ndarray[Any, Any],
    met: np.ndarray[Any, Any],
    rejected: np.ndarray[Any, Any],
    width_s: float,
    duration_s: float,
) -> tuple[Window, ...]:
    count = max(1, math.ceil(duration_s / width_s - 1e-9))
    index = np.minimum((time_ms / (width_s * 1000.0)).astype(np.int64), count - 1)
    arrivals = np.bincount(index, minlength=count)
    n_met = np.bincount(index, weights=met, minlength=count)
    n_rejected = np.bincount(index, weights=rejected, minlength=count)
    return tuple(
        Window(
            i * width_s,
            min((i + 1) * width_s, max(duration_s, width_s)),
            int(arrivals[i]),
            int(n_met[i]),
            int(n_rejected[i]),
            _ratio(int(n_met[i]), int(arrivals[i])),
        )
        for i in range(count)
    )
