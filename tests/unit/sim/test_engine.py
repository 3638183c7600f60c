"""The simulator driving the real policies: determinism, admission, batching, autoscaling, fixed baselines."""

from __future__ import annotations

import time

import numpy as np
import pytest

from sloserve.errors import InvalidArgumentError
from sloserve.sim import Family, SimConfig, parse_policy, simulate
from sloserve.sim.config import PolicySpec
from sloserve.sim.family import default_classes, make_variant, synthetic
from sloserve.sim.workload import Segment, SloClass, generate

from .conftest import klass, run

ACCURATE = klass("accurate", 20, 0.85)  # fast is not accurate enough; mid is the cheapest that is


def test_same_seed_same_report_different_seed_different() -> None:
    family = synthetic(4)
    classes = default_classes(family)
    segments = [Segment(2, 3000), Segment(2, 9000)]
    config = SimConfig(cpus=16, seed=7)
    first = run(family, segments, classes, config)
    second = run(family, segments, classes, config)
    assert first.outcome() == second.outcome()
    assert first.arrivals > 10_000 and first.served > 0
    assert run(family, segments, classes, SimConfig(cpus=16, seed=8)).outcome() != first.outcome()
    assert run(family, segments, classes, config, workload_seed=1).outcome() != first.outcome()


def test_fast_selection_changes_nothing() -> None:
    """Reusing selections and leaving out hopeless variants: identical to select_variant over all, always."""
    family = synthetic(6)
    classes = [*default_classes(family), klass("best", 1.0, 0.9, best_effort=True)]
    segments = [Segment(1, 2000), Segment(2, 12000), Segment(2, 1000)]
    fast = run(family, segments, classes, SimConfig(cpus=24, seed=3))
    slow = run(family, segments, classes, SimConfig(cpus=24, seed=3, fast_selection=False))
    assert fast.outcome() == slow.outcome()
    assert fast.rejections["overloaded"] > 0 and fast.served > 0


def test_low_load_is_served_in_time_by_the_cheapest_accurate_variant(trio: Family) -> None:
    report = run(trio, [Segment(5, 200)], [ACCURATE], SimConfig(cpus=4))
    assert report.attainment is not None and report.attainment >= 0.999
    selected = {v.id: v.selected for v in report.variants}
    assert selected == {"fast": 0, "mid": report.arrivals, "slow": 0}
    assert report.accuracy_delivered == pytest.approx(0.90)
    assert sum(report.rejections.values()) == 0 and sum(report.drops.values()) == 0
    mid = report.variants[1]
    assert report.cpu_s_per_1k == pytest.approx(mid.cpu_s * 1000 / report.served)


def test_overload_is_refused_at_once_rather_than_served_late(trio: Family) -> None:
    report = run(trio, [Segment(3, 20000)], [klass("accurate", 10, 0.85)], SimConfig(cpus=2))
    assert report.rejections["overloaded"] > report.arrivals / 2
    assert report.attainment_admitted is not None and report.attainment_admitted >= 0.99
    assert report.drops["deadline"] <= 0.01 * report.admitted
    assert report.classes[0].p99_ms is not None and report.classes[0].p99_ms <= 10
    # The CPU budget holds: two replicas at most at any time.
    assert max(s.cpus for s in report.replicas) <= 2


def test_the_autoscaler_follows_a_step_up_and_down_with_hysteresis(trio: Family) -> None:
    segments = [Segment(10, 200), Segment(20, 6000), Segment(30, 200)]
    report = run(trio, segments, [klass("accurate", 50, 0.85)], SimConfig(cpus=16))
    mid = [s.replicas["mid"] for s in report.replicas]
    before, during, after = mid[:10], mid[12:30], mid[-1]
    assert max(before) == 1
    assert min(during) >= 3  # ~6,000 rows/s over ~2,760 per replica at 70% target
    assert after < max(during)
    downs = [e.t_s for e in report.scaling if e.action == "scale_down"]
    assert downs and min(downs) >= 30 + 10  # only after staying under-used for scale_down_after_s
    # no flapping at the steady high step: up within two ticks of it (the backlog of the new replicas' cold start
    # may take a second step: 10 of 12 seeds do), then steady until it ends
    ups = [e.t_s for e in report.scaling if e.action == "scale_up"]
    assert ups and max(ups) <= 10 + 2
    # Refusals only while the new replicas come up (one tick plus a cold start), then the SLO holds.
    late = [w for w in report.windows if not 10 <= w.start_s < 12]
    assert all(w.attainment is not None and w.attainment >= 0.99 for w in late)
    assert report.attainment is not None and report.attainment >= 0.95


