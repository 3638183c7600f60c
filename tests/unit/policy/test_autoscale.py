from __future__ import annotations

from sloserve.policy.autoscale import AutoscaleConfig, AutoscaleState, VariantLoad, decide_scaling

CONFIG = AutoscaleConfig(cpu_budget=4, scale_down_after_s=10.0)


def test_rising_load_adds_replicas_within_the_budget() -> None:
    loads = [VariantLoad("fp32", replicas=1, arrival_rps=2500, capacity_rps=1000, min_replicas=1)]
    decisions, _ = decide_scaling(loads, AutoscaleState(), 0.0, CONFIG)
    assert [(d.variant, d.replicas, d.action) for d in decisions] == [("fp32", 4, "scale_up")]


def test_when_the_budget_is_spent_the_faster_variant_gets_the_overflow_or_idle_cpus_are_reclaimed() -> None:
    loads = [
        VariantLoad("fp32", replicas=3, arrival_rps=5000, capacity_rps=1000, min_replicas=1),
        VariantLoad("int8", replicas=1, arrival_rps=0, capacity_rps=3000),
    ]
    decisions, state = decide_scaling(loads, AutoscaleState(), 0.0, CONFIG)
    assert decisions == [], "int8 has not been idle for long enough to give its CPU away"
    decisions, _ = decide_scaling(loads, state, 10.0, CONFIG)
    actions = [(d.variant, d.action) for d in decisions]
    assert ("int8", "reclaim") in actions and ("fp32", "scale_up") in actions
    # fp32 needs 2 CPUs a replica and only 1 is left: the faster int8 (1 CPU) takes the overflow
    full = [
        VariantLoad("fp32", replicas=3, arrival_rps=5000, capacity_rps=1000, cpus_per_replica=2, min_replicas=3),
        VariantLoad("int8", replicas=0, arrival_rps=0, capacity_rps=3000),
    ]
    decisions, _ = decide_scaling(full, AutoscaleState(), 0.0, AutoscaleConfig(cpu_budget=7))
    assert [(d.variant, d.action, d.replicas) for d in decisions] == [("int8", "upgrade", 1)]


def test_falling_load_scales_down_one_at_a_time_after_the_hysteresis() -> None:
    loads = [VariantLoad("fp32", replicas=3, arrival_rps=100, capacity_rps=1000, min_replicas=1)]
    state = AutoscaleState()
    decisions, state = decide_scaling(loads, state, 0.0, CONFIG)
    assert decisions == []
    decisions, state = decide_scaling(loads, state, 5.0, CONFIG)
    assert decisions == []
    decisions, state = decide_scaling(loads, state, 10.0, CONFIG)
    assert [(d.replicas, d.action) for d in decisions] == [(2, "scale_down")]
    loads = [VariantLoad("fp32", replicas=2, arrival_rps=100, capacity_rps=1000, min_replicas=1)]
    decisions, state = decide_scaling(loads, state, 11.0, CONFIG)
    assert decisions == []  # the clock restarted for the next step down


def test_a_busy_spell_resets_the_hysteresis() -> None:
    idle = [VariantLoad("fp32", replicas=2, arrival_rps=10, capacity_rps=1000, min_replicas=1)]
    busy = [VariantLoad("fp32", replicas=2, arrival_rps=1300, capacity_rps=1000, min_replicas=1)]
    _, state = decide_scaling(idle, AutoscaleState(), 0.0, CONFIG)
    _, state = decide_scaling(busy, state, 6.0, CONFIG)
    decisions, _ = decide_scaling(idle, state, 12.0, CONFIG)
    assert decisions == []


def test_a_long_queue_in_front_of_idle_replicas_adds_none() -> None:
    """Queueing with replicas at 1% is the front end or the CPUs being short: another replica makes it worse."""
    idle = [VariantLoad("fp32", replicas=1, arrival_rps=900, capacity_rps=100_000, queue_ms=8.0, min_replicas=1)]
    decisions, _ = decide_scaling(idle, AutoscaleState(), 0.0, CONFIG)
    assert decisions == []
    busy = [VariantLoad("fp32", replicas=1, arrival_rps=500, capacity_rps=1000, queue_ms=8.0, min_replicas=1)]
    decisions, _ = decide_scaling(busy, AutoscaleState(), 0.0, CONFIG)
    assert [(d.replicas, d.action) for d in decisions] == [(2, "scale_up")]


def test_a_replica_just_started_is_not_reclaimed_for_another_variant() -> None:
    """Two variants wanting the last CPU must not trade it back and forth every tick."""
    config = AutoscaleConfig(cpu_budget=2, scale_down_after_s=10.0)
    state = AutoscaleState()
    loads = [
        VariantLoad("fp32", replicas=1, arrival_rps=0, capacity_rps=1000, min_replicas=1),
        VariantLoad("pruned", replicas=1, arrival_rps=0, capacity_rps=1000),
        VariantLoad("int8", replicas=0, arrival_rps=500, capacity_rps=1000),
    ]
    _, state = decide_scaling(loads, state, 0.0, config)
    grown = AutoscaleState(state.low_since, {**state.grown_at, "pruned": 5.0})
    decisions, _ = decide_scaling(loads, grown, 12.0, config)
    assert not any(d.variant == "pruned" for d in decisions)
    decisions, _ = decide_scaling(loads, state, 12.0, config)
    assert [(d.variant, d.action) for d in decisions] == [("pruned", "reclaim"), ("int8", "scale_up")]
