"""How long a new request would wait, from a variant's queue and replicas (used by selection and admission)."""

from __future__ import annotations

import math

from sloserve.policy.batching import LatencyModel


def queue_delay_ms(queued_rows: int, busy: int, replicas: int, batch_limit: int, model: LatencyModel) -> float:
    """Expected wait before a new request's batch starts.

    Work ahead is the batches already running (on average half done) plus the rows
    queued, cut into batches of ``batch_limit``, shared by ``replicas``. With a free
    replica and nothing queued, the request starts at once.
    """
    if replicas <= 0:
        return math.inf
    batches_ahead = math.ceil(queued_rows / max(batch_limit, 1))
    busy = min(busy, replicas)
    if batches_ahead == 0 and busy < replicas:
        return 0.0
    batch_ms = model.predict_ms(batch_limit)
    return (busy * batch_ms / 2 + batches_ahead * batch_ms) / replicas


def expected_batch_rows(queued_rows: int, rows: int, batch_limit: int) -> int:
    """The batch a new request would most likely join: what is queued plus itself, up to the limit."""
    return max(rows, min(batch_limit, queued_rows + rows))
