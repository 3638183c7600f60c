"""Variant selection: table tests and hypothesis properties."""

from __future__ import annotations

import math

from hypothesis import given
from hypothesis import strategies as st

from sloserve.policy.selection import (
    COST_TOLERANCE,
    Candidate,
    Choice,
    NoChoice,
    Slo,
    best_effort,
    describe,
    feasible_when_idle,
    select_variant,
)

FP32 = Candidate("fp32", accuracy=0.97, intercept_ms=0.20, per_row_ms=0.010, cost=0.004)
INT8 = Candidate("int8", accuracy=0.96, intercept_ms=0.15, per_row_ms=0.004, cost=0.002)
PRUNED = Candidate("pruned-90", accuracy=0.80, intercept_ms=0.10, per_row_ms=0.001, cost=0.001)
FAMILY = [FP32, INT8, PRUNED]


def test_cheapest_variant_meeting_accuracy_wins() -> None:
    assert select_variant(FAMILY, Slo(latency_ms=5, min_accuracy=0.95)) == Choice("int8", INT8.predict_ms(1))
    assert select_variant(FAMILY, Slo(latency_ms=5, min_accuracy=0.97)).variant == "fp32"  # type: ignore[union-attr]
    assert select_variant(FAMILY, Slo()).variant == "pruned-90"  # type: ignore[union-attr]


def test_a_queue_on_the_cheapest_spills_traffic_to_the_next_variant() -> None:
    busy_int8 = Candidate("int8", 0.96, 0.15, 0.004, 0.002, queue_ms=10.0)
    choice = select_variant([FP32, busy_int8, PRUNED], Slo(latency_ms=5, min_accuracy=0.95))
    assert isinstance(choice, Choice) and choice.variant == "fp32"


def test_impossible_slo_names_the_closest_variants() -> None:
    no = select_variant(FAMILY, Slo(latency_ms=0.01, min_accuracy=0.9))
    assert isinstance(no, NoChoice)
    assert [c.variant for c in no.closest] == ["int8", "fp32"]
    assert "int8 (~0.15 ms, accuracy 0.9600)" in describe(no)
    tiny = Candidate("tiny", accuracy=0.97, intercept_ms=0.006, per_row_ms=0.0017, cost=0.001)
    too_fast = select_variant([tiny], Slo(latency_ms=0.001))
    assert isinstance(too_fast, NoChoice) and "tiny (~0.0077 ms" in describe(too_fast)  # not ~0.01
    too_accurate = select_variant(FAMILY, Slo(min_accuracy=0.999))
    assert isinstance(too_accurate, NoChoice) and too_accurate.closest[0].variant == "fp32"


def test_load_time_counts_for_unloaded_variants_and_idle_check_ignores_queues() -> None:
    cold = Candidate("int8", 0.96, 0.15, 0.004, 0.002, loaded=False, load_ms=400)
    assert select_variant([FP32, cold], Slo(latency_ms=5, min_accuracy=0.95)).variant == "fp32"  # type: ignore[union-attr]
    queued = Candidate("fp32", 0.97, 0.2, 0.01, 0.004, queue_ms=100.0)
    assert isinstance(select_variant([queued], Slo(latency_ms=5)), NoChoice)
    assert isinstance(feasible_when_idle([queued], Slo(latency_ms=5)), Choice)


def test_costs_within_the_tolerance_are_equal_then_recent_then_faster_wins() -> None:
    slower = Candidate("a", 0.97, 1.0, 0.01, 1.00, queue_ms=2.0)
    faster = Candidate("b", 0.97, 1.0, 0.01, 1.05, queue_ms=0.0)
    assert select_variant([slower, faster], Slo(latency_ms=50)).variant == "b"  # type: ignore[union-attr]
    recent_slower = Candidate("a", 0.97, 1.0, 0.01, 1.00, queue_ms=2.0, recent=True)
    assert select_variant([recent_slower, faster], Slo(latency_ms=50)).variant == "a"  # type: ignore[union-attr]
    dearer = Candidate("b", 0.97, 1.0, 0.01, 1.5, queue_ms=0.0)
    assert select_variant([slower, dearer], Slo(latency_ms=50)).variant == "a"  # type: ignore[union-attr]


