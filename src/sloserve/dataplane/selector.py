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

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Protocol

from sloserve.errors import InvalidArgumentError, ResourceExhaustedError
from sloserve.policy.batching import LatencyModel
from sloserve.policy.queueing import expected_batch_rows, queue_delay_ms
from sloserve.policy.selection import (
    COST_TOLERANCE,
    Candidate,
    Choice,
    Slo,
    accurate_enough,
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


class QueuedRows(Protocol):
    """A queue whose row count is one attribute."""

    @property
    def rows(self) -> int: ...


class LiveState(Protocol):
    """What selection reads from a running version (implemented by ``VersionHost``)."""

    @property
    def queued_rows(self) -> int: ...

    @property
    def queue(self) -> QueuedRows:
        """The queue whose ``rows`` are :attr:`queued_rows`, one object for the version's life: the kept check
        holds on to it and reads one attribute per query (the property chain to it cost 0.8 µs a query even
        in a tight loop, a third of the check)."""
        ...

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

    @property
    def inline(self) -> bool:
        """Its replicas run on the server's event loop (:class:`~sloserve.cluster.inline.InlineReplica`), taking
        turns with every other inline variant's batches."""
        ...


def loop_queue_ms(
    profiles: Mapping[VersionId, VariantProfile], live: Mapping[VersionId, LiveState], max_batch: int
) -> float:
    """The work queued on the event loop: the sum of the queueing delays of the running variants that run
    inline. They take turns on one thread, so each of them, and any variant started next to them (it would run
    inline too: the variants of one model are of a size), waits for all of it, not for its own queue alone;
    spreading load across them adds no capacity. 0 when none runs inline."""
    total = 0.0
    for version, state in live.items():
        profile = profiles.get(version)
        if profile is not None and state.inline:
            total += _queue_ms(profile.latency_intercept_ms, profile.latency_per_row_ms, state, max_batch)
    return total


def candidate(
    version: VersionId,
    profile: VariantProfile,
    live: LiveState | None,
    rows: int,
    max_batch: int,
    recent: VersionId | None = None,
    loop_ms: float = 0.0,
) -> Candidate:
    """``loop_ms``: :func:`loop_queue_ms`, the queue of a variant that runs inline or is not running."""
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
            queue_ms=loop_ms,
            batch_rows=rows,
            recent=version == recent,
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
        queue_ms=loop_ms
        if live.inline
        else queue_delay_ms(
            live.queued_rows, live.busy, live.replica_count, limit, corrected, running_ms=live.running_ms / 2
        ),
        batch_rows=expected_batch_rows(live.queued_rows, rows, limit),
        correction=live.correction,
        recent=version == recent,
    )


def choose_variant(
    profiles: Mapping[VersionId, VariantProfile],
    live: Mapping[VersionId, LiveState],
    slo: Slo,
    rows: int,
    max_batch: int,
    recent: VersionId | None = None,
) -> Choice:
    """The variant to serve this query, or the error that refuses it (``recent``: the variant that served the
    model's previous query)."""
    loop_ms = loop_queue_ms(profiles, live, max_batch)
    candidates = [candidate(v, p, live.get(v), rows, max_batch, recent, loop_ms) for v, p in profiles.items()]
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
    quickest_ms, quickest = min((c.predict_ms(rows), c.id) for c in candidates if accurate_enough(c, slo))
    raise AdmissionRefused(_overloaded(slo, quickest, quickest_ms), idle.variant)


def _overloaded(slo: Slo, quickest: str, quickest_ms: float) -> str:
    return (
        f"overloaded: no variant accurate enough is predicted to finish within {slo.latency_ms} ms now (the "
        f"quickest, {quickest}, in ~{quickest_ms:.2f} ms); retry later"
    )


