"""Admission's view of the variants: a Candidate per variant, and select_variant asked cheaply but exactly.

Each arrival asks :func:`~sloserve.policy.selection.select_variant` for its class. A
variant's :class:`~sloserve.policy.selection.Candidate` comes from its pool:
``queue_ms`` from :func:`~sloserve.policy.queueing.queue_delay_ms` over the replicas up
(or, while none is, the ones starting, with the cold start left as ``load_ms``; with
none at all, a replica the CPU budget could still start, else never), ``batch_rows``
from :func:`~sloserve.policy.queueing.expected_batch_rows`, ``loaded`` = a replica is
up, ``correction`` = the pool's live EWMA. A candidate is rebuilt only after its pool
changed.

At 100,000 arrivals per second select_variant dominates the run, so with
``fast_selection`` (the default) it is spared work its answer cannot depend on; the
results are identical (a test runs both ways):

- **accuracy**: only the variants accurate enough for the class are passed: its own
  first filter, applied once per class instead of per call;
- **hopeless variants**: a variant whose idle prediction (no queue, a batch of one,
  loaded, its current correction: a lower bound of any prediction, in floating point
  too) exceeds the class's latency bound is never feasible, and is left out until its
  correction moves;
- **reuse**: an admission raises the predictions of the variant it joined but lowers a
  query's share of its batch there and makes it the model's recent variant, so every
  class of that model chooses again; between events and admissions a class's last
  choice stays its choice, and a refusal stays a refusal.
  Events (a batch done, a replica up or down, an autoscaler tick) or a cold start in
  progress may lower predictions, and invalidate every remembered result.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from sloserve.policy.queueing import expected_batch_rows, queue_delay_ms
from sloserve.policy.selection import (
    Candidate,
    Choice,
    NoChoice,
    Slo,
    accurate_enough,
    best_effort,
    feasible_when_idle,
    select_variant,
)
from sloserve.sim.pool import Pool

_REFUSAL_REFRESH_MS = 1.0


class Selector:
    def __init__(self, pools: Sequence[Sequence[Pool]], slos: Sequence[Slo], fast: bool) -> None:
        self.pools = [list(per_model) for per_model in pools]
        """Per model, its pools in family order."""
        self.by_id = [{p.variant.id: p for p in per_model} for per_model in pools]
        self.slos = list(slos)
        self.fast = fast
        n_models = len(self.pools)
        self.cands: list[list[Candidate]] = [[] for _ in range(n_models)]
        self.dirty: list[list[Pool]] = [[] for _ in range(n_models)]
        self.volatile: list[list[Pool]] = [[] for _ in range(n_models)]
        """Pools in a cold start with no replica up: rebuilt at every use (their load time shrinks)."""
        self.eligible = [[_accurate_positions(per_model, slo) for slo in self.slos] for per_model in self.pools]
        self.possible = [[list(e) for e in per_model] for per_model in self.eligible]
        """Per model and class: the eligible positions whose idle prediction fits the latency bound."""
        self.generation = [0] * n_models
        self.memo: list[list[tuple[int, Choice | NoChoice] | None]] = [[None] * len(self.slos) for _ in self.pools]
        self.memo_of: dict[int, list[int]] = {p.index: [] for per_model in self.pools for p in per_model}
        """Per pool: the classes whose remembered choice it is."""
        self.refusals: dict[tuple[int, int], tuple[float, Choice | NoChoice]] = {}
        self.recent: list[Pool | None] = [None] * n_models
        """Per model, the pool that took its last request (the policy's ``recent`` variant)."""

    def start(self, now: float, cpus_free: int) -> None:
        for m, per_model in enumerate(self.pools):
            self.cands[m] = [self.candidate(p, now, cpus_free) for p in per_model]
            for p in per_model:
                self.corrected(p)

    # ---- what the engine reports -------------------------------------------

    def touch(self, p: Pool) -> None:
        """``p``'s queue, replicas or correction changed: rebuild its candidate before the next use."""
        if not p.dirty:
            p.dirty = True
            self.dirty[p.model].append(p)

    def event(self, m: int) -> None:
        """An event in model ``m`` may have lowered predictions: forget its remembered selections."""
        self.generation[m] += 1

    def everything_changed(self) -> None:
        """Replicas started or stopped, the CPU budget moved: every candidate and selection is stale."""
        for per_model in self.pools:
            for p in per_model:
                self.touch(p)
        self.generation = [g + 1 for g in self.generation]

    def admitted(self, p: Pool) -> None:
        """A request joined ``p``: every class of its model chooses again (``p``'s queue grew, so a query's
        share of its batch got cheaper, and ``p`` is now the model's recent variant)."""
        m = p.model
        previous = self.recent[m]
        if previous is not p:
            self.recent[m] = p
            if previous is not None:
                self.touch(previous)
        self.event(m)
        stale = self.memo_of[p.index]
        if stale:
            memo = self.memo[p.model]
            for k in stale:
                memo[k] = None
            stale.clear()
        self.touch(p)

    def corrected(self, p: Pool) -> None:
        """``p``'s correction moved: refresh the classes it could serve at all."""
        v = p.variant
        idle_ms = p.correction * (v.intercept_ms + v.per_row_ms * 1)  # Candidate.predict_ms(1) when idle
        possible = self.possible[p.model]
        eligible = self.eligible[p.model]
        for k, slo in enumerate(self.slos):
            fits = slo.latency_ms is None or idle_ms <= slo.latency_ms
            current = possible[k]
            if fits != (p.pos in current) and p.pos in eligible[k]:
                keep = set(current) - {p.pos} | ({p.pos} if fits else set())
                possible[k] = [i for i in eligible[k] if i in keep]

    # ---- questions -----------------------------------------------------------

    def choose(self, m: int, k: int, rows: int, now: float, cpus_free: int) -> Choice | NoChoice:
        """select_variant for a request of class ``k`` and ``rows`` rows to model ``m``."""
        if rows == 1:
            entry = self.memo[m][k]
            if entry is not None and entry[0] == self.generation[m]:
                return entry[1]
        cands = self.candidates(m, rows, now, cpus_free)
        slo = self.slos[k]
        if not self.fast:
            return select_variant(cands, slo, rows)
        positions = self.possible[m][k] if rows == 1 else self.eligible[m][k]
        choice = select_variant([cands[i] for i in positions], slo, rows)
        if rows == 1 and not self.volatile[m]:
            self.memo[m][k] = (self.generation[m], choice)
            if type(choice) is Choice:
                self.memo_of[self.by_id[m][choice.variant].index].append(k)
        return choice

    def best_effort(self, m: int, k: int, rows: int, now: float, cpus_free: int) -> Choice:
        return best_effort(self.candidates(m, rows, now, cpus_free), self.slos[k], rows)

    def when_idle(self, m: int, k: int, rows: int, now: float, cpus_free: int) -> Choice | NoChoice:
        """feasible_when_idle for a refused request: a Choice means overloaded, NoChoice impossible.

        Re-judged at most once per simulated millisecond per class (the answer moves only with
        the live corrections).
        """
        key = (m, k)
        cached = self.refusals.get(key) if rows == 1 else None
        if cached is None or now - cached[0] >= _REFUSAL_REFRESH_MS:
            cached = (now, feasible_when_idle(self.candidates(m, rows, now, cpus_free), self.slos[k], rows))
            if rows == 1:
                self.refusals[key] = cached
        return cached[1]

    # ---- candidates ------------------------------------------------------------

    def candidate(self, p: Pool, now: float, cpus_free: int, rows: int = 1) -> Candidate:
        v = p.variant
        staying = p.ready - p.retiring
        if staying > 0:
            queue_ms = queue_delay_ms(
                p.queued_rows, p.busy - p.retiring, staying, p.limit, p.live, running_ms=p.running_ms / 2
            )
            loaded, load_ms = True, 0.0
        elif p.starting:
            queue_ms = queue_delay_ms(p.queued_rows, 0, len(p.starting), p.limit, p.live)
            loaded, load_ms = False, max(p.starting[0] - now, 0.0)
        elif v.cpus <= cpus_free:
            queue_ms = queue_delay_ms(p.queued_rows, 0, 1, p.limit, p.live)
            loaded, load_ms = False, v.load_ms
        else:
            loaded, load_ms, queue_ms = False, v.load_ms, math.inf
        return Candidate(
            v.id,
            v.accuracy,
            v.intercept_ms,
            v.per_row_ms,
            v.cost_cpu_s_per_1k,
            loaded,
            load_ms,
            queue_ms,
            expected_batch_rows(p.queued_rows, rows, p.limit),
            p.correction,
            self.recent[p.model] is p,
        )

    def candidates(self, m: int, rows: int, now: float, cpus_free: int) -> list[Candidate]:
        """Model ``m``'s candidates, in family order, for a request of ``rows`` rows."""
        cands = self.cands[m]
        dirty = self.dirty[m]
        volatile = self.volatile[m]
        if dirty:
            for p in dirty:
                p.dirty = False
                cands[p.pos] = self.candidate(p, now, cpus_free)
                if p.ready - p.retiring <= 0 and p.starting and p not in volatile:
                    volatile.append(p)
            dirty.clear()
        if volatile:
            for p in volatile:
                cands[p.pos] = self.candidate(p, now, cpus_free)
            volatile[:] = [p for p in volatile if p.ready - p.retiring <= 0 and p.starting]
        if rows != 1:
            return [self.candidate(p, now, cpus_free, rows) for p in self.pools[m]]
        return cands


def _accurate_positions(pools: Sequence[Pool], slo: Slo) -> list[int]:
    probes = [Candidate(p.variant.id, p.variant.accuracy, 0.0, 0.0, 0.0) for p in pools]
    return [i for i, c in enumerate(probes) if accurate_enough(c, slo)]
