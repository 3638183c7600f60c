"""Deadline-aware adaptive batch sizing (Clipper's AIMD, bounded by the tightest deadline waiting).

``aimd_update`` moves the batch-size limit: additive increase after a batch that
ran fast enough, multiplicative decrease after one that was too slow
(``batch_too_slow``: its own service time took longer than the tightest latency
SLO in it, Clipper's signal). A batch whose requests were late because
they *waited* is not the batch size's fault: shrinking batches then only lowers
throughput and lengthens the queue, a spiral this rule avoids. The size actually
taken, ``batch_size_for``, is the largest batch not above the limit whose
predicted latency still fits the tightest deadline in the queue.
"""

from __future__ import annotations

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


def batch_size_for(limit: int, queued_rows: int, slack_ms: float | None, model: LatencyModel) -> int:
    """Rows to take now: at most ``limit`` and what is queued, and small enough to finish within ``slack_ms``.

    ``slack_ms`` is the time left until the tightest deadline waiting (None: no deadline). At least one
    row is always taken: whether that row can still make it is :func:`expired`'s question.
    """
    rows = max(1, min(limit, queued_rows))
    if slack_ms is None or model.per_row_ms <= 0:
        return rows
    fits = int((slack_ms - model.intercept_ms) / model.per_row_ms)
    return max(1, min(rows, fits))


def expired(now_ms: float, deadline_ms: float | None, rows: int, model: LatencyModel) -> bool:
    """Whether a request can no longer finish by its deadline even in a batch of its own."""
    return deadline_ms is not None and now_ms + model.predict_ms(rows) > deadline_ms
