"""Routing policies: table tests and hypothesis properties."""

from __future__ import annotations

import random
from collections import Counter

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sloserve.policy.routing import Routing, choose_least_loaded, choose_power_of_two, choose_replica

loads_strategy = st.lists(st.integers(min_value=0, max_value=8), min_size=1, max_size=12)


@given(loads_strategy, st.integers(min_value=0, max_value=2**32))
def test_least_loaded_always_picks_a_minimum(loads: list[int], turn: int) -> None:
    index = choose_least_loaded(loads, turn)
    assert loads[index] == min(loads)


@given(loads_strategy, st.integers(min_value=0, max_value=2**32))
def test_power_of_two_never_picks_the_strict_maximum_of_three_or_more_distinct_loads(
    loads: list[int], seed: int
) -> None:
    index = choose_power_of_two(loads, random.Random(seed))
    assert 0 <= index < len(loads)
    if len(loads) >= 2 and loads.count(max(loads)) == 1:
        assert loads[index] < max(loads)  # it lost its comparison against whichever it was drawn with


def test_least_loaded_breaks_ties_in_turn_so_idle_replicas_share_the_work() -> None:
    assert [choose_least_loaded([0, 0, 0], turn) for turn in range(6)] == [0, 1, 2, 0, 1, 2]
    assert [choose_least_loaded([1, 0, 1, 0], turn) for turn in range(4)] == [1, 1, 3, 3]


def test_power_of_two_samples_two_distinct_replicas() -> None:
    rng = random.Random(2)
    # With loads [0, 5, 5] the idle replica wins every draw it is part of: 2 of the 3 pairs.
    picks = Counter(choose_power_of_two([0, 5, 5], rng) for _ in range(3000))
    assert picks[0] / 3000 == pytest.approx(2 / 3, abs=0.05)


def test_choose_replica_dispatches_and_refuses_an_empty_list() -> None:
    rng = random.Random(3)
    assert choose_replica([3, 1, 2], rng, Routing.LEAST_LOADED) == 1
    assert choose_replica([4], rng, Routing.POWER_OF_TWO) == 0
    with pytest.raises(ValueError):
        choose_replica([], rng)
