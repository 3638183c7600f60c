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
            f"no variant can meet {_slo_text(slo)} even on an idle server: {describe(idle)}. "
            'Relax the SLO or send "best_effort": true'
        )
    quickest_ms, quickest = min((c.predict_ms(rows), c.id) for c in candidates if accurate_enough(c, slo))
    raise AdmissionRefused(_overloaded(slo, quickest, quickest_ms), idle.variant)


def _slo_text(slo: Slo) -> str:
    """The SLO as a client sends it (``latency_slo_ms=5, min_accuracy=0.9678``), a default included."""
    latency = "no latency_slo_ms" if slo.latency_ms is None else f"latency_slo_ms={slo.latency_ms:g}"
    return latency if slo.min_accuracy is None else f"{latency}, min_accuracy={slo.min_accuracy:.4g}"


def _overloaded(slo: Slo, quickest: str, quickest_ms: float) -> str:
    return (
        f"overloaded: no variant accurate enough is predicted to finish within {slo.latency_ms:g} ms now (the "
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
    *kept* for :data:`RESELECT_S` per (SLO, rows) and running variants (:meth:`kept`): within it a query
    takes the same variant after one check, that it is still predicted to finish in time (else the policy
    runs at once); only the cost ranking can be that much out of date, and, for a variant on the event loop,
    the corrections and batch limits that check uses (the queues it waits for are read per query). This is
    INFaaS's split of a per-query check from a periodic decision, with a period short enough for the
    autoscaler's starts to count at once. What the check reads is kept to a minimum: on a busy server each
    attribute chain costs a cache miss (the full prediction of one inline variant took a median 4.8 µs
    there, 2.3 in a tight loop; the kept check with the policy's arithmetic and its counting 5.6 µs).
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
        self._kept: dict[tuple[int, int], _Kept] = {}
        """Per (the SLO object's id, rows): the choice kept for them (:meth:`kept`)."""
        self._taken_served: dict[VersionId, int] = {}
        self._taken_wanted: dict[VersionId, int] = {}
        """Counts of kept choices since replaced, not yet taken (:meth:`take_counts`)."""

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

        ``now`` (seconds): keep the choice for :data:`RESELECT_S`, for :meth:`kept` (not for a best-effort query,
        nor one given to a variant whose replicas are down)."""
        bound = math.inf if slo.latency_ms is None else slo.latency_ms
        minimum = slo.min_accuracy
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
            self._keep(live, slo, rows, bound, now, version, cheaper)
        return version, predicted, cheaper

    def kept(self, live: Mapping[VersionId, LiveState], slo: Slo, rows: int, now: float) -> VersionId | None:
        """The variant :meth:`choose` chose (given ``now``) for this SLO object and rows less than
        :data:`RESELECT_S` ago, for the same mapping of running variants, if it is still predicted to finish in
        time; else None (run :meth:`choose`). The query is counted in the kept choice (:meth:`take_counts`).

        This is the request path's common case, so it does the least it can: one dict lookup by the SLO's
        identity (the data plane's :class:`~sloserve.dataplane.slo.RequestSlos` hands out one object per
        parameter set), and, for a variant on the event loop while the other variants there have nothing
        queued (the usual one alone, or beside variants that pinned queries left running), one comparison of
        its queue's rows with the most it can hold for the query to fit, worked out when the choice was made."""
        entry = self._kept.get((id(slo), rows))
        if entry is None or now >= entry.until or entry.live is not live or entry.slo is not slo:
            return None
        queue = entry.queue
        for other in entry.neighbours:
            if other.rows:  # another variant on the event loop has work queued: predicted in full
                queue = None
                break
        if queue is not None:
            if queue.rows > entry.max_queued:
                return None
        elif self._predict_kept(live, entry, rows) > entry.bound:
            return None
        entry.served += 1
        version = self.recent = entry.version
        return version

    def take_counts(self, now: float) -> tuple[dict[VersionId, int], dict[VersionId, int]]:
        """Queries served by kept choices since the last call, per variant, and the rows of them that a
        cheaper variant not running would have served, per that variant (demand for the autoscaler). Choices
        kept no longer are dropped (with the running variants they hold on to)."""
        served, wanted = self._taken_served, self._taken_wanted
        self._taken_served, self._taken_wanted = {}, {}
        for entry in self._kept.values():
            _take(entry, served, wanted)
        self._kept = {key: entry for key, entry in self._kept.items() if now < entry.until}
        return served, wanted

    def _keep(
        self,
        live: Mapping[VersionId, LiveState],
        slo: Slo,
        rows: int,
        bound: float,
        now: float,
        version: VersionId,
        cheaper: VersionId | None,
    ) -> None:
        key = (id(slo), rows)
        if len(self._kept) >= _IDLE_VIEWS or key in self._kept:
            for entry in self._kept.values() if len(self._kept) >= _IDLE_VIEWS else (self._kept[key],):
                _take(entry, self._taken_served, self._taken_wanted)
            if len(self._kept) >= _IDLE_VIEWS:
                self._kept.clear()
        frozen: _Frozen | None = None
        own, queue, max_queued = 0, None, -1
        neighbours: tuple[QueuedRows, ...] = ()
        if live[version].inline:
            inline = self._frozen(live, version)
            if inline is None:
                return
            frozen, own = inline
            queue, max_queued = frozen[own][0], _max_queued(frozen[own], rows, bound)
            neighbours = tuple(other[0] for i, other in enumerate(frozen) if i != own)
        self._kept[key] = _Kept(
            now + RESELECT_S, live, slo, rows, bound, version, cheaper, frozen, own, queue, max_queued, neighbours
        )

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

    def _frozen(self, live: Mapping[VersionId, LiveState], version: VersionId) -> tuple[_Frozen, int] | None:
        """For a kept inline variant, each inline variant's (queue, correction, batch limit, replicas,
        latency model) as they are now, in the order :meth:`choose` reads them, and where the kept one is among
        them: what its check needs besides the queues. None if one of them has no replica up (the kept one
        then is not kept)."""
        frozen: list[tuple[QueuedRows, float, int, int, float, float]] = []
        own = -1
        for other, state in live.items():
            known = self._static.get(other)
            if known is None or not state.inline:
                continue
            if state.replica_count <= 0:
                return None
            if other == version:
                own = len(frozen)
            limit = max(1, min(state.batch_limit, self._max_batch or 1))
            frozen.append((state.queue, state.correction, limit, state.replica_count, known[2], known[3]))
        return tuple(frozen), own

    def _predict_kept(self, live: Mapping[VersionId, LiveState], entry: _Kept, rows: int) -> float:
        """The kept (running) variant's predicted completion now, in :meth:`choose`'s operations (so the same
        float): from the live state of a variant on workers, and, for one on the event loop, from the queues
        of every variant there with the rest as it was when kept."""
        frozen = entry.frozen
        if frozen is None:  # on workers: predicted afresh
            _, _, intercept, per_row, _ = self._static[entry.version]
            return _predict_ms(intercept, per_row, live[entry.version], rows, self._max_batch, 0.0)[0]
        loop_ms = 0.0
        for queue, correction, limit, replicas, intercept, per_row in frozen:
            queued = queue.rows
            if queued:  # an idle neighbour adds 0.0, as in choose(): spared the call
                loop_ms += _ahead_ms(queued, correction, limit, replicas, intercept, per_row)
        queue, correction, limit, _, intercept, per_row = frozen[entry.own]
        return loop_ms + correction * (intercept + per_row * max(rows, min(limit, queue.rows + rows))) + 0.0

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
_MAX_QUEUED = 1 << 40
RESELECT_S = 0.05
"""How long :meth:`VariantChooser.choose` keeps a choice for queries of the same SLO and rows while it still
fits (:meth:`VariantChooser.kept`): 50 ms, so at 1,000-15,000 queries a second in a few classes the policy
runs for one query in 25-350. Each time it runs for the request path it costs ~35 µs on a busy server
(caches cold for its code), against ~1.3 for a kept choice: at 40% of `digits`, selection took 2.0 µs a
query in all at 50 ms and 2.8 at 10 ms (timers in the server, 4 alternating reps; at 1 ms against 10, 5%
more server CPU a query). Only the cost ranking waits for the period: a kept choice that stops fitting is
dropped at once, and a variant the autoscaler starts counts as soon as it runs (a new mapping of running
variants starts afresh)."""


@dataclass(slots=True, eq=False)
class _Kept:
    """A choice kept for queries of one SLO object and row count (:meth:`VariantChooser.kept`)."""

    until: float
    live: Mapping[VersionId, LiveState]
    """The mapping of running variants it was made for (the data plane makes a new one on every change)."""
    slo: Slo
    """The SLO object it was made for: held, so that its id, the key, is not reused while kept."""
    rows: int
    bound: float
    version: VersionId
    cheaper: VersionId | None
    """The cheaper variant, not running, that would have served these queries: demand for the autoscaler."""
    frozen: _Frozen | None
    """For a variant on the event loop, what its check needs besides the queues it waits for, as it was when
    chosen (:meth:`VariantChooser._frozen`); None for one on workers (checked afresh)."""
    own: int
    """Where the variant is in ``frozen``."""
    queue: QueuedRows | None
    """For a variant on the event loop, its queue, whose rows alone decide the check while ``neighbours`` are
    empty ..."""
    max_queued: int
    """... by being at most this (-1: never)."""
    neighbours: tuple[QueuedRows, ...]
    """The queues of the other variants on the event loop (left running by pinned queries, or the autoscaler's):
    while each is empty, it adds exactly 0.0 to the prediction."""
    served: int = 0
    """Queries served by it since counts were last taken."""


def _take(entry: _Kept, served: dict[VersionId, int], wanted: dict[VersionId, int]) -> None:
    """Move ``entry``'s count into the totals of :meth:`VariantChooser.take_counts`."""
    n, entry.served = entry.served, 0
    if n:
        served[entry.version] = served.get(entry.version, 0) + n
        if entry.cheaper is not None:
            wanted[entry.cheaper] = wanted.get(entry.cheaper, 0) + n * entry.rows


def _ahead_ms(queued: int, correction: float, limit: int, replicas: int, intercept: float, per_row: float) -> float:
    """The time the batches of ``queued`` rows on the event loop take ahead of a query, in the operations of
    :func:`_queue_delay` (nothing runs there while a query is chosen)."""
    if not queued:
        return 0.0
    return math.ceil(queued / limit) * (intercept * correction + per_row * correction * min(limit, queued)) / replicas


def _max_queued(own: tuple[QueuedRows, float, int, int, float, float], rows: int, bound: float) -> int:
    """The most rows the only variant on the event loop may have queued for a query of ``rows`` to be predicted
    within ``bound`` (-1 if not even with none), as the check would decide for each (in its operations).

    The prediction grows with the queue; past one batch it depends only on how many batches are queued, so
    the answer is a whole number of batches, worked out and then confirmed at the edge (a few predictions, not
    a search: this runs each time a choice is kept, on the request path)."""
    _, correction, limit, replicas, intercept, per_row = own

    def fits(queued: int) -> bool:
        loop_ms = 0.0 + _ahead_ms(queued, correction, limit, replicas, intercept, per_row)
        return loop_ms + correction * (intercept + per_row * max(rows, min(limit, queued + rows))) + 0.0 <= bound

    if not fits(0):
        return -1
    if not fits(limit):  # the edge is within the first batch: a binary search over its rows
        low, high = 0, limit  # fits(low), not fits(high)
        while high - low > 1:
            middle = (low + high) // 2
            if fits(middle):
                low = middle
            else:
                high = middle
        return low
    batch_ms = (intercept * correction + per_row * correction * limit) / replicas
    if batch_ms <= 0:
        return _MAX_QUEUED
    own_ms = correction * (intercept + per_row * max(rows, limit))
    most = _MAX_QUEUED // limit
    estimate = (bound - own_ms) / batch_ms  # no latency bound: infinite
    batches = most if estimate >= most else max(1, int(estimate))
    while batches > 1 and not fits(batches * limit):
        batches -= 1
    while batches < most and fits((batches + 1) * limit):
        batches += 1
    return batches * limit


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
