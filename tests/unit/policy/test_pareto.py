"""pareto_flags: table tests and hypothesis properties."""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sloserve.policy.pareto import Point, pareto_flags


@pytest.mark.parametrize(
    ("points", "expected"),
    [
        pytest.param([], [], id="empty"),
        pytest.param([(1.0, 0.9, 1.0)], [True], id="alone"),
        pytest.param([(1.0, 0.9, 1.0), (2.0, 0.8, 2.0)], [True, False], id="dominated-on-all-three"),
        pytest.param([(1.0, 0.9, 1.0), (1.0, 0.9, 2.0)], [True, False], id="dominated-on-cost-only"),
        pytest.param([(1.0, 0.9, 1.0), (1.0, 0.8, 1.0)], [True, False], id="dominated-on-accuracy-only"),
        pytest.param([(1.0, 0.9, 1.0), (2.0, 0.9, 1.0)], [True, False], id="dominated-on-latency-only"),
        pytest.param(
            [(1.0, 0.80, 3.0), (2.0, 0.90, 2.0), (3.0, 0.95, 1.0)],
            [True, True, True],
            id="trade-offs-all-stay",
        ),
        pytest.param([(1.0, 0.9, 1.0), (1.0, 0.9, 1.0)], [True, True], id="duplicates-both-stay"),
        pytest.param(
            [(2.0, 0.9, 1.0), (2.0, 0.9, 1.0), (1.0, 0.9, 1.0)],
            [False, False, True],
            id="duplicates-both-dominated",
        ),
        pytest.param([(1.0, None, 1.0), (1.0, 0.0, 1.0)], [False, True], id="unknown-accuracy-is-worst"),
        pytest.param([(1.0, None, 1.0), (2.0, 0.5, 1.0)], [True, True], id="unknown-accuracy-but-faster"),
        pytest.param([(1.0, None, 1.0), (1.0, None, 1.0)], [True, True], id="both-unknown-equal"),
        pytest.param([(1.0, -3.0, 1.0), (1.0, 0.1, 1.0)], [False, True], id="negative-r2"),
        pytest.param([(math.nan, 0.9, 1.0), (5.0, 0.9, 1.0)], [False, True], id="nan-latency-is-worst"),
        pytest.param([(1.0, math.nan, 1.0), (1.0, 0.2, 1.0)], [False, True], id="nan-accuracy-is-worst"),
    ],
)
def test_table(points: list[Point], expected: list[bool]) -> None:
    assert pareto_flags(points) == expected


def _worse_or_equal(p: Point) -> tuple[float, float, float]:
    latency, accuracy, cost = p
    acc = -math.inf if accuracy is None or math.isnan(accuracy) else accuracy
    return (latency, -acc, cost)


def dominates(a: Point, b: Point) -> bool:
    ka, kb = _worse_or_equal(a), _worse_or_equal(b)
    return all(x <= y for x, y in zip(ka, kb, strict=True)) and any(x < y for x, y in zip(ka, kb, strict=True))


# Few distinct values, so ties and duplicates are common.
coordinate = st.sampled_from([0.0, 0.5, 1.0, 2.0, 10.0])
points_strategy = st.lists(
    st.tuples(coordinate, st.one_of(st.none(), st.sampled_from([-1.0, 0.0, 0.5, 0.9, 1.0])), coordinate),
    max_size=12,
)


@given(points_strategy)
def test_frontier_is_non_empty(points: list[Point]) -> None:
    flags = pareto_flags(points)
    assert len(flags) == len(points)
    assert any(flags) or not points


@given(points_strategy)
def test_no_frontier_point_is_dominated(points: list[Point]) -> None:
    for point, on in zip(points, pareto_flags(points), strict=True):
        if on:
            assert not any(dominates(other, point) for other in points)


@given(points_strategy)
def test_every_off_frontier_point_is_dominated_by_a_frontier_point(points: list[Point]) -> None:
    flags = pareto_flags(points)
    frontier = [p for p, on in zip(points, flags, strict=True) if on]
    for point, on in zip(points, flags, strict=True):
        if not on:
            assert any(dominates(f, point) for f in frontier)


@given(points_strategy)
def test_duplicates_share_their_flag(points: list[Point]) -> None:
    doubled = points + points
    flags = pareto_flags(doubled)
    assert flags[: len(points)] == flags[len(points) :]
    assert flags[: len(points)] == pareto_flags(points)
