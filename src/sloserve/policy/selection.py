"""Variant selection: the cheapest variant that meets a query's SLO (INFaaS, done as a pure function).

A query states a latency SLO and a minimum accuracy. Among variants accurate
enough, each gets a predicted completion time::

    queue_ms + correction * (intercept_ms + per_row_ms * batch_rows) + (load_ms if not loaded)

where ``queue_ms`` is the wait before its batch starts, ``batch_rows`` the batch it
would join, and ``correction`` the live ratio of observed to profiled latency. The
choice is the cheapest whose prediction fits, by what the query costs there
(:meth:`Candidate.query_cost`): the variant's cost per row (CPU-seconds per 1,000
rows at its best batch) plus the query's share of its batch's fixed cost (the
latency intercept over the rows of the batch it would join). For a small model the
fixed cost per batch is a hundred times the cost of a row, so a variant a few percent
cheaper per row is no saving if the query runs there alone while another variant has
a batch forming. Costs within :data:`COST_TOLERANCE` of the cheapest count as equal;
among those a loaded variant wins, then the one that served the model's previous
query (``recent``: traffic stays on one variant, in larger batches, instead of
alternating between two), then the faster. Under contention a busy variant's
queue grows, its prediction stops fitting, and traffic spills to the next variant
along the frontier instead of piling onto one.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

COST_TOLERANCE = 0.1
"""Query costs within this fraction of the cheapest count as equal (profiled costs are measurements, and a
saving that small is no reason to split traffic or take a slower variant)."""


@dataclass(frozen=True, slots=True)
class Slo:
    latency_ms: float | None = None
    """None: no latency bound."""
    min_accuracy: float | None = None
    """None: any accuracy."""
    best_effort: bool = False
    """Serve the closest variant instead of refusing an SLO that none can meet."""


@dataclass(frozen=True, slots=True)
class Candidate:
    id: str
    accuracy: float | None
    intercept_ms: float
    per_row_ms: float
    cost: float
    """CPU-seconds per 1,000 rows."""
    loaded: bool = True
    load_ms: float = 0.0
    queue_ms: float = 0.0
    batch_rows: int = 1
    correction: float = 1.0
    recent: bool = False
    """This variant served the model's previous query."""

    def query_cost(self, rows: int) -> float:
        """CPU-seconds per 1,000 rows of serving the query here: the cost per row plus the row's share of its
        batch's fixed cost (ms per row is the same unit)."""
        return self.cost + self.intercept_ms / max(self.batch_rows, rows, 1)

    def predict_ms(self, rows: int) -> float:
        compute = self.correction * (self.intercept_ms + self.per_row_ms * max(self.batch_rows, rows))
        return self.queue_ms + compute + (0.0 if self.loaded else self.load_ms)

    def idle(self) -> Candidate:
        """The same variant on an idle server: loaded, nothing queued, a batch of its own, as profiled (a live
        correction above 1 is the machine busy now, which is overload, not an impossible SLO)."""
        return Candidate(self.id, self.accuracy, self.intercept_ms, self.per_row_ms, self.cost, True, 0.0, 0.0, 1)


@dataclass(frozen=True, slots=True)
class Choice:
    variant: str
    predicted_ms: float


@dataclass(frozen=True, slots=True)
class Closest:
    variant: str
    predicted_ms: float
    accuracy: float | None


@dataclass(frozen=True, slots=True)
class NoChoice:
    """No variant meets the SLO; ``closest`` are the nearest misses, best first."""

    reason: str
    closest: tuple[Closest, ...]


def accurate_enough(candidate: Candidate, slo: Slo) -> bool:
    if slo.min_accuracy is None:
        return True
    return candidate.accuracy is not None and candidate.accuracy >= slo.min_accuracy


def select_variant(candidates: Sequence[Candidate], slo: Slo, rows: int = 1) -> Choice | NoChoice:
    """The cheapest variant predicted to meet ``slo``; else why not, with the closest variants."""
    eligible = [c for c in candidates if accurate_enough(c, slo)]
    bound = math.inf if slo.latency_ms is None else slo.latency_ms
    feasible = [(c, p) for c in eligible if (p := c.predict_ms(rows)) <= bound]
    if feasible:
        ceiling = min(c.query_cost(rows) for c, _ in feasible) * (1 + COST_TOLERANCE)
        near = [(c, p) for c, p in feasible if c.query_cost(rows) <= ceiling]
        best, predicted = min(near, key=lambda cp: (not cp[0].loaded, not cp[0].recent, cp[1], cp[0].id))
        return Choice(best.id, predicted)
    if not eligible:
        reason = f"no variant reaches accuracy {slo.min_accuracy}"
        ranked = sorted(candidates, key=lambda c: -(c.accuracy if c.accuracy is not None else -math.inf))
    else:
        reason = f"no variant accurate enough is predicted to finish within {slo.latency_ms} ms"
        ranked = sorted(eligible, key=lambda c: c.predict_ms(rows))
    closest = tuple(Closest(c.id, c.predict_ms(rows), c.accuracy) for c in ranked[:3])
    return NoChoice(reason, closest)


def best_effort(candidates: Sequence[Candidate], slo: Slo, rows: int = 1) -> Choice:
    """For ``best_effort`` queries: the fastest variant accurate enough, else the most accurate."""
    eligible = [c for c in candidates if accurate_enough(c, slo)]
    if eligible:
        pick = min(eligible, key=lambda c: (c.predict_ms(rows), c.cost))
    else:
        pick = max(candidates, key=lambda c: (c.accuracy if c.accuracy is not None else -math.inf, -c.cost))
    return Choice(pick.id, pick.predict_ms(rows))


def feasible_when_idle(candidates: Sequence[Candidate], slo: Slo, rows: int = 1) -> Choice | NoChoice:
    """Whether any variant could meet ``slo`` on an idle server (else the SLO itself is impossible)."""
    return select_variant([c.idle() for c in candidates], slo, rows)


def describe(no: NoChoice) -> str:
    parts = []
    for c in no.closest:
        accuracy = "n/a" if c.accuracy is None else f"{c.accuracy:.4f}"
        ms = f"{c.predicted_ms:.2f}" if c.predicted_ms >= 0.1 else f"{c.predicted_ms:.2g}"  # 0.0077, not 0.01
        parts.append(f"{c.variant} (~{ms} ms, accuracy {accuracy})")
    return f"{no.reason}; closest: {', '.join(parts)}" if parts else no.reason