def test_a_cold_variant_is_started_on_demand_when_its_cold_start_fits(trio: Family) -> None:
    report = run(trio, [Segment(2, 100)], [klass("exact", 1000, 0.95)], SimConfig(cpus=4, initial_replicas=0))
    slow = report.variants[2]
    assert report.replicas[0].replicas["slow"] == 0
    assert slow.selected == report.arrivals  # the first ones before any autoscaler tick: started on demand
    assert report.attainment == 1.0
    assert report.p99_ms is not None and report.p99_ms > 300  # the first ones waited for the 500 ms load


def test_refused_demand_still_reaches_the_autoscaler(trio: Family) -> None:
    report = run(trio, [Segment(3, 100)], [klass("exact", 200, 0.95)], SimConfig(cpus=4, initial_replicas=0))
    first = report.scaling[0]
    assert (first.t_s, first.variant, first.action) == (1.0, "slow", "scale_up")
    assert report.rejections["overloaded"] > 0  # before the replica was up
    assert report.variants[2].selected > 0  # after
    assert report.attainment_admitted == 1.0


def test_impossible_slos_are_refused_unless_best_effort(trio: Family) -> None:
    classes = [klass("too-fast", 0.1), klass("too-accurate", 10, 0.99), klass("anyway", 0.1, best_effort=True)]
    report = run(trio, [Segment(2, 300)], classes, SimConfig(cpus=4))
    too_fast, too_accurate, anyway = report.classes
    assert too_fast.rejected == too_fast.arrivals > 0
    assert too_accurate.rejected == too_accurate.arrivals > 0
    assert report.rejections["impossible"] == too_fast.arrivals + too_accurate.arrivals
    assert anyway.served == anyway.arrivals > 0 and anyway.met == 0  # served late, never dropped
    assert report.variants[0].selected == anyway.arrivals  # the fastest
    assert report.drops["deadline"] == 0


def test_the_correction_learns_a_slowdown(trio: Family) -> None:
    report = run(trio, [Segment(3, 500)], [ACCURATE], SimConfig(cpus=4, slowdown=1.5, noise_sigma=0.0))
    assert report.variants[1].final_correction == pytest.approx(1.5, rel=0.01)


def test_fixed_sends_everything_to_one_variant_and_queues_without_limit(trio: Family) -> None:
    config = SimConfig(cpus=2, policy=parse_policy("fixed:mid"))
    report = run(trio, [Segment(3, 20000)], [klass("accurate", 10, 0.85)], config)
    assert [v.selected for v in report.variants] == [0, report.arrivals, 0]
    assert sum(report.rejections.values()) == 0 and sum(report.drops.values()) == 0
    assert report.served == report.arrivals
    assert {s.replicas["mid"] for s in report.replicas} == {2}  # no autoscaling
    assert report.attainment is not None and report.attainment < 0.1  # overloaded: late, not refused
    assert report.variants[1].mean_batch_rows == pytest.approx(16, rel=0.01)