class VariantChooser:
    """:func:`choose_variant` for one model's variants, cheap enough for every query.

    Only running variants are predicted per query; the others' answers depend on the
    query's rows and SLO alone and are kept per (rows, SLO). Each prediction is plain arithmetic
    (the number :func:`candidate` would give, without building one). The answer is the one
    :func:`choose_variant` gives (property-tested); when nothing fits, it is asked, for its refusal or
    best-effort choice.

    Even so the policy costs ~10 µs a query on a busy event loop (4 µs in a tight loop), and on one loop
    near its limit that decides whether the tight class makes its SLO. So, given the time, a choice is
    *kept* for :data:`RESELECT_S` per (rows, SLO) and running variants: within it a query takes the same
    variant after one check, that it is still predicted to finish in time (else the policy runs at once);
    only the cost ranking can be that much out of date, and, for a variant on the event loop, the
    corrections and batch limits that check uses (the queues it waits for are read per query). This is INFaaS's split of a
    per-query check from a periodic decision, with a period short enough for the autoscaler's starts to
    count at once. What the check reads is kept to a minimum: on a busy server each attribute chain costs
    a cache miss (the full prediction of one inline variant took a median 4.8 µs there, 2.3 in a tight loop).
    """

    def __init__(self, profiles: Mapping[VersionId, VariantProfile], max_batch: int) -> None:
        self._profiles = dict(profiles)
        self._max_batch = max_batch
        self._static = {
            v: (p.cost_cpu_s_per_1k, p.accuracy, p.latency_intercept_ms, p.latency_per_row_ms, p.load_ms)
            for v, p in self._profiles.items()
        }
        self._idle: dict[tuple[int, float | None, float], _IdleView] = {}
        self._impossibles: dict[tuple[int, float | None, float | None], str | None] = {}
        """Per (rows, accuracy floor, latency SLO): why it is impossible, or None (:meth:`_impossible`)."""
        self.fastest_ms = min((p.latency_intercept_ms + p.latency_per_row_ms for p in profiles.values()), default=0.0)
        """The profiled latency of a one-row batch on the fastest variant (0: no profiles)."""
        self.recent: VersionId | None = None
        """The variant chosen for the previous query."""
        self._kept: dict[tuple[int, float | None, float], _Kept] = {}
        """Per (rows, accuracy floor, latency bound): until when, for which running variants, the choice, the
        demand it saw, and, for a variant on the event loop, what the check needs besides the queues it waits
        for, as it was when chosen (:meth:`_frozen`)."""

    def choose(
        self, live: Mapping[VersionId, LiveState], slo: Slo, rows: int, now: float | None = None
    ) -> tuple[VersionId, float, VersionId | None]:
        """(the variant, its predicted completion in ms, and the variant accurate enough, not running, that
        would cost the query less, beyond the tolerance, once started and fit: demand the autoscaler should
        see, if any).

        Costs are :meth:`Candidate.query_cost`. Running variants are predicted from their live state; what a
        variant not running would do depends only on the query's rows and SLO, so that is worked out once
        per (rows, SLO) (:class:`_IdleView`, cheapest first). A running variant within the cost tolerance of
        the cheapest fit is chosen over any that is not running, so those are looked at only for the cheapest
        cost (the first one that fits) unless no running variant is within it. The choice is remembered as
        the ``recent`` variant of the next query. A plain tuple: this runs for every query.

        ``now`` (seconds): keep the choice for :data:`RESELECT_S` and take a kept one while it fits (a new
        mapping of running variants, as the data plane makes on every change, starts afresh)."""
        bound = math.inf if slo.latency_ms is None else slo.latency_ms
        minimum = slo.min_accuracy
        kept_key = (rows, minimum, bound)
        if now is not None and not slo.best_effort:
            kept = self._kept.get(kept_key)
            if kept is not None and now < kept[0] and kept[1] is live:
                _, _, version, cheaper, frozen = kept
                if frozen is None:  # on workers: predicted afresh
                    predicted = self._predict_kept(live, version, rows)
                else:  # on the event loop: it waits for the queues of every variant there (its own first)
                    predicted = 0.0
                    own = -1
                    for queue, correction, limit, replicas, intercept, per_row in frozen:
                        queued = queue.rows
                        if own < 0:
                            own = queued
                        if queued:
                            batches_ahead = math.ceil(queued / limit)
                            predicted += (
                                batches_ahead * correction * (intercept + per_row * min(limit, queued)) / replicas
                            )
                    _, correction, limit, _, intercept, per_row = frozen[0]
                    predicted += correction * (intercept + per_row * max(rows, min(limit, own + rows)))
                if predicted <= bound:
                    self.recent = version
                    return version, predicted, cheaper
        recent = self.recent
        static = self._static
        max_batch = self._max_batch
        loop_ms = 0.0
        running: list[tuple[VersionId, float, float, float, float, bool, int, int, float]] = []
        for version, state in live.items():  # each live value read once: they are properties of the host
            known = static.get(version)
            if known is None:
                continue
            cost, accuracy, intercept, per_row, _ = known
            correction, queued, busy = state.correction, state.queued_rows, state.busy
            limit = max(1, min(state.batch_limit, max_batch or 1))
            if queued == 0 and busy == 0:  # the usual case, spared a call
                queue_ms = 0.0 if state.replica_count > 0 else math.inf
            else:
                queue_ms = _queue_delay(intercept, per_row, correction, queued, limit, busy, state, max_batch)
            inline = state.inline
            if inline:
                loop_ms += queue_ms
            if minimum is None or (accuracy is not None and accuracy >= minimum):
                running.append((version, cost, intercept, per_row, queue_ms, inline, queued, limit, correction))
        cheapest = math.inf
        fits: list[tuple[float, float, VersionId]] = []
        for version, cost, intercept, per_row, queue_ms, inline, queued, limit, correction in running:
            batch_rows = max(rows, min(limit, queued + rows))
            predicted = (loop_ms if inline else queue_ms) + correction * (intercept + per_row * batch_rows) + 0.0
            if predicted <= bound:
                query_cost = cost + intercept / max(batch_rows, rows, 1)
                fits.append((query_cost, predicted, version))
                if query_cost < cheapest:
                    cheapest = query_cost
        idle = self._idle_view(rows, minimum, bound)
        for query_cost, idle_ms, load_ms, version in idle.fits:  # cheapest first: the first that fits is enough
            if query_cost >= cheapest:
                break
            if version not in live and loop_ms + idle_ms + load_ms <= bound:
                cheapest = query_cost
                break
        if cheapest == math.inf:  # nothing fits
            if not slo.best_effort and idle.feasible:  # overloaded: refused here, at a few µs (not the full policy)
                raise AdmissionRefused(self._overloaded(live, idle, slo, rows, loop_ms), _idle_choice(idle))
            if not slo.best_effort and (impossible := self._impossible(slo, rows)) is not None:
                raise InvalidArgumentError(impossible)
            choice = choose_variant(self._profiles, live, slo, rows, self._max_batch, recent)
            self.recent = VersionId(choice.variant)
            return self.recent, choice.predicted_ms, None
        ceiling = cheapest * (1 + COST_TOLERANCE)
        best: tuple[bool, float, VersionId] | None = None
        for query_cost, predicted, version in fits:  # a running variant within the tolerance is chosen first
            if query_cost <= ceiling:
                key = (version != recent, predicted, version)
                if best is None or key < best:
                    best = key
        if best is None:  # a cold start: the variants not running that fit, within the tolerance
            for query_cost, idle_ms, load_ms, version in idle.fits:
                if query_cost > ceiling:
                    break
                predicted = loop_ms + idle_ms + load_ms
                if version not in live and predicted <= bound:
                    key = (version != recent, predicted, version)
                    if best is None or key < best:
                        best = key
        assert best is not None  # the cheapest fit is within its own tolerance
        _, predicted, version = best
        self.recent = version
        cheaper = None
        for query_cost, candidate_version in idle.startable:  # by query cost: the first not running
            if candidate_version not in live:
                if query_cost * (1 + COST_TOLERANCE) < cheapest:
                    cheaper = candidate_version
                break
        chosen = live.get(version)
        if now is not None and not slo.best_effort and chosen is not None and chosen.replica_count > 0:
            if len(self._kept) >= _IDLE_VIEWS:
                self._kept.clear()
            self._kept[kept_key] = (now + RESELECT_S, live, version, cheaper, self._frozen(live, version))
        return version, predicted, cheaper

    def _impossible(self, slo: Slo, rows: int) -> str | None:
        """Why no variant can meet ``slo`` even on an idle server (the 400's message), if so: it depends on the
        profiles, the rows and the SLO alone, so it is worked out once per (rows, SLO), and a client that keeps
        asking the impossible costs the server less than one it serves (the full policy ran for each before:
        ~40% more server CPU per query than serving it)."""
        key = (rows, slo.min_accuracy, slo.latency_ms)
        if key not in self._impossibles:
            message = None
            try:
                choose_variant(self._profiles, {}, slo, rows, self._max_batch)
            except InvalidArgumentError as error:
                message = error.message
            except AdmissionRefused:
                pass
            if len(self._impossibles) >= _IDLE_VIEWS:
                self._impossibles.clear()
            self._impossibles[key] = message
        return self._impossibles[key]

    def _frozen(self, live: Mapping[VersionId, LiveState], version: VersionId) -> _Frozen | None:
        """For a kept inline variant, each inline variant's (queue, correction, batch limit, replicas,
        latency model) as they are now, the kept one first: what its check needs besides the queues. None for
        a variant on workers (its check reads everything afresh)."""
        if not live[version].inline:
            return None
        frozen: list[tuple[QueuedRows, float, int, int, float, float]] = []
        for other, state in live.items():
            known = self._static.get(other)
            if known is None or not state.inline:
                continue
            if state.replica_count <= 0:
                return None
            limit = max(1, min(state.batch_limit, self._max_batch or 1))
            entry = (state.queue, state.correction, limit, state.replica_count, known[2], known[3])
            if other == version:
                frozen.insert(0, entry)
            else:
                frozen.append(entry)
        return tuple(frozen)

    def _predict_kept(self, live: Mapping[VersionId, LiveState], version: VersionId, rows: int) -> float:
        """The kept (running) variant's predicted completion now, as :meth:`choose` works it out."""
        state = live[version]
        max_batch = self._max_batch
        static = self._static
        _, _, intercept, per_row, _ = static[version]
        if state.inline:  # it waits for every inline variant's queue
            queue_ms = 0.0
            for other, other_state in live.items():
                known = static.get(other)
                if known is None or not other_state.inline:
                    continue
                if other_state.queued_rows == 0 and other_state.busy == 0:
                    queue_ms += 0.0 if other_state.replica_count > 0 else math.inf
                else:
                    queue_ms += _queue_ms(known[2], known[3], other_state, max_batch)
        else:
            queue_ms = _queue_ms(intercept, per_row, state, max_batch)
        limit = max(1, min(state.batch_limit, max_batch or 1))
        batch_rows = max(rows, min(limit, state.queued_rows + rows))
        return queue_ms + state.correction * (intercept + per_row * batch_rows) + 0.0

    def _overloaded(
        self, live: Mapping[VersionId, LiveState], idle: _IdleView, slo: Slo, rows: int, loop_ms: float
    ) -> str:
        """:func:`choose_variant`'s refusal message: the quickest accurate variant now, running or not."""
        best: tuple[float, VersionId] | None = None
        for idle_ms, load_ms, version in idle.accurate:
            state = live.get(version)
            if state is None:
                predicted = loop_ms + idle_ms + load_ms
            else:
                known = self._static[version]
                predicted = _predict_ms(known[2], known[3], state, rows, self._max_batch, loop_ms)[0]
            if best is None or (predicted, version) < best:
                best = (predicted, version)
        assert best is not None  # the caller saw a feasible variant, so an accurate one
        return _overloaded(slo, best[1], best[0])

    def _idle_view(self, rows: int, minimum: float | None, bound: float) -> _IdleView:
        key = (rows, minimum, bound)
        view = self._idle.get(key)
        if view is None:
            fits: list[tuple[float, float, float, VersionId]] = []
            startable: list[tuple[float, VersionId]] = []
            accurate: list[tuple[float, float, VersionId]] = []
            feasible: list[tuple[float, float, VersionId]] = []
            for version, (cost, accuracy, intercept, per_row, load_ms) in self._static.items():
                if minimum is not None and (accuracy is None or accuracy < minimum):
                    continue
                idle_ms = intercept + per_row * rows
                query_cost = cost + intercept / max(rows, 1)
                accurate.append((idle_ms, load_ms, version))
                if idle_ms <= bound:  # fits once started, whether or not its cold start fits too
                    feasible.append((query_cost, idle_ms, version))
                    startable.append((query_cost, version))
                if idle_ms + load_ms <= bound:  # fits even with its cold start (when the event loop's queue allows)
                    fits.append((query_cost, idle_ms, load_ms, version))
            view = _IdleView(tuple(sorted(fits)), tuple(sorted(startable)), tuple(accurate), tuple(feasible))
            if len(self._idle) >= _IDLE_VIEWS:
                self._idle.clear()
            self._idle[key] = view
        return view