def test_a_query_shares_a_forming_batch_rather_than_run_alone_on_a_variant_cheaper_per_row() -> None:
    queued_fp32 = Candidate("fp32", 0.97, 0.20, 0.010, 0.004, queue_ms=0.3, batch_rows=4)
    idle_int8 = Candidate("int8", 0.96, 0.15, 0.004, 0.002)
    slo = Slo(latency_ms=5, min_accuracy=0.95)
    assert queued_fp32.query_cost(1) < idle_int8.query_cost(1)
    assert select_variant([queued_fp32, idle_int8], slo).variant == "fp32"  # type: ignore[union-attr]
    # a per-row saving larger than a batch's fixed cost still wins (a large model)
    dear_fp32 = Candidate("fp32", 0.97, 0.20, 0.010, 0.5, queue_ms=0.3, batch_rows=4)
    assert select_variant([dear_fp32, idle_int8], slo).variant == "int8"  # type: ignore[union-attr]
    # and a forming batch that would miss the SLO is no choice at all
    late_fp32 = Candidate("fp32", 0.97, 0.20, 0.010, 0.004, queue_ms=10.0, batch_rows=4)
    assert select_variant([late_fp32, idle_int8], slo).variant == "int8"  # type: ignore[union-attr]


def test_best_effort_takes_the_fastest_accurate_enough_else_the_most_accurate() -> None:
    assert best_effort(FAMILY, Slo(latency_ms=0.01, min_accuracy=0.95)).variant == "int8"
    assert best_effort(FAMILY, Slo(min_accuracy=0.999)).variant == "fp32"


candidates = st.builds(
    Candidate,
    id=st.text("abcdefgh", min_size=1, max_size=4),
    accuracy=st.one_of(st.none(), st.floats(0, 1)),
    intercept_ms=st.floats(0, 50),
    per_row_ms=st.floats(0, 5),
    cost=st.floats(0, 10),
    loaded=st.booleans(),
    load_ms=st.floats(0, 1000),
    queue_ms=st.floats(0, 100),
    batch_rows=st.integers(1, 64),
    correction=st.floats(0.5, 2),
    recent=st.booleans(),
)
slos = st.builds(
    Slo,
    latency_ms=st.one_of(st.none(), st.floats(0.01, 200)),
    min_accuracy=st.one_of(st.none(), st.floats(0, 1)),
)


def meets(c: Candidate, slo: Slo, rows: int) -> bool:
    accurate = slo.min_accuracy is None or (c.accuracy is not None and c.accuracy >= slo.min_accuracy)
    fast = slo.latency_ms is None or c.predict_ms(rows) <= slo.latency_ms
    return accurate and fast


@given(st.lists(candidates, min_size=1, max_size=8, unique_by=lambda c: c.id), slos, st.integers(1, 32))
def test_choice_meets_the_slo_whenever_any_can_and_costs_the_query_least(
    family: list[Candidate], slo: Slo, rows: int
) -> None:
    result = select_variant(family, slo, rows)
    meeting = [c for c in family if meets(c, slo, rows)]
    if not meeting:
        assert isinstance(result, NoChoice)
        return
    assert isinstance(result, Choice)
    chosen = next(c for c in family if c.id == result.variant)
    assert meets(chosen, slo, rows)
    ceiling = min(c.query_cost(rows) for c in meeting) * (1 + COST_TOLERANCE)
    near = [c for c in meeting if c.query_cost(rows) <= ceiling]
    assert chosen in near
    rank = [(not c.loaded, not c.recent, c.predict_ms(rows)) for c in near]
    assert (not chosen.loaded, not chosen.recent, chosen.predict_ms(rows)) == min(rank)
    assert math.isclose(result.predicted_ms, chosen.predict_ms(rows))


@given(candidates, slos, st.integers(1, 32))
def test_an_unloaded_variant_is_never_chosen_over_an_equal_loaded_one(c: Candidate, slo: Slo, rows: int) -> None:
    loaded = Candidate(
        "loaded", c.accuracy, c.intercept_ms, c.per_row_ms, c.cost, True, 0.0, c.queue_ms, c.batch_rows, c.correction
    )
    unloaded = Candidate(
        "unloaded",
        c.accuracy,
        c.intercept_ms,
        c.per_row_ms,
        c.cost,
        False,
        c.load_ms,
        c.queue_ms,
        c.batch_rows,
        c.correction,
    )
    result = select_variant([unloaded, loaded], slo, rows)
    if isinstance(result, Choice):
        assert result.variant == "loaded"