def test_maxbatch_waits_for_a_full_batch_or_the_timeout(trio: Family) -> None:
    low = run(trio, [Segment(3, 100)], [ACCURATE], SimConfig(cpus=2, policy=parse_policy("maxbatch:mid:5")))
    assert low.p50_ms is not None and low.p50_ms >= 5.0  # waited for the timeout
    plain = run(trio, [Segment(3, 100)], [ACCURATE], SimConfig(cpus=2, policy=parse_policy("fixed:mid")))
    assert plain.p50_ms is not None and plain.p50_ms < 2.0  # plain batching does not wait
    high = run(trio, [Segment(3, 5000)], [ACCURATE], SimConfig(cpus=2, policy=parse_policy("maxbatch:mid:5")))
    mean_batch = high.variants[1].mean_batch_rows
    assert mean_batch is not None and mean_batch > 15


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("modelless", PolicySpec("modelless")),
        ("fixed:int8", PolicySpec("fixed", "int8")),
        ("maxbatch:fp32:2.5", PolicySpec("maxbatch", "fp32", 2.5)),
    ],
)
def test_policy_specs(text: str, expected: PolicySpec) -> None:
    assert parse_policy(text) == expected
    assert parse_policy(expected.describe()) == expected


@pytest.mark.parametrize("text", ["", "fixed", "fixed:", "maxbatch:a", "maxbatch:a:-1", "maxbatch:a:x", "greedy"])
def test_bad_policy_specs_are_refused(text: str) -> None:
    with pytest.raises(InvalidArgumentError, match="--policy"):
        parse_policy(text)


def test_bad_configurations_are_refused(trio: Family) -> None:
    workload = generate([Segment(1, 10)], [ACCURATE], ["trio"], np.random.default_rng(0))
    with pytest.raises(InvalidArgumentError, match="no variant 'nope'"):
        simulate([trio], workload, SimConfig(policy=parse_policy("fixed:nope")))
    with pytest.raises(InvalidArgumentError, match="--cpus"):
        simulate([trio], workload, SimConfig(cpus=0))
    with pytest.raises(InvalidArgumentError, match="need 6 CPUs"):
        simulate([trio], workload, SimConfig(cpus=2, fixed_replicas=6, policy=parse_policy("fixed:mid")))
    with pytest.raises(InvalidArgumentError, match="--initial-replicas"):
        simulate([trio], workload, SimConfig(cpus=2, initial_replicas=1))
    other = generate([Segment(1, 10)], [ACCURATE], ["other"], np.random.default_rng(0))
    with pytest.raises(InvalidArgumentError, match="not simulated"):
        simulate([trio], other, SimConfig())


def test_two_models_share_one_cpu_budget(trio: Family) -> None:
    toy = Family("toy", (make_variant("only", None, 1.0, 0.2, max_batch=8),))
    workload = generate([Segment(2, 400)], [klass("loose", 100)], ["trio", "toy"], np.random.default_rng(0))
    report = simulate([trio, toy], workload, SimConfig(cpus=4))
    keys = [v.key for v in report.variants]
    assert keys == ["trio/fast", "trio/mid", "trio/slow", "toy/only"]
    assert report.variants[0].selected + report.variants[3].selected == report.arrivals
    assert report.attainment == 1.0


def test_json_report_is_plain_data(trio: Family) -> None:
    report = run(trio, [Segment(1, 100)], [ACCURATE, SloClass("none", klass("x", None).slo)], SimConfig(cpus=2))
    raw = report.to_json()
    assert raw["classes"][1]["latency_slo_ms"] is None
    assert raw["timing"]["events"] >= report.arrivals
    assert raw["replicas"][0]["replicas"] == {"fast": 1, "mid": 1, "slow": 0}


def test_scale_smoke_20k_per_second_over_200_cpus() -> None:
    family = synthetic(8)
    workload = generate([Segment(1, 20_000)], default_classes(family), [family.model], np.random.default_rng(0))
    started = time.perf_counter()
    report = simulate([family], workload, SimConfig(cpus=200, initial_replicas=10))
    elapsed = time.perf_counter() - started
    assert report.arrivals > 19_000
    assert report.attainment_admitted is not None and report.attainment_admitted > 0.99
    assert elapsed < 5.0, f"20k arrivals took {elapsed:.1f} s"