_IDLE_VIEWS = 1024
"""Distinct (rows, SLO) pairs remembered per model; past it the memory starts again."""
_Frozen = tuple[tuple[QueuedRows, float, int, int, float, float], ...]
_Kept = tuple[float, Mapping[VersionId, LiveState], VersionId, "VersionId | None", "_Frozen | None"]
RESELECT_S = 0.01
"""How long :meth:`VariantChooser.choose` keeps a choice for queries of the same rows and SLO while it still
fits: 10 ms, so at 1,000-15,000 queries a second in a few classes the policy runs for one query in 5-70
(at 1 ms, for one in 1-7, `digits` at 2,900 queries/s paid 5% more server CPU per query: 8 paired runs,
cheaper in 7). The autoscaler acts over seconds; a variant it starts counts as soon as it runs (a new
mapping of running variants starts afresh)."""


@dataclass(frozen=True, slots=True)
class _IdleView:
    """For one (rows, accuracy floor, latency bound): each accurate variant as it would be if not running."""

    fits: tuple[tuple[float, float, float, VersionId], ...]
    """(query cost, predicted ms, cold start ms, variant), cheapest first, of those that would meet the bound even
    with their cold start (and, per query, with the event loop's queue: :func:`loop_queue_ms`)."""
    startable: tuple[tuple[float, VersionId], ...]
    """(query cost, variant), cheapest first, of those that would meet it once started: where a cheaper one is not
    running, the demand the autoscaler should see (also when its cold start would fit on an idle loop but not
    behind the event loop's queue now)."""
    accurate: tuple[tuple[float, float, VersionId], ...]
    """(predicted ms, cold start ms, variant) of every variant accurate enough."""
    feasible: tuple[tuple[float, float, VersionId], ...]
    """(query cost, predicted ms, variant) of those that would meet the bound on an idle server, started: when
    none fits now, the query is refused as overload (429) if there are any, else as impossible (400)."""


