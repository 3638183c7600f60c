"""The discrete-event engine: a workload through the real policies, against simulated replicas, in simulated time.

Each variant has a pool of identical replicas (each runs one batch at a time) and
one queue. Under the model-less policy (the default):

- **admission** at arrival calls :func:`~sloserve.policy.selection.select_variant` over
  one :class:`~sloserve.policy.selection.Candidate` per variant, built from the
  variant's queue state with :func:`~sloserve.policy.queueing.queue_delay_ms` and
  :func:`~sloserve.policy.queueing.expected_batch_rows`, ``loaded`` = a replica is up,
  and ``correction`` = an EWMA of observed / profiled service time (see
  :mod:`sloserve.sim.selector` for how that stays cheap at 100,000 arrivals per second
  without changing a single answer). No choice: rejected (``impossible``
  when not even :func:`~sloserve.policy.selection.feasible_when_idle` finds one,
  else ``overloaded``), or served by :func:`~sloserve.policy.selection.best_effort`
  when the class asks for it.
- **batching**: the queue is earliest-deadline-first (FIFO between equal deadlines);
  a free replica drops expired heads (:func:`~sloserve.policy.batching.expired`, a
  deadline drop) and takes the prefix :func:`~sloserve.policy.batching.batch_take`
  chooses (the most requests predicted in time), under an AIMD limit updated by
  :func:`~sloserve.policy.batching.aimd_update` after every batch (decrease when
  :func:`~sloserve.policy.batching.batch_too_slow`: its service took longer than
  the tightest SLO in it). With ``max_slo_hold_ms`` > 0 a free replica waits while a
  queued request is held for its batch to grow, as the batcher holds it
  (:func:`~sloserve.policy.batching.hold_ms`, gated by the front end's busy share and, via
  :func:`~sloserve.policy.batching.holds_gather`, by whether requests come fast enough to join
  a hold); otherwise work-conserving.
- **autoscaling**: every ``autoscale_interval_s``
  :func:`~sloserve.policy.autoscale.decide_scaling` gets a
  :class:`~sloserve.policy.autoscale.VariantLoad` per variant (rows per second routed
  to it over the interval, plus the rows refused while it was the class's choice on an
  idle server: offered, not admitted load; and the mean time requests waited for their
  batch to start over the interval) within the CPU budget; a new replica serves
  after its cold start (``load_ms``). A variant with no replica can still be chosen
  (its prediction includes the cold start): that starts one on demand. Replicas and
  the CPU budget are kept by :class:`~sloserve.sim.fleet.Fleet`.

The comparison policies send every query to one variant with no admission, no
deadlines and no autoscaling, over a fixed pool: ``fixed`` batches whatever is queued
when a replica frees (up to ``max_batch``), ``maxbatch`` waits until ``max_batch``
rows are queued or the oldest has waited ``timeout_ms``.

With ``frontend_ms`` > 0 every request first waits its turn at one of
``frontend_workers`` FIFO front ends (the HTTP/gRPC process: parsing, selection,
encoding), which holds it that long; admission, and the server's deadline
(admission + SLO, as the real server only sees a request once it is parsed), start
there, while attainment is judged from the client's send time. This is what makes
a small model's serving front-end-bound, as it is on a real machine. With
``frontend_wake_ms`` > 0 each front end is an event loop instead, working in cycles
(:func:`frontend_cycles_ms`) and paying a wake-up whenever it idled: what a request costs
then falls as the load rises, as the server's does. Requests a front end hands over
together are admitted together and batched together, as the server's loop batches what
one cycle read.

Service time = the variant's latency model at the batch's rows x ``slowdown`` x
lognormal noise (median 1, ``noise_sigma``). Everything random is drawn from numpy
generators seeded by ``seed``: a run is a pure function of its inputs.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from heapq import heappop, heappush
from typing import Any

import numpy as np

from sloserve.errors import InvalidArgumentError
from sloserve.policy.autoscale import ScaleDecision
from sloserve.policy.batching import (
    ARRIVALS_WINDOW_S,
    LOOP_LOAD_WINDOW_S,
    QUIET_WINDOWS,
    LatencyModel,
    aimd_update,
    batch_take,
    batch_too_slow,
    expired,
    hold_ms,
    hold_scale_update,
    holds_gather,
    loop_hold_scale,
    loop_room,
    near_miss_after,
)
from sloserve.policy.selection import Choice
from sloserve.sim.config import SimConfig
from sloserve.sim.family import Family
from sloserve.sim.fleet import Fleet
from sloserve.sim.frontend import frontend_cycles_ms, frontend_exit_ms, frontend_service_ms
from sloserve.sim.pool import Pool, PoolStats
from sloserve.sim.selector import Selector
from sloserve.sim.workload import FloatArray, Workload

# Outcome of a request: >= 0 the index of the pool that served it, else one of these.
PENDING = -1
REJECTED_OVERLOADED = -2
REJECTED_IMPOSSIBLE = -3
REJECTED_UNAVAILABLE = -4
DROPPED_DEADLINE = -5
DROPPED_UNLOADED = -6

REJECTIONS = {REJECTED_OVERLOADED: "overloaded", REJECTED_IMPOSSIBLE: "impossible", REJECTED_UNAVAILABLE: "unavailable"}
DROPS = {DROPPED_DEADLINE: "deadline", DROPPED_UNLOADED: "unloaded"}

_DONE, _READY, _TICK, _TIMER = 0, 1, 2, 3
_NOISE_BLOCK = 1 << 16
_MIN_SERVICE_MS = 1e-3
_LOAD_WINDOW_MS = LOOP_LOAD_WINDOW_S * 1000.0
_ARRIVALS_WINDOW_MS = ARRIVALS_WINDOW_S * 1000.0


@dataclass(frozen=True, slots=True)
class Trace:
    """Everything a run produced, for :mod:`sloserve.sim.report` to summarise."""

    config: SimConfig
    workload: Workload
    deadlines_ms: FloatArray
    outcome: np.ndarray[Any, np.dtype[np.int32]]
    finish_ms: FloatArray
    pools: tuple[PoolStats, ...]
    samples: tuple[tuple[float, tuple[int, ...]], ...]
    """(time_s, provisioned replicas per pool) at start and every autoscale tick."""
    decisions: tuple[tuple[float, ScaleDecision], ...]
    frontend_busy_ms: float
    """What the requests cost the front ends, together."""
    events: int
    wall_s: float


class Simulator:
    def __init__(self, families: Sequence[Family], workload: Workload, config: SimConfig) -> None:
        config.check()
        by_model = {f.model: f for f in families}
        missing = [m for m in workload.models if m not in by_model]
        if missing:
            raise InvalidArgumentError(f"the workload names model(s) {missing} that are not simulated")
        self.config = config
        self.workload = workload
        self.families = [by_model[m] for m in workload.models]
        multi = len(self.families) > 1
        self.pools: list[Pool] = []
        per_model: list[list[Pool]] = []
        for m, family in enumerate(self.families):
            per_model.append([])
            for pos, v in enumerate(family.variants):
                key = f"{family.model}/{v.id}" if multi else v.id
                pool = Pool(len(self.pools), key, m, pos, v, config)
                self.pools.append(pool)
                per_model[m].append(pool)
        self.slos = [c.slo for c in workload.classes]
        bounds = [c.slo.latency_ms for c in workload.classes if c.slo.latency_ms is not None]
        self.tightest_slo_ms = min(bounds) if bounds else None
        self.selector = Selector(per_model, self.slos, config.fast_selection)
        self.by_id = self.selector.by_id
        self.fleet = Fleet(
            config, self.pools, self.selector, self.tightest_slo_ms, self._replica_starting, self._strand_if_unserved
        )
        self.now = 0.0
        self.heap: list[tuple[float, int, int, Pool | None, Any]] = []
        self.seq = 0
        self.events = 0
        seeds = np.random.SeedSequence(config.seed).spawn(4)
        self.noise_rng = np.random.default_rng(seeds[1])
        self.noise: list[float] = []
        self.noise_at = 0
        n = len(workload)
        self.order: list[int] | None = None
        """The requests in the order their front ends hand them over, where that is not arrival order (several
        event loops); None: arrival order."""
        if config.frontend_wake_ms > 0:
            factors = frontend_service_ms(  # the machine's speed at each arrival, for its service and a wake-up
                workload.time_ms,
                1.0,
                config.frontend_speed_sigma,
                config.frontend_speed_window_ms,
                np.random.default_rng(seeds[2]),
            )
            workers = config.frontend_workers
            loops = np.random.default_rng(seeds[3]).integers(workers, size=n) if workers > 1 else None
            admitted_ms, costs = frontend_cycles_ms(
                workload.time_ms, config.frontend_ms * factors, config.frontend_wake_ms * factors, loops
            )
            if loops is not None:
                self.order = np.argsort(admitted_ms, kind="stable").tolist()
        else:
            costs = frontend_service_ms(
                workload.time_ms,
                config.frontend_ms,
                config.frontend_speed_sigma,
                config.frontend_speed_window_ms,
                np.random.default_rng(seeds[2]),
            )
            admitted_ms = frontend_exit_ms(workload.time_ms, costs, config.frontend_workers)
        varies = config.frontend_speed_sigma > 0 or config.frontend_wake_ms > 0
        self.frontend_costs: list[float] | None = costs.tolist() if varies else None
        """What each request cost its front end (the busy share's measure); None: ``frontend_ms`` each."""
        self.frontend_busy_ms = float(costs.sum())
        self.times: list[float] = admitted_ms.tolist()
        self._together: list[Pool] | None = None
        """While the requests a front end hands over together are admitted: the pools to dispatch after the last."""
        self.rows: list[int] = workload.rows.tolist()
        self.klass: list[int] = workload.klass.tolist()
        self.model: list[int] = workload.model.tolist()
        self.deadlines_arr = workload.deadlines_ms()
        self.deadlines: list[float] = (self.deadlines_arr + (admitted_ms - workload.time_ms)).tolist()
        self.out: list[int] = [PENDING] * n
        self.fin: list[float] = [math.nan] * n
        self.release: list[float] = []
        """Until when each request may wait for others to join its batch (set at admission)."""
        if config.policy.kind == "modelless" and config.max_slo_hold_ms > 0:
            self.release = self.times.copy()
        # The front end's busy share over 100 ms windows: the simulator's hold gate, the server's busy gate (it has
        # no event loop whose lag it could read, as the server's batcher also does: policy/batching.py).
        self.busy = 0.0
        self.busy_since = 0.0
        self.busy_ms = 0.0
        self.best_effort: set[int] = set()
        """Requests served best effort (queued by their predicted completion, never dropped)."""
        self.fifo_pool: Pool | None = None
        if config.policy.kind != "modelless":
            self.fifo_pool = self._fixed_pool(config)

    @property
    def cpus_free(self) -> int:
        return self.fleet.cpus_free

    # ---- set-up -------------------------------------------------------------

    def _fixed_pool(self, config: SimConfig) -> Pool:
        if len(self.families) != 1:
            raise InvalidArgumentError(f"--policy {config.policy.describe()} simulates a single model")
        wanted = config.policy.variant
        pool = self.by_id[0].get(wanted or "")
        if pool is None:
            known = ", ".join(self.by_id[0])
            raise InvalidArgumentError(f"--policy: no variant {wanted!r} in {self.families[0].model} ({known})")
        return pool

    # ---- the loop -----------------------------------------------------------

    def run(self) -> Trace:
        """Simulate until every request has its outcome (queues drain after the last arrival). Once."""
        started = time.perf_counter()
        self.fleet.start_initial(self.fifo_pool, len(self.families), self.slos)
        modelless = self.fifo_pool is None
        self.selector.start(self.now, self.cpus_free)
        self.fleet.sample(self.now)
        interval_ms = self.config.autoscale_interval_s * 1000.0
        if interval_ms <= self.workload.duration_s * 1000.0:
            self._push(interval_ms, _TICK, None, None)
        admit: Callable[[int, float], None] = self._admit if modelless else self._admit_fifo
        dispatch = self._dispatch_edf if modelless else self._dispatch_fifo
        times = self.times
        order = self.order
        heap = self.heap
        n = len(times)
        i = 0
        inf = math.inf
        while True:
            next_event = heap[0][0] if heap else inf
            if i < n and times[rid := i if order is None else order[i]] < next_event:
                self.now = t = times[rid]
                i += 1
                together = i < n and times[i if order is None else order[i]] == t
                if together and self._together is None:
                    self._together = []  # handed over together: batched together, once all are admitted
                admit(rid, t)
                if not together and self._together is not None:
                    together_pools, self._together = self._together, None
                    for admitted in dict.fromkeys(together_pools):
                        dispatch(admitted)
                continue
            if not heap:
                break
            t, _, kind, pool, payload = heappop(heap)
            self.now = t
            self.events += 1
            if pool is not None:  # an event may lower predictions: selections made before are stale
                self.selector.event(pool.model)
            if kind == _DONE:
                assert pool is not None
                self._done(pool, payload, modelless)
                dispatch(pool)
            elif kind == _TIMER:
                assert pool is not None
                dispatch(pool)
            elif kind == _READY:
                assert pool is not None
                if pool.starting and pool.starting[0] <= t:
                    pool.starting.popleft()
                    pool.ready += 1
                    pool.free += 1
                    self.selector.touch(pool)
                    dispatch(pool)
            else:
                self.selector.everything_changed()
                self._tick(modelless)
        self.events += n
        return Trace(
            self.config,
            self.workload,
            self.deadlines_arr,
            np.array(self.out, dtype=np.int32),
            np.array(self.fin, dtype=np.float64),
            tuple(p.stats(self.families[p.model].model) for p in self.pools),
            tuple(self.fleet.samples),
            tuple(self.fleet.decisions),
            self.frontend_busy_ms,
            self.events,
            time.perf_counter() - started,
        )

    def _push(self, t: float, kind: int, pool: Pool | None, payload: Any) -> None:
        self.seq += 1
        heappush(self.heap, (t, self.seq, kind, pool, payload))

    # ---- admission ----------------------------------------------------------

    def _frontend_busy(self, t: float) -> float:
        """The front ends' busy share over the last complete window (what the requests admitted in it cost)."""
        if t - self.busy_since >= _LOAD_WINDOW_MS:
            self.busy = self.busy_ms / (t - self.busy_since) / self.config.frontend_workers
            self.busy_since = t
            self.busy_ms = 0.0
        return self.busy

    def _admit(self, rid: int, t: float) -> None:
        """Admission at arrival: the variant select_variant chooses, or a refusal."""
        costs = self.frontend_costs
        self.busy_ms += self.config.frontend_ms if costs is None else costs[rid]
        m = self.model[rid]
        rows = self.rows[rid]
        k = self.klass[rid]
        selector = self.selector
        choice = selector.choose(m, k, rows, t, self.config.cpus - self.fleet.cpus_used)
        if type(choice) is not Choice:
            if not self.slos[k].best_effort:
                idle = selector.when_idle(m, k, rows, t, self.cpus_free)
                if type(idle) is Choice:
                    self.out[rid] = REJECTED_OVERLOADED
                    self.by_id[m][idle.variant].refused_rows += rows  # demand the autoscaler should see
                else:
                    self.out[rid] = REJECTED_IMPOSSIBLE
                return
            choice = selector.best_effort(m, k, rows, t, self.cpus_free)
            if not math.isfinite(choice.predicted_ms):
                self.out[rid] = REJECTED_UNAVAILABLE
                return
            # Served late rather than refused: queued by its predicted completion, never dropped.
            self.best_effort.add(rid)
            deadline = t + choice.predicted_ms
        else:
            deadline = self.deadlines[rid]
        pool = self.by_id[m][choice.variant]
        if pool.provisioned <= 0:
            if pool.variant.cpus > self.cpus_free:
                self.out[rid] = REJECTED_UNAVAILABLE
                return
            self.fleet.start(pool, 1, self.now)
        heappush(pool.edf, (deadline, rid))
        pool.queued_rows += rows
        if self.release:  # the batcher's arrival count, for whether holds gather anyone
            pool.arrived += 1
            if t - pool.arrivals_since >= _ARRIVALS_WINDOW_MS:
                elapsed_s = (t - pool.arrivals_since) / 1e3
                pool.quiet = 0 if holds_gather(pool.arrived, elapsed_s, self.config.max_slo_hold_ms) else pool.quiet + 1
                pool.gathers = pool.quiet < QUIET_WINDOWS
                pool.arrived, pool.arrivals_since = 0, t
        if self.release and rid not in self.best_effort:
            busy = self._frontend_busy(t)
            hold = hold_ms(
                self.deadlines[rid] - t,
                self.config.max_slo_hold_ms,
                pool.hold_scale * loop_hold_scale(busy),  # the server's busy gate (it has no lag)
                loop_room(busy),
            )
            if not pool.gathers:
                hold = 0.0
            self.release[rid] = release = t + hold
            pool.release_at = min(pool.release_at, release)
        pool.routed_rows += rows
        pool.selected += 1
        selector.admitted(pool)
        if pool.free:
            if self._together is not None:
                self._together.append(pool)
            else:
                self._dispatch_edf(pool)

    def _admit_fifo(self, rid: int, t: float) -> None:
        pool = self.fifo_pool
        assert pool is not None
        pool.fifo.append(rid)
        rows = self.rows[rid]
        pool.queued_rows += rows
        pool.routed_rows += rows
        pool.selected += 1
        if pool.free:
            if self._together is not None:
                self._together.append(pool)
            else:
                self._dispatch_fifo(pool)

    # ---- batches ------------------------------------------------------------

    def _service_ms(self, p: Pool, rows: int) -> float:
        if self.noise_at >= len(self.noise):
            sigma = self.config.noise_sigma
            block = self.noise_rng.lognormal(0.0, sigma, _NOISE_BLOCK) if sigma > 0 else np.ones(_NOISE_BLOCK)
            self.noise = block.tolist()
            self.noise_at = 0
        factor = self.noise[self.noise_at]
        self.noise_at += 1
        return max(p.base.predict_ms(rows) * self.config.slowdown * factor, _MIN_SERVICE_MS)

    def _held_until(self, p: Pool) -> float:
        """When the batch waiting on ``p`` stops waiting for more (the batcher's window): the earliest
        release queued, never past the last moment a full batch still makes the head's deadline."""
        if p.release_at != p.release_at:  # nan: requests left the queue since it was known
            release = self.release
            p.release_at = min([release[rid] for _, rid in p.edf], default=math.inf)
        return min(p.release_at, p.edf[0][0] - p.live.predict_ms(max(p.queued_rows, p.limit)))

    def _dispatch_edf(self, p: Pool) -> None:
        q = p.edf
        if not (p.free and q):
            return
        t = self.now
        rows = self.rows
        out = self.out
        live = p.live
        hold = bool(self.release)
        while p.free and q:
            deadline, rid = q[0]
            while expired(t, deadline, rows[rid], live) and rid not in self.best_effort:
                heappop(q)
                p.queued_rows -= rows[rid]
                p.release_at = math.nan
                out[rid] = DROPPED_DEADLINE
                p.drops += 1
                p.hold_scale = hold_scale_update(p.hold_scale, True)
                if not q:
                    break
                deadline, rid = q[0]
            if not q:
                break
            if hold and p.queued_rows < p.limit:
                until = self._held_until(p)
                if until > t:
                    if p.timer_at != until:
                        p.timer_at = until
                        self._push(until, _TIMER, p, None)
                    break
            entries: list[tuple[float, int]] = []
            taken = 0
            while q and (not entries or taken < p.limit):
                entry = heappop(q)
                r = entry[1]
                if expired(t, entry[0], rows[r], live) and r not in self.best_effort:
                    p.queued_rows -= rows[r]
                    p.release_at = math.nan
                    out[r] = DROPPED_DEADLINE
                    p.drops += 1
                    p.hold_scale = hold_scale_update(p.hold_scale, True)
                    continue
                entries.append(entry)
                taken += rows[r]
            if not entries:
                break
            if len(entries) > 1:
                n = batch_take([d for d, _ in entries], [rows[r] for _, r in entries], t, p.limit, live)
                for entry in entries[n:]:
                    heappush(q, entry)
                entries = entries[:n]
                taken = sum([rows[r] for _, r in entries])
            batch = [r for _, r in entries]
            p.release_at = math.nan if q else math.inf
            # AIMD judges a batch by the tightest SLO it was promised (best-effort deadlines are no promise)
            deadlines, times, best = self.deadlines, self.times, self.best_effort
            budget = min([deadlines[r] - times[r] for r in batch if not best or r not in best], default=math.inf)
            self._start_batch(p, batch, taken, budget)
        self.selector.touch(p)

    def _dispatch_fifo(self, p: Pool) -> None:
        q = p.fifo
        t = self.now
        rows = self.rows
        max_batch = p.variant.max_batch
        timeout = self.config.policy.timeout_ms
        while p.free and q:
            if timeout > 0 and p.queued_rows < max_batch:
                due = self.times[q[0]] + timeout
                if t < due:
                    if p.timer_at != due:
                        p.timer_at = due
                        self._push(due, _TIMER, p, None)
                    return
            batch = [q.popleft()]
            taken = rows[batch[0]]
            while q and taken + rows[q[0]] <= max_batch:
                rid = q.popleft()
                batch.append(rid)
                taken += rows[rid]
            self._start_batch(p, batch, taken, math.inf)

    def _start_batch(self, p: Pool, batch: list[int], rows: int, budget_ms: float) -> None:
        """``budget_ms``: the tightest latency SLO among the batch's requests (inf: none)."""
        times = self.times
        p.queue_wait_ms += len(batch) * self.now - sum([times[rid] for rid in batch])
        p.queue_waits += len(batch)
        p.queued_rows -= rows
        p.free -= 1
        p.busy += 1
        p.running_ms += p.live.predict_ms(rows)
        service = self._service_ms(p, rows)
        self.seq += 1
        heappush(self.heap, (self.now + service, self.seq, _DONE, p, (batch, budget_ms, rows, service)))

    def _done(self, p: Pool, payload: tuple[list[int], float, int, float], modelless: bool) -> None:
        batch, budget_ms, rows, service = payload
        t = self.now
        p.busy -= 1
        p.running_ms = max(0.0, p.running_ms - p.live.predict_ms(rows)) if p.busy else 0.0
        if p.retiring:
            p.retiring -= 1
            self.fleet.leave(p)
        else:
            p.free += 1
        out = self.out
        fin = self.fin
        index = p.index
        for rid in batch:
            out[rid] = index
            fin[rid] = t
        p.batches += 1
        p.served_rows += rows
        p.busy_ms += service
        if modelless:
            too_slow = batch_too_slow(service, budget_ms if budget_ms != math.inf else None)
            p.limit = aimd_update(p.limit, too_slow, p.aimd)
            if budget_ms != math.inf:
                released, deadlines, best = self.release or self.times, self.deadlines, self.best_effort
                near = any(
                    t > near_miss_after(released[rid], deadlines[rid]) for rid in batch if not best or rid not in best
                )
                p.hold_scale = hold_scale_update(p.hold_scale, near)
            predicted = max(p.base.predict_ms(rows), _MIN_SERVICE_MS)
            p.correction += self.config.correction_alpha * (service / predicted - p.correction)
            p.live = LatencyModel(p.base.intercept_ms * p.correction, p.base.per_row_ms * p.correction)
            self.selector.touch(p)
            self.selector.corrected(p)

    # ---- replicas and autoscaling -------------------------------------------

    def _replica_starting(self, ready_at: float, p: Pool) -> None:
        self._push(ready_at, _READY, p, None)

    def _strand_if_unserved(self, p: Pool) -> None:
        """With no replica up or coming, the requests queued on ``p`` are dropped (``unloaded``)."""
        if p.ready == 0 and not p.starting and p.edf:
            for _, rid in p.edf:
                self.out[rid] = DROPPED_UNLOADED
            p.drops += len(p.edf)
            p.edf.clear()
            p.queued_rows = 0
            p.release_at = math.inf

    def _tick(self, modelless: bool) -> None:
        if modelless:
            self.fleet.autoscale(self.now)
        self.fleet.sample(self.now)
        next_ms = self.now + self.config.autoscale_interval_s * 1000.0
        if next_ms <= self.workload.duration_s * 1000.0 + 1e-9:
            self._push(next_ms, _TICK, None, None)