def test_a_saturated_front_end_makes_a_small_model_miss_its_slos(trio: Family) -> None:
    """1,000 req/s against a front end that needs 0.5 ms each is fine; 2,500 req/s (1.25 ms of front end
    per ms) is not, however many replicas there are: the requests wait before any policy sees them."""
    loose = [klass("loose", 50, 0.85)]
    light = run(trio, [Segment(3, 1000)], loose, SimConfig(cpus=8, frontend_ms=0.5))
    assert light.attainment is not None and light.attainment >= 0.99
    heavy = run(trio, [Segment(3, 2500)], loose, SimConfig(cpus=8, frontend_ms=0.5))
    assert heavy.attainment is not None and heavy.attainment < 0.5
    scaled = run(trio, [Segment(3, 2500)], loose, SimConfig(cpus=8, frontend_ms=0.5, frontend_workers=2))
    assert scaled.attainment is not None and scaled.attainment >= 0.99
    with pytest.raises(InvalidArgumentError, match="frontend-workers"):
        run(trio, [Segment(1, 10)], loose, SimConfig(frontend_workers=0))


def test_at_low_load_requests_are_held_for_bigger_cheaper_batches_but_not_when_the_front_end_is_busy(
    trio: Family,
) -> None:
    """As the batcher does: a request waits a fifth of its SLO (at most max_slo_hold_ms) for its batch to
    grow while a replica is free, less as the front end gets busy past LOOP_BUSY_FULL_HOLD, not at all past
    LOOP_BUSY_NO_HOLD."""
    segments = [Segment(3, 1000)]

    def mid(config: SimConfig) -> tuple[float, float, float]:
        report = run(trio, segments, [ACCURATE], config)
        variant = next(v for v in report.variants if v.id == "mid")
        assert report.attainment is not None and variant.mean_batch_rows is not None
        return report.attainment, variant.mean_batch_rows, report.cpu_s_per_1k

    held = mid(SimConfig(cpus=4))
    unheld = mid(SimConfig(cpus=4, max_slo_hold_ms=0.0))
    assert held[0] >= 0.999 and unheld[0] >= 0.999
    assert held[1] > 1.5 * unheld[1], (held, unheld)
    assert held[2] < 0.8 * unheld[2]
    # 1,000 req/s x 0.7 ms: the front end is 70% busy, short of LOOP_BUSY_FULL_HOLD, and holds go on
    busy = mid(SimConfig(cpus=4, frontend_ms=0.7))
    assert busy[1] > 1.3 * mid(SimConfig(cpus=4, frontend_ms=0.7, max_slo_hold_ms=0.0))[1]
    # x 0.9 ms: past LOOP_BUSY_NO_HOLD, and nothing is held
    saturated = mid(SimConfig(cpus=4, frontend_ms=0.9))
    assert saturated[1] == pytest.approx(mid(SimConfig(cpus=4, frontend_ms=0.9, max_slo_hold_ms=0.0))[1], rel=0.1)
    # at 100 req/s a 2 ms hold expects 0.2 requests to join it, so nothing is held (holds_gather, as the batcher)
    quiet = [run(trio, [Segment(3, 100)], [ACCURATE], SimConfig(cpus=4, max_slo_hold_ms=h)) for h in (2.0, 0.0)]
    assert quiet[0].p50_ms == pytest.approx(quiet[1].p50_ms, rel=0.01)
    with pytest.raises(InvalidArgumentError, match="max-slo-hold-ms"):
        run(trio, [Segment(1, 10)], [ACCURATE], SimConfig(max_slo_hold_ms=-1.0))


