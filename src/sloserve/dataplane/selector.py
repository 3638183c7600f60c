"""Choosing the variant that serves a query: live state in, :mod:`sloserve.policy.selection` decides.

Each variant becomes a :class:`Candidate` from its profile (accuracy, latency model,
cost, load time) and, when it is running, its live state: rows queued, batches
running, replicas, the AIMD batch limit and the live correction of its latency
model. Admission control lives here too: a query that no variant can serve in
time *now* is refused at once (RESOURCE_EXHAUSTED, retry later) instead of being
queued to fail; one that no variant could serve even on an idle server is a
client error (INVALID_ARGUMENT) naming the closest variants, unless it asked for
``best_effort``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Protocol

from sloserve.errors import InvalidArgumentError, ResourceExhaustedError
from sloserve.policy.batching import LatencyModel
from sloserve.policy.queueing import expected_batch_rows, queue_delay_ms
from sloserve.policy.selection import (
    Candidate,
    Choice,
    Slo,
    best_effort,
    describe,
    feasible_when_idle,
    select_variant,
)
from sloserve.types import VersionId
from sloserve.variant import VariantProfile


class AdmissionRefused(ResourceExhaustedError):
    """No variant can serve the query in time now; ``variant`` would have, on an idle server."""

    def __init__(self, message: str, variant: str) -> None:
        super().__init__(message)
        self.variant = variant


class LiveState(Protocol):
    """What selection reads from a running version (implemented by ``VersionHost``)."""

    @property
    def queued_rows(self) -> int: ...

    @property
    def busy(self) -> int: ...

    @property
    def replica_count(self) -> int: ...

    @property
    def batch_limit(self) -> int: ...

    @property
    def correction(self) -> float: ...

    @property
    def running_ms(self) -> float: ...


def candidate(
    version: VersionId, profile: VariantProfile, live: LiveState | None, rows: int, max_batch: int
) -> Candidate:
    model = LatencyModel(profile.latency_intercept_ms, profile.latency_per_row_ms)
    if live is None:
        return Candidate(
            version,
            profile.accuracy,
            model.intercept_ms,
            model.per_row_ms,
            profile.cost_cpu_s_per_1k,
            loaded=False,
            load_ms=profile.load_ms,
            batch_rows=rows,
        )
    corrected = LatencyModel(model.intercept_ms * live.correction, model.per_row_ms * live.correction)
    limit = max(1, min(live.batch_limit, max_batch or 1))
    return Candidate(
        version,
        profile.accuracy,
        model.intercept_ms,
        model.per_row_ms,
        profile.cost_cpu_s_per_1k,
        loaded=True,
        queue_ms=queue_delay_ms(
            live.queued_rows, live.busy, live.replica_count, limit, corrected, running_ms=live.running_ms / 2
        ),
        batch_rows=expected_batch_rows(live.queued_rows, rows, limit),
        correction=live.correction,
    )


def choose_variant(
    profiles: Mapping[VersionId, VariantProfile],
    live: Mapping[VersionId, LiveState],
    slo: Slo,
    rows: int,
    max_batch: int,
) -> Choice:
    """The variant to serve this query, or the error that refuses it."""
    candidates = [candidate(v, p, live.get(v), rows, max_batch) for v, p in profiles.items()]
    choice = select_variant(candidates, slo, rows)
    if isinstance(choice, Choice):
        return choice
    idle = feasible_when_idle(candidates, slo, rows)
    if slo.best_effort:
        return best_effort(candidates, slo, rows)
    if not isinstance(idle, Choice):
        raise InvalidArgumentError(
            f"no variant can meet latency_slo_ms={slo.latency_ms} and min_accuracy={slo.min_accuracy} "
            f'even on an idle server: {describe(idle)}. Relax the SLO or send "best_effort": true'
        )
    raise AdmissionRefused(f"overloaded: {describe(choice)}; retry later", idle.variant)
