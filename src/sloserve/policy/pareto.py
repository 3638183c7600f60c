"""The Pareto frontier of a model's variants over latency, accuracy and cost.

A variant is worth keeping on offer when no other variant is at least as good
on all three and strictly better on one: lower latency, higher accuracy, lower
cost. Pure: points in, flags out.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

Point = tuple[float, float | None, float]
"""(latency_ms: lower is better, accuracy: higher is better or None when unknown, cost: lower is better)."""


def pareto_flags(points: Sequence[Point]) -> list[bool]:
    """For each point, whether it is on the Pareto frontier.

    A point is off the frontier when another point dominates it: at least as
    good in all three and strictly better in one. Equal points do not dominate
    each other, so duplicates stay on (or off) together. An unknown (None) or NaN
    accuracy counts as the worst accuracy; a NaN latency or cost as the worst.
    The frontier of a non-empty list is never empty. Quadratic: variants of one
    model number in the tens.
    """
    keys = [_key(p) for p in points]
    return [not any(_dominates(other, mine) for other in keys) for mine in keys]


def _key(point: Point) -> tuple[float, float, float]:
    """Every coordinate as "lower is better", unknowns as the worst value."""
    latency, accuracy, cost = point
    return (
        math.inf if math.isnan(latency) else latency,
        math.inf if accuracy is None or math.isnan(accuracy) else -accuracy,
        math.inf if math.isnan(cost) else cost,
    )


def _dominates(a: tuple[float, float, float], b: tuple[float, float, float]) -> bool:
    return all(x <= y for x, y in zip(a, b, strict=True)) and a != b