def test_a_front_end_near_its_limit_misses_more_on_a_machine_whose_speed_varies(trio: Family) -> None:
    """The same mean front-end cost, 85% busy: steady, every query makes its 20 ms SLO; with the machine's
    speed varying by window (sigma 0.15), the windows where it runs past the front end's capacity back
    queries up past their SLO (76% make it), as measured near the knee. A run is still a pure function of
    its seed."""
    tight = [klass("tight", 20, 0.85)]
    steady = run(trio, [Segment(5, 1700)], tight, SimConfig(cpus=8, frontend_ms=0.5))
    varying_config = SimConfig(cpus=8, frontend_ms=0.5, frontend_speed_sigma=0.15, frontend_speed_window_ms=200.0)
    varying = run(trio, [Segment(5, 1700)], tight, varying_config)
    assert steady.attainment is not None and varying.attainment is not None
    assert steady.attainment >= 0.99
    assert varying.attainment < steady.attainment - 0.1, (steady.attainment, varying.attainment)
    assert run(trio, [Segment(5, 1700)], tight, varying_config).attainment == varying.attainment
    with pytest.raises(InvalidArgumentError, match="frontend-speed-sigma"):
        run(trio, [Segment(1, 10)], tight, SimConfig(frontend_speed_sigma=-0.1))
    with pytest.raises(InvalidArgumentError, match="frontend-speed-window-ms"):
        run(trio, [Segment(1, 10)], tight, SimConfig(frontend_speed_window_ms=0.0))


def test_an_event_loop_front_end_costs_less_a_request_the_busier_it_is(trio: Family) -> None:
    """A lightly loaded loop wakes up for nearly every request, a busy one seldom idles (what a request costs
    depends on the load, as the server's does), and what one cycle hands over is batched together. Several loops
    take requests at random; a run is still a pure function of its seed."""
    loose = [klass("loose", 50, 0.85)]
    config = SimConfig(cpus=8, frontend_ms=0.3, frontend_wake_ms=0.6, max_slo_hold_ms=0.0)
    light = run(trio, [Segment(3, 200)], loose, config)
    busy = run(trio, [Segment(3, 2500)], loose, config)
    assert light.frontend_ms_per_query is not None and busy.frontend_ms_per_query is not None
    assert light.frontend_ms_per_query > 0.75  # nearly always a whole wake-up: 0.3 + 0.6
    assert busy.frontend_ms_per_query < 0.4  # 2.5 requests a ms at 0.3 each: cycles of several
    assert light.attainment is not None and light.attainment >= 0.99
    assert busy.attainment is not None and busy.attainment >= 0.99
    mid = next(v for v in busy.variants if v.id == "mid")
    # a cycle's requests in one batch: 4.2 rows (3.6 with the first of each cycle dispatched alone)
    assert mid.mean_batch_rows is not None and mid.mean_batch_rows > 3.9
    # FIFO front ends that cost what a wake-up and a request do: saturated
    fifo = run(trio, [Segment(3, 2500)], loose, SimConfig(cpus=8, frontend_ms=0.9, max_slo_hold_ms=0.0))
    assert fifo.attainment is not None and fifo.attainment < 0.5
    assert run(trio, [Segment(3, 2500)], loose, config).outcome() == busy.outcome()
    # two loops share the load: each is less busy, its cycles carry fewer requests, and each costs more
    two = SimConfig(cpus=8, frontend_ms=0.3, frontend_wake_ms=0.6, frontend_workers=2, max_slo_hold_ms=0.0, seed=3)
    first = run(trio, [Segment(3, 2500)], loose, two)
    assert first.attainment is not None and first.attainment >= 0.99
    assert first.frontend_ms_per_query is not None and first.frontend_ms_per_query > busy.frontend_ms_per_query
    assert run(trio, [Segment(3, 2500)], loose, two).outcome() == first.outcome()
    assert run(trio, [Segment(3, 2500)], loose, SimConfig(**{**_fields(two), "seed": 4})).outcome() != first.outcome()
    with pytest.raises(InvalidArgumentError, match="frontend-wake-ms"):
        run(trio, [Segment(1, 10)], loose, SimConfig(frontend_wake_ms=-1.0))


def _fields(config: SimConfig) -> dict[str, object]:
    import dataclasses

    return {f.name: getattr(config, f.name) for f in dataclasses.fields(config)}
