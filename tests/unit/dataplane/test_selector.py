"""The request path's variant chooser gives choose_variant's answer, cheaply."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sloserve.dataplane.selector import (
    RESELECT_S,
    AdmissionRefused,
    LiveState,
    VariantChooser,
    candidate,
    choose_variant,
    loop_queue_ms,
)
from sloserve.errors import InvalidArgumentError
from sloserve.policy.selection import COST_TOLERANCE, Choice, Slo
from sloserve.types import VersionId
from sloserve.variant import LatencyStats, VariantProfile


@dataclass
class Live:
    queued_rows: int
    busy: int
    replica_count: int
    batch_limit: int
    correction: float
    running_ms: float
    inline: bool = False

    @property
    def queue(self) -> Live:  # its own queue: the kept check reads ``rows`` as the policy reads ``queued_rows``
        return self

    @property
    def rows(self) -> int:
        return self.queued_rows


def profile(intercept: float, per_row: float, accuracy: float, cost: float, load_ms: float) -> VariantProfile:
    stats = LatencyStats(intercept, intercept, intercept)
    return VariantProfile(
        {1: stats}, intercept, per_row, 16, 1000.0, accuracy, None, 50.0, 1000, load_ms, 100, 10, cost
    )


variants = st.dictionaries(
    st.sampled_from(["fp32", "int8", "pruned", "distilled", "fp16"]),
    st.tuples(
        st.floats(0.05, 5.0),
        st.floats(0.0, 0.5),
        st.sampled_from([0.9, 0.95, 0.97, 0.99]),
        st.sampled_from([0.5, 1.0, 1.0, 2.0]),  # equal costs on purpose: ties must break the same way
        st.floats(10.0, 300.0),
        st.one_of(
            st.none(),
            st.builds(
                Live,
                st.integers(0, 200),
                st.integers(0, 3),
                st.integers(1, 3),
                st.integers(1, 64),
                st.floats(0.25, 8.0),
                st.floats(0.0, 20.0),
                st.booleans(),
            ),
        ),
    ),
    min_size=1,
)


def cheaper_idle(
    profiles: dict[VersionId, VariantProfile],
    live: dict[VersionId, LiveState],
    slo: Slo,
    rows: int,
    recent: VersionId | None,
) -> VersionId | None:
    """By definition: of the accurate variants not running that would fit once started, the one costing the
    query least (a batch of its own), if that is cheaper, beyond the tolerance, than any variant that fits now."""
    loop_ms = loop_queue_ms(profiles, live, 64)
    candidates = {v: candidate(v, p, live.get(v), rows, 64, recent, loop_ms) for v, p in profiles.items()}
    bound = math.inf if slo.latency_ms is None else slo.latency_ms
    accurate = [
        c
        for c in candidates.values()
        if slo.min_accuracy is None or (c.accuracy is not None and c.accuracy >= slo.min_accuracy)
    ]
    cheapest = min((c.query_cost(rows) for c in accurate if c.predict_ms(rows) <= bound), default=math.inf)
    cheaper = [
        (c.query_cost(rows), v)
        for v, c in candidates.items()
        if v not in live
        and c.query_cost(rows) * (1 + COST_TOLERANCE) < cheapest
        and (slo.min_accuracy is None or (c.accuracy is not None and c.accuracy >= slo.min_accuracy))
        and (slo.latency_ms is None or profiles[v].predict_latency_ms(rows) <= slo.latency_ms)
    ]
    return min(cheaper)[1] if cheaper else None


@settings(max_examples=300, deadline=None)
@given(
    variants,
    st.one_of(st.none(), st.floats(0.5, 50.0)),
    st.one_of(st.none(), st.sampled_from([0.9, 0.95, 0.97, 0.99, 0.999])),
    st.booleans(),
    st.integers(1, 8),
    st.one_of(st.none(), st.sampled_from(["fp32", "int8", "pruned", "distilled", "fp16"])),
)
def test_the_chooser_agrees_with_choose_variant(
    family: dict[str, tuple[float, float, float, float, float, Live | None]],
    latency: float | None,
    accuracy: float | None,
    best_effort: bool,
    rows: int,
    previous: str | None,
) -> None:
    recent = VersionId(previous) if previous is not None else None
    profiles = {VersionId(v): profile(*spec[:5]) for v, spec in family.items()}
    live: dict[VersionId, LiveState] = {VersionId(v): spec[5] for v, spec in family.items() if spec[5] is not None}
    slo = Slo(latency, accuracy, best_effort)
    try:
        expected: Choice | Exception = choose_variant(profiles, live, slo, rows, 64, recent)
    except (AdmissionRefused, InvalidArgumentError) as error:
        expected = error
    chooser = VariantChooser(profiles, 64)
    chooser.recent = recent
    if isinstance(expected, Exception):
        with pytest.raises(type(expected)) as raised:
            chooser.choose(live, slo, rows)
        assert str(raised.value) == str(expected)
        if isinstance(expected, AdmissionRefused):  # the variant the refused query's demand is counted for
            assert isinstance(raised.value, AdmissionRefused) and raised.value.variant == expected.variant
        return
    variant, predicted_ms, cheaper = chooser.choose(live, slo, rows)
    assert variant == expected.variant
    assert predicted_ms == pytest.approx(expected.predicted_ms)
    assert chooser.recent == variant  # the next query's recent variant
    feasible = expected.predicted_ms <= (latency if latency is not None else float("inf"))
    if feasible:
        assert cheaper == cheaper_idle(profiles, live, slo, rows, recent)
    else:
        assert cheaper is None  # best effort: no demand recorded


def test_a_busy_inline_variant_spills_nowhere_a_busy_worker_spills_to_the_next_variant() -> None:
    """Inline variants take turns on the event loop: another one started beside a busy one would wait for the same
    queue, so the query is refused (429) instead of a cold start being spent on it; a variant served by worker
    processes has capacity of its own, so the overflow goes to the next variant along the frontier."""
    profiles = {
        VersionId("fp32"): profile(0.02, 0.001, 0.97, 1.0, 2.0),
        VersionId("pruned"): profile(0.02, 0.001, 0.97, 1.0, 2.0),
    }
    busy = Live(queued_rows=64 * 400, busy=1, replica_count=1, batch_limit=64, correction=1.0, running_ms=0.1)
    slo = Slo(latency_ms=5.0, min_accuracy=0.95)
    chooser = VariantChooser(profiles, 64)
    variant, _, _ = chooser.choose({VersionId("fp32"): busy}, slo, 1)
    assert variant == "pruned"  # a worker-served fp32 is busy: spill (its cold start fits the SLO)
    busy.inline = True
    with pytest.raises(AdmissionRefused, match="overloaded") as refused:
        chooser.choose({VersionId("fp32"): busy}, slo, 1)
    assert refused.value.variant in ("fp32", "pruned")
    with pytest.raises(AdmissionRefused):  # the pure policy agrees
        choose_variant(profiles, {VersionId("fp32"): busy}, slo, 1, 64)
    idle_loop = Live(queued_rows=0, busy=0, replica_count=1, batch_limit=64, correction=1.0, running_ms=0.0)
    idle_loop.inline = True
    assert chooser.choose({VersionId("fp32"): idle_loop}, slo, 1)[0] == "fp32"


def served(chooser: VariantChooser, live: dict[VersionId, LiveState], slo: Slo, rows: int, now: float) -> str:
    """The variant as the data plane gets it: a kept choice, else the policy (keeping its choice)."""
    return chooser.kept(live, slo, rows, now) or chooser.choose(live, slo, rows, now)[0]


def test_a_choice_is_kept_for_a_while_it_still_fits() -> None:
    """Within RESELECT_S a query of the same SLO and rows takes the kept variant after checking only that it
    still fits; past it, when it no longer fits, or when the running variants change, the policy runs again."""
    profiles = {
        VersionId("fp32"): profile(0.5, 0.001, 0.97, 0.01, 2.0),
        VersionId("int8"): profile(0.5, 0.001, 0.97, 0.01, 2.0),
    }
    fp32 = Live(queued_rows=0, busy=0, replica_count=1, batch_limit=64, correction=1.0, running_ms=0.0)
    int8 = Live(queued_rows=0, busy=0, replica_count=1, batch_limit=64, correction=1.0, running_ms=0.0)
    live: dict[VersionId, LiveState] = {VersionId("fp32"): fp32, VersionId("int8"): int8}
    slo = Slo(latency_ms=5.0, min_accuracy=0.95)
    chooser = VariantChooser(profiles, 64)
    assert chooser.kept(live, slo, 1, 10.0) is None  # nothing kept yet
    assert served(chooser, live, slo, 1, 10.0) == "fp32"
    int8.queued_rows = 30  # a batch forming on int8: joining it costs the query a 31st of its fixed cost
    assert choose_variant(profiles, live, slo, 1, 64, VersionId("fp32")).variant == "int8"
    assert VariantChooser(profiles, 64).choose(live, slo, 1)[0] == "int8"  # no time given: the policy
    assert chooser.kept(live, slo, 1, 10.0 + RESELECT_S / 2) == "fp32"  # kept: it still fits
    assert chooser.kept(live, Slo(latency_ms=5.0, min_accuracy=0.95), 1, 10.0 + RESELECT_S / 2) is None  # per SLO
    assert chooser.kept(live, slo, 2, 10.0 + RESELECT_S / 2) is None  # and per rows
    later = 10.0 + RESELECT_S
    assert chooser.kept(live, slo, 1, later + 1e-6) is None  # the period is over
    assert served(chooser, live, slo, 1, later + 1e-6) == "int8"
    int8.queued_rows, int8.busy, int8.running_ms = 640, 1, 1.0  # no longer fits (10 batches ahead): at once
    assert chooser.kept(live, slo, 1, later + 2e-4) is None
    assert served(chooser, live, slo, 1, later + 2e-4) == "fp32"
    int8.queued_rows, int8.busy, int8.running_ms = 30, 0, 0.0
    assert served(chooser, live, slo, 1, later + 3e-4) == "fp32"  # kept again
    assert chooser.kept(dict(live), slo, 1, later + 4e-4) is None  # other running variants: afresh
    assert served(chooser, dict(live), slo, 1, later + 4e-4) == "int8"


def test_a_choice_without_a_latency_bound_is_kept_however_long_the_queue() -> None:
    profiles = {VersionId("fp32"): profile(0.5, 0.01, 0.97, 0.01, 2.0)}
    state = Live(queued_rows=0, busy=0, replica_count=1, batch_limit=64, correction=1.0, running_ms=0.0, inline=True)
    live: dict[VersionId, LiveState] = {VersionId("fp32"): state}
    chooser = VariantChooser(profiles, 64)
    slo = Slo(min_accuracy=0.95)
    assert chooser.choose(live, slo, 3, now=1.0)[0] == "fp32"
    state.queued_rows = 10**9
    assert chooser.kept(live, slo, 3, 1.001) == "fp32"


def test_what_kept_choices_serve_is_counted_with_the_demand_they_saw() -> None:
    """Queries served by a kept choice are counted in it and taken in one go, per variant, with the rows a
    cheaper variant not running would have served; counts survive the choice being replaced, and choices
    kept no longer are dropped when taken."""
    profiles = {
        VersionId("fp32"): profile(1.0, 0.0, 0.9, 1.0, 10.0),
        VersionId("pruned"): profile(1.0, 0.0, 0.9, 0.5, 10.0),
    }
    fp32 = Live(queued_rows=0, busy=0, replica_count=1, batch_limit=64, correction=1.0, running_ms=0.0)
    live: dict[VersionId, LiveState] = {VersionId("fp32"): fp32}
    slo = Slo(latency_ms=5.0)
    chooser = VariantChooser(profiles, 64)
    assert chooser.choose(live, slo, 2, now=1.0) == ("fp32", 1.0, "pruned")  # cheaper; its cold start too long
    for _ in range(3):
        assert chooser.kept(live, slo, 2, 1.001) == "fp32"
    assert chooser.take_counts(1.001) == ({"fp32": 3}, {"pruned": 6})
    assert chooser.take_counts(1.001) == ({}, {})
    assert chooser.kept(live, slo, 2, 1.002) == "fp32"
    chooser.choose(live, slo, 2, now=1.003)  # replaced: its count is not lost
    assert chooser.kept(live, slo, 2, 1.004) == "fp32"
    assert chooser.take_counts(1.005) == ({"fp32": 2}, {"pruned": 4})
    assert chooser.take_counts(2.0) == ({}, {})  # and now it has expired, and is gone
    assert chooser.kept(live, slo, 2, 1.005) is None


@settings(max_examples=300, deadline=None)
@given(
    st.integers(0, 3000),
    st.integers(0, 3000),
    st.integers(1, 8),
    st.floats(0.5, 2.0),
    st.integers(1, 64),
    st.floats(0.5, 50.0),
    st.booleans(),
)
def test_the_kept_check_of_an_inline_variant_decides_as_the_policy(
    queued: int, other_queued: int, rows: int, correction: float, limit: int, latency: float, alone: bool
) -> None:
    """An inline variant is kept with the corrections and batch limits of the inline variants as they were;
    the queues it waits for (its own, and, unless it is ``alone``, another variant's on the same event loop,
    not accurate enough to serve the query) are read per query, and with the rest unchanged the kept choice
    serves a query exactly when the policy would serve it there, right up to the edge (alone, or beside an
    empty queue, by the most rows its own queue may hold, worked out once)."""
    profiles = {
        VersionId("fp32"): profile(0.5, 0.01, 0.97, 0.01, 2.0),
        VersionId("pruned"): profile(0.3, 0.005, 0.90, 0.005, 2.0),
    }
    state = Live(queued_rows=0, busy=0, replica_count=2, batch_limit=limit, correction=correction, running_ms=0.0)
    other = Live(queued_rows=0, busy=0, replica_count=1, batch_limit=32, correction=1.5, running_ms=0.0)
    state.inline = other.inline = True
    live: dict[VersionId, LiveState] = {VersionId("fp32"): state}
    if not alone:
        live[VersionId("pruned")] = other
    slo = Slo(latency_ms=latency, min_accuracy=0.95)
    chooser = VariantChooser(profiles, 64)
    try:
        chooser.choose(live, slo, rows, now=1.0)  # kept, if it fits empty queues
    except (AdmissionRefused, InvalidArgumentError):
        return
    state.queued_rows, other.queued_rows = queued, other_queued
    try:
        expected: str | None = VariantChooser(profiles, 64).choose(live, slo, rows)[0]
    except (AdmissionRefused, InvalidArgumentError):
        expected = None
    assert chooser.kept(live, slo, rows, 1.0 + RESELECT_S / 2) == expected
    assert expected in (None, "fp32")
    policy = VariantChooser(profiles, 64)

    def fits(queued_rows: int) -> bool:
        state.queued_rows = queued_rows
        try:
            return policy.choose(live, slo, rows)[0] == "fp32"
        except (AdmissionRefused, InvalidArgumentError):
            return False

    if fits(0):  # right at the edge: the most rows its queue may hold for the policy to serve it, and one more
        low, high = 0, 1 << 20
        assert not fits(high)
        while high - low > 1:
            middle = (low + high) // 2
            low, high = (middle, high) if fits(middle) else (low, middle)
        state.queued_rows = low
        assert chooser.kept(live, slo, rows, 1.0 + RESELECT_S / 2) == "fp32"
        state.queued_rows = high
        assert chooser.kept(live, slo, rows, 1.0 + RESELECT_S / 2) is None


def test_a_kept_inline_choice_beside_idle_variants_is_checked_by_its_own_queue_alone(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Variants that pinned queries left running on the event loop cost a kept choice nothing while their queues
    are empty (each would add 0.0 to the prediction); once one has rows queued, the prediction is made in full."""
    profiles = {
        VersionId("fp32"): profile(0.5, 0.01, 0.97, 0.01, 2.0),
        VersionId("pruned"): profile(0.3, 0.005, 0.90, 0.005, 2.0),
        VersionId("int8"): profile(0.3, 0.005, 0.91, 0.005, 2.0),
    }
    states = {
        v: Live(queued_rows=0, busy=0, replica_count=1, batch_limit=32, correction=1.0, running_ms=0.0)
        for v in profiles
    }
    for state in states.values():
        state.inline = True
    live: dict[VersionId, LiveState] = dict(states)
    slo = Slo(latency_ms=5.0, min_accuracy=0.95)
    chooser = VariantChooser(profiles, 64)
    assert chooser.choose(live, slo, 1, now=1.0)[0] == "fp32"
    full: list[int] = []
    predict = chooser._predict_kept

    def counted(*args: Any) -> float:
        full.append(1)
        return predict(*args)

    monkeypatch.setattr(chooser, "_predict_kept", counted)
    assert chooser.kept(live, slo, 1, 1.001) == "fp32" and not full
    states[VersionId("int8")].queued_rows = 3
    assert chooser.kept(live, slo, 1, 1.002) == "fp32" and full == [1]


