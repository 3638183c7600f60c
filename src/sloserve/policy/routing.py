"""Which replica of a version takes the next batch.

The caller passes the outstanding work (reserved batch slots) of the replicas
that can take a batch now (healthy, with a free slot) and gets back an index
into that list. Two policies:

- :func:`choose_least_loaded`: the minimum, ties broken in turn (the first tie at
  or after position ``turn``, which the caller advances), so idle replicas share
  the work deterministically. Needs an exact view of every replica's load, which
  one frontend has.
- :func:`choose_power_of_two`: sample two distinct replicas, take the less
  loaded (Mitzenmacher). Needs only two loads per decision, so it stays good when
  several frontends route with stale views, at the price of sometimes passing
  over the least loaded replica.

``benchmarks/tail.py`` compares them (three replicas, one straggling);
:data:`DEFAULT_ROUTING` is the one that measured better here.
"""

from __future__ import annotations

import enum
import random
from collections.abc import Sequence


class Routing(enum.Enum):
    LEAST_LOADED = "least_loaded"
    POWER_OF_TWO = "power_of_two"


DEFAULT_ROUTING = Routing.LEAST_LOADED
"""Measured in ``benchmarks/tail.py`` (3 digits replicas, Poisson 3,000 req/s, median of 5 runs on
the 2-core dev machine): with a straggler and hedging, p99 2.60 ms least-loaded against 2.71 ms p2c
(p99.9 4.26 against 4.34); without a straggler p2c measured 1.69 against 2.10 ms, but within the
run-to-run spread (1.1-4.0 and 1.2-2.7 ms). No significant difference, so the default stays the one
that, with one frontend holding exact loads, never passes over a less loaded free replica."""


def choose_least_loaded(loads: Sequence[int], turn: int = 0) -> int:
    """Index of a least-loaded entry of ``loads`` (non-empty); among ties the first at or after
    ``turn`` (modulo the length), wrapping around."""
    n = len(loads)
    best = min(loads)
    start = turn % n
    for step in range(n):
        index = (start + step) % n
        if loads[index] == best:
            return index
    raise AssertionError("unreachable: the minimum is in the list")


def choose_power_of_two(loads: Sequence[int], rng: random.Random) -> int:
    """Index of the less loaded of two distinct entries of ``loads`` (non-empty) drawn at random."""
    n = len(loads)
    if n == 1:
        return 0
    first = rng.randrange(n)
    second = rng.randrange(n - 1)
    if second >= first:
        second += 1
    if loads[second] < loads[first]:
        return second
    return first


def choose_replica(loads: Sequence[int], rng: random.Random, routing: Routing = DEFAULT_ROUTING, turn: int = 0) -> int:
    """The index (into ``loads``) of the replica that takes the next batch; ``turn`` counts the
    decisions so far (least-loaded's tie-break), ``rng`` draws power-of-two's pair."""
    if not loads:
        raise ValueError("no replica to choose from")
    if routing is Routing.POWER_OF_TWO:
        return choose_power_of_two(loads, rng)
    return choose_least_loaded(loads, turn)
