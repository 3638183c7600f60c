"""How long a new request would wait, from a variant's queue and replicas (used by selection and admission)."""

from __future__ import annotations

import math

from sloserve.policy.batching import LatencyModel


def queue_delay_ms(
    queued_rows: int, busy: int, replicas: int, batch_limit: int, model: LatencyModel, running_ms: float | None = None
) -> float:
    """Expected wait before a new request's batch starts.

    Work ahead is what the running batches have left (``running_ms``, the sum over
    them; when unknown, half a batch of the rows they hold each) plus the rows queued,
    cut into batches of at most ``batch_limit``, shared by ``replicas``. With a free
    replica and nothing queued, the request starts at once.
    """
    if replicas <= 0:
        return math.inf
    limit = max(batch_limit, 1)
    batches_ahead = math.ceil(queued_rows / limit)
    busy = min(busy, replicas)
    if batches_ahead == 0 and busy < replicas:
        return 0.0
    if running_ms is None:
        running_ms = busy * model.predict_ms(limit) / 2
    queued_ms = batches_ahead * model.predict_ms(min(limit, queued_rows)) if batches_ahead else 0.0
    return (running_ms + queued_ms) / replicas


def expected_batch_rows(queued_rows: int, rows: int, batch_limit: int) -> int:
    """The batch a new request would most likely join: what is queued plus itself, up to the limit."""
    return max(rows, min(batch_limit, queued_rows + rows))