def test_an_impossible_slo_is_refused_alike_every_time_and_served_when_best_effort() -> None:
    """The 400 for an SLO no variant meets even idle is worked out once per (rows, SLO): the same message, the
    pure policy's, for every such query; with best_effort the query is served by the closest variant."""
    profiles = {
        VersionId("fp32"): profile(0.5, 0.01, 0.97, 0.01, 2.0),
        VersionId("int8"): profile(0.3, 0.01, 0.96, 0.005, 2.0),
    }
    live: dict[VersionId, LiveState] = {
        VersionId("fp32"): Live(queued_rows=0, busy=0, replica_count=1, batch_limit=64, correction=1.0, running_ms=0.0)
    }
    slo = Slo(latency_ms=0.1, min_accuracy=0.95)
    with pytest.raises(InvalidArgumentError) as expected:
        choose_variant(profiles, live, slo, 2, 64)
    chooser = VariantChooser(profiles, 64)
    for now in (1.0, 1.0 + RESELECT_S / 2, 5.0):
        with pytest.raises(InvalidArgumentError) as raised:
            chooser.choose(live, slo, 2, now=now)
        assert str(raised.value) == str(expected.value)
        assert "int8 (~0.32 ms" in str(raised.value)  # the closest variant, named
    assert str(expected.value).startswith("no variant can meet latency_slo_ms=0.1, min_accuracy=0.95 even on an idle")
    with pytest.raises(InvalidArgumentError) as floor:  # a model's default floor, worked out: printed short
        chooser.choose(live, Slo(latency_ms=None, min_accuracy=0.9877777777777777), 2, now=5.0)
    assert "meet no latency_slo_ms, min_accuracy=0.9878 even" in str(floor.value)
    best = Slo(latency_ms=0.1, min_accuracy=0.95, best_effort=True)
    assert chooser.choose(live, best, 2, now=5.0)[0] == choose_variant(profiles, live, best, 2, 64).variant


def test_a_cheaper_variant_is_demand_even_when_its_cold_start_fits_only_on_an_idle_loop() -> None:
    """``fp32`` (not running) would fit an 11 ms SLO with its 10 ms cold start on an idle loop, but not behind
    the 1 ms the running inline variant has queued: the query goes to ``pruned``, and ``fp32`` is the cheaper
    variant the autoscaler should start (hypothesis found it recorded as nothing)."""
    profiles = {
        VersionId("fp32"): profile(1.0, 0.0, 0.9, 0.5, 10.0),
        VersionId("pruned"): profile(1.0, 0.0, 0.9, 1.0, 10.0),
    }
    live: dict[VersionId, LiveState] = {
        VersionId("pruned"): Live(
            queued_rows=1, busy=0, replica_count=1, batch_limit=1, correction=1.0, running_ms=0.0, inline=True
        )
    }
    slo = Slo(latency_ms=11.0)
    assert VariantChooser(profiles, 64).choose(live, slo, 1) == ("pruned", 2.0, "fp32")
    assert cheaper_idle(profiles, live, slo, 1, None) == "fp32"
