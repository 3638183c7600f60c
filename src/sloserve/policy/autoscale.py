"""Replicas per variant within a CPU budget (INFaaS's scale-up / upgrade, with hysteresis going down).

Each tick the loop hands in, per variant, its replicas, the rows per second routed
to it, its queueing delay and what one replica sustains (from the profile). A
variant needs ``ceil(arrival / (capacity * target_utilization))`` replicas, one
more when its queue is long *and* its replicas are doing real work (at least
``scale_down_utilization``): a long queue in front of idle replicas is the front
end or the CPUs being short, which another replica would make worse. Needs are
granted within the CPU budget, most overloaded first; CPUs held by variants that
have been nearly idle for ``scale_down_after_s`` are reclaimed for them. When the budget is spent and a variant is still overloaded, the fastest
variant (most rows per second per CPU) gets a replica instead: an *upgrade* that
selection will send the overflow to. Going down is slower on purpose: a variant
loses one replica at a time, only after staying under-used for
``scale_down_after_s``. A replica that is not there yet costs its cold start, so
scaling up is never undone within that long.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType


@dataclass(frozen=True, slots=True)
class VariantLoad:
    id: str
    replicas: int
    arrival_rps: float
    """Rows per second routed to the variant recently."""
    capacity_rps: float
    """Rows per second one replica sustains (profiled throughput at the best batch)."""
    queue_ms: float = 0.0
    cpus_per_replica: int = 1
    load_ms: float = 0.0
    min_replicas: int = 0


@dataclass(frozen=True, slots=True)
class AutoscaleConfig:
    cpu_budget: int
    target_utilization: float = 0.7
    scale_down_utilization: float = 0.35
    scale_down_after_s: float = 10.0
    queue_high_ms: float = 5.0
    max_replicas_per_variant: int = 64


@dataclass(frozen=True, slots=True)
class ScaleDecision:
    variant: str
    replicas: int
    previous: int
    action: str
    """scale_up, scale_down, upgrade or reclaim."""
    reason: str


@dataclass(frozen=True, slots=True)
class AutoscaleState:
    low_since: Mapping[str, float] = field(default_factory=lambda: MappingProxyType({}))
    """When each variant became under-used (for hysteresis)."""
    grown_at: Mapping[str, float] = field(default_factory=lambda: MappingProxyType({}))
    """When each variant last gained a replica (not shrunk within its cold start)."""


def utilization(load: VariantLoad) -> float:
    if load.replicas == 0:
        return math.inf if load.arrival_rps > 0 else 0.0
    return load.arrival_rps / (load.capacity_rps * load.replicas)


def needed_replicas(load: VariantLoad, config: AutoscaleConfig) -> int:
    need = math.ceil(load.arrival_rps / max(load.capacity_rps * config.target_utilization, 1e-9))
    if (
        load.queue_ms > config.queue_high_ms
        and load.replicas > 0
        and utilization(load) >= config.scale_down_utilization
    ):
        need = max(need, load.replicas + 1)
    return min(config.max_replicas_per_variant, max(load.min_replicas, need))


def decide_scaling(
    loads: Sequence[VariantLoad], state: AutoscaleState, now_s: float, config: AutoscaleConfig
) -> tuple[list[ScaleDecision], AutoscaleState]:
    target = {v.id: v.replicas for v in loads}
    used = sum(v.replicas * v.cpus_per_replica for v in loads)
    decisions: list[ScaleDecision] = []
    low_since = dict(state.low_since)
    grown_at = dict(state.grown_at)

    # Up: most overloaded first, within the budget, reclaiming idle CPUs if needed.
    wanting = sorted((v for v in loads if needed_replicas(v, config) > v.replicas), key=utilization, reverse=True)
    for load in wanting:
        want = needed_replicas(load, config) - target[load.id]
        while want > 0:
            if used + load.cpus_per_replica > config.cpu_budget:
                freed = _reclaim(loads, target, load.id, config, decisions, _held(low_since, grown_at, now_s, config))
                if freed == 0:
                    break
                used -= freed
                continue
            target[load.id] += 1
            used += load.cpus_per_replica
            want -= 1
        if target[load.id] > load.replicas:
            grown_at[load.id] = now_s
            low_since.pop(load.id, None)
            decisions.append(
                ScaleDecision(
                    load.id,
                    target[load.id],
                    load.replicas,
                    "scale_up",
                    f"{load.arrival_rps:.0f} rows/s at {utilization(load):.0%} of {load.replicas} replica(s), "
                    f"queue {load.queue_ms:.1f} ms",
                )
            )
        elif want > 0:
            faster = _fastest_other(loads, load.id, target, config)
            if faster is not None and used + faster.cpus_per_replica <= config.cpu_budget:
                target[faster.id] += 1
                used += faster.cpus_per_replica
                grown_at[faster.id] = now_s
                decisions.append(
                    ScaleDecision(
                        faster.id,
                        target[faster.id],
                        faster.replicas,
                        "upgrade",
                        f"{load.id} is overloaded and the CPU budget ({config.cpu_budget}) is spent: "
                        f"the faster {faster.id} takes the overflow",
                    )
                )

    # Down: one replica at a time, after staying under-used long enough, never within a cold start.
    for load in loads:
        if target[load.id] != load.replicas:
            continue
        under_used = utilization(load) < config.scale_down_utilization and load.replicas > load.min_replicas
        if not under_used or needed_replicas(load, config) >= load.replicas:
            low_since.pop(load.id, None)
            continue
        since = low_since.setdefault(load.id, now_s)
        if not _held(low_since, grown_at, now_s, config)(load):
            target[load.id] -= 1
            low_since[load.id] = now_s
            decisions.append(
                ScaleDecision(
                    load.id,
                    target[load.id],
                    load.replicas,
                    "scale_down",
                    f"{utilization(load):.0%} used for {now_s - since:.0f} s",
                )
            )
    return decisions, AutoscaleState(MappingProxyType(low_since), MappingProxyType(grown_at))


def _held(
    low_since: Mapping[str, float], grown_at: Mapping[str, float], now_s: float, config: AutoscaleConfig
) -> Callable[[VariantLoad], bool]:
    """Whether a variant must keep its replicas for now: it has not been under-used for ``scale_down_after_s``,
    or it gained a replica more recently than that (or than its cold start): no flapping."""

    def held(load: VariantLoad) -> bool:
        since = low_since.get(load.id)
        if since is None or now_s - since < config.scale_down_after_s:
            return True
        hold_s = max(config.scale_down_after_s, load.load_ms / 1e3)
        return now_s - grown_at.get(load.id, -math.inf) < hold_s

    return held


def _reclaim(
    loads: Sequence[VariantLoad],
    target: dict[str, int],
    taker: str,
    config: AutoscaleConfig,
    decisions: list[ScaleDecision],
    held: Callable[[VariantLoad], bool],
) -> int:
    """Take one replica from the least-used variant that can spare it; the CPUs freed (0: none could)."""
    spare = [
        v
        for v in loads
        if v.id != taker
        and target[v.id] > v.min_replicas
        and target[v.id] == v.replicas
        and utilization(v) < config.scale_down_utilization
        and not held(v)
    ]
    if not spare:
        return 0
    donor = min(spare, key=utilization)
    target[donor.id] -= 1
    decisions.append(
        ScaleDecision(
            donor.id,
            target[donor.id],
            donor.replicas,
            "reclaim",
            f"{utilization(donor):.0%} used; its CPU goes to the overloaded {taker}",
        )
    )
    return donor.cpus_per_replica


def _fastest_other(
    loads: Sequence[VariantLoad], overloaded: str, target: Mapping[str, int], config: AutoscaleConfig
) -> VariantLoad | None:
    others = [v for v in loads if v.id != overloaded and target[v.id] < config.max_replicas_per_variant]
    if not others:
        return None
    return max(others, key=lambda v: v.capacity_rps / v.cpus_per_replica)


def capacity_within_slo(
    intercept_ms: float, per_row_ms: float, max_batch: int, tightest_slo_ms: float | None, best_rps: float
) -> float:
    """Rows per second one replica sustains with batches small enough for the tightest SLO served.

    The profile's best batch may take longer than an SLO allows; then a replica really
    serves at the largest batch whose latency fits half the SLO (the other half is left
    for waiting). Without a latency SLO, the profiled best throughput.
    """
    if tightest_slo_ms is None or per_row_ms <= 0:
        return best_rps
    fits = int((tightest_slo_ms / 2 - intercept_ms) / per_row_ms)
    batch = max(1, min(max_batch, fits))
    return min(best_rps, batch / (intercept_ms + per_row_ms * batch) * 1e3)
