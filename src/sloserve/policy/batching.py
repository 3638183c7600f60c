"""Deadline-aware adaptive batch sizing (Clipper's AIMD, bounded by the tightest deadline waiting).

``aimd_update`` moves the batch-size limit: additive increase after a batch that
met every deadline in it, multiplicative decrease after one that missed. The size
actually taken, ``batch_size_for``, is the largest batch not above the limit whose
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


def aimd_update(limit: int, missed_deadline: bool, config: AimdConfig) -> int:
    """The next batch-size limit after a batch that did (or did not) miss a deadline."""
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