def _idle_choice(view: _IdleView) -> VersionId:
    """``select_variant`` over the feasible variants as on an idle server: the variant a refused query would
    have had (demand for the autoscaler)."""
    ceiling = min(cost for cost, _, _ in view.feasible) * (1 + COST_TOLERANCE)
    return min((ms, v) for cost, ms, v in view.feasible if cost <= ceiling)[1]


def _queue_ms(intercept: float, per_row: float, state: LiveState, max_batch: int) -> float:
    """``candidate(...).queue_ms`` of a running variant that does not run inline, in the same operations."""
    limit = max(1, min(state.batch_limit, max_batch or 1))
    return _queue_delay(intercept, per_row, state.correction, state.queued_rows, limit, state.busy, state, max_batch)


def _queue_delay(
    intercept: float,
    per_row: float,
    correction: float,
    queued: int,
    limit: int,
    busy: int,
    state: LiveState,
    max_batch: int,
) -> float:
    """:func:`_queue_ms` from values already read (``state`` is read only when its queue is not empty)."""
    batches_ahead = math.ceil(queued / limit)
    if batches_ahead == 0 and busy == 0:
        return 0.0 if state.replica_count > 0 else math.inf
    replicas = state.replica_count
    if replicas <= 0:
        return math.inf
    if batches_ahead == 0 and min(busy, replicas) < replicas:
        return 0.0
    queued_ms = (
        batches_ahead * (intercept * correction + per_row * correction * min(limit, queued)) if batches_ahead else 0.0
    )
    return (state.running_ms / 2 + queued_ms) / replicas


def _predict_ms(
    intercept: float, per_row: float, state: LiveState, rows: int, max_batch: int, loop_ms: float
) -> tuple[float, int]:
    """``candidate(...).predict_ms(rows)`` for a running variant, in the same operations (so the same float),
    and the batch the query would join."""
    queue_ms = loop_ms if state.inline else _queue_ms(intercept, per_row, state, max_batch)
    limit = max(1, min(state.batch_limit, max_batch or 1))
    batch_rows = max(rows, min(limit, state.queued_rows + rows))
    return queue_ms + state.correction * (intercept + per_row * max(batch_rows, rows)) + 0.0, batch_rows
