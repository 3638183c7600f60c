"""Deadline-aware adaptive batch sizing (Clipper's AIMD, bounded by the tightest deadline waiting).

``aimd_update`` moves the batch-size limit: additive increase after a batch that
ran fast enough, multiplicative decrease after one that was too slow
(``batch_too_slow``: its own service time took longer than the tightest latency
SLO in it, Clipper's signal). A batch whose requests were late because
they *waited* is not the batch size's fault: shrinking batches then only lowers
throughput and lengthens the queue, a spiral this rule avoids. The batch actually
taken, ``batch_take``, is the prefix of the deadline-ordered queue (at most the
limit) that loses the fewest deadlines over this batch and the next, the longer
on ties: the largest batch that fits the tightest deadline waiting, unless that
would cost the requests behind it more deadlines than it saves.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class LatencyModel:
    intercept_ms: float
    per_row_ms: float

    def predict_ms(self, rows: int) -> float:
        return self.intercept_ms + self.per_row_ms * rows


@dataclass(frozen=True, slots=True)
class AimdConfig:
    max_batch: int
    increase: int = 4
    decrease: float = 0.5
    min_batch: int = 1


def batch_too_slow(service_ms: float, tightest_slo_ms: float | None) -> bool:
    """Whether a batch was too big: running it took longer than the tightest latency SLO among its
    requests, so none of them could have made it however short their wait. None: no latency SLO in it."""
    return tightest_slo_ms is not None and service_ms > tightest_slo_ms


def aimd_update(limit: int, missed_deadline: bool, config: AimdConfig) -> int:
    """The next batch-size limit after a batch that was (or was not) too slow (:func:`batch_too_slow`)."""
    if missed_deadline:
        return max(config.min_batch, int(limit * config.decrease))
    return min(config.max_batch, limit + config.increase)


def batch_take(
    deadlines_ms: Sequence[float], rows: Sequence[int], now_ms: float, limit: int, model: LatencyModel
) -> int:
    """How many of the waiting requests to take now, given in deadline order (inf: no deadline).

    Each split is judged over two batches: the first ``n`` requests now (at most ``limit``
    rows; the first request always), the rest right after. The split that loses the fewest
    deadlines wins, the longer first batch on ties. So the batch is the longest that fits the
    tightest deadline when the others can wait for the next one, but a head that would make
    its deadline only in a batch too small for the requests behind it is not favoured over
    all of them.
    """
    total_rows = sum(rows)
    best_n, best_lost, taken = 1, len(deadlines_ms) + 1, 0
    for n in range(1, len(deadlines_ms) + 1):
        taken += rows[n - 1]
        if taken > limit and n > 1:
            break
        first_ms = now_ms + model.predict_ms(taken)
        lost = bisect_left(deadlines_ms, first_ms, 0, n)
        if n < len(deadlines_ms):
            second_ms = first_ms + model.predict_ms(total_rows - taken)
            lost += bisect_left(deadlines_ms, second_ms, n) - n
        if lost <= best_lost:
            best_n, best_lost = n, lost
    return best_n


def expired(now_ms: float, deadline_ms: float | None, rows: int, model: LatencyModel) -> bool:
    """Whether a request can no longer finish by its deadline even in a batch of its own."""
    return deadline_ms is not None and now_ms + model.predict_ms(rows) > deadline_ms
