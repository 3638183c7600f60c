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

``hold_ms`` is how long a request with a latency SLO may wait for others to join
its batch while a replica is free: a share of its SLO beyond a reserve for the
latency tail, capped, times a *hold scale* in [0, 1]. A batch has a fixed cost (the
intercept of its latency model, and the front end's and the worker's handling,
which the profile does not see) that a batch of one pays whole: at low load,
holding the requests of a loose class for a millisecond or two makes batches of
several and costs less CPU per query. A tight class has slack only while the
serving process's event loop has *room* (:func:`loop_room`, the busy gate below): its tail
under load is what misses, so the reserve and the share of the budget a hold may take go from
:data:`ROOMY_RESERVE_MS` and :data:`ROOMY_HOLD_FRACTION` (a 5 ms class held 2 ms, as long as a
plain 2 ms batching window) on a loop at most 75% busy to :data:`HOLD_RESERVE_MS` and
:data:`SLO_HOLD_FRACTION` (a 5 ms class not held) on one 85% busy. The scale is AIMD too
(``hold_scale_update``): it halves after a batch in which a request, once its hold was over,
took more than ``NEAR_MISS_SHARE`` of the budget it had left (close enough to its deadline that
the time the batcher cannot see, answering and the network, may push it over) and creeps back
after batches that finished well within; and it is zero while the serving process's
event loop runs ``LAG_NO_HOLD_MS`` behind (``lag_hold_scale``: the loop's own
queueing, which the batcher cannot see either, then takes the slack), and while it is
``LOOP_BUSY_NO_HOLD`` busy (``loop_hold_scale``: its turns gather big batches without
holds, and a hold's timer costs more than it saves; the simulator, which has no loop
to run behind, gates its holds by this alone).
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


SLO_HOLD_FRACTION = 0.2
"""The share of its latency SLO beyond :data:`HOLD_RESERVE_MS` a request may wait for its batch to grow
(capped by the model's ``max_slo_hold_us``)."""
HOLD_RESERVE_MS = 5.0
"""The part of every SLO a hold never spends on a busy event loop: the latency tail a one-loop server shows
under load (p99 3-8 ms on 2 cores at 40% of capacity) is there whatever the SLO, so a 5 ms class is not held."""
ROOMY_RESERVE_MS = 1.0
ROOMY_HOLD_FRACTION = 0.5
"""Reserve and share of the budget while the event loop has room (:func:`loop_room`): a 5 ms class is held 2 ms,
as long as `maxbatch`'s 2 ms window (`benchmarks/slo.py`), where a batch's fixed cost is most of a query's (each
batch is a wake-up of the loop, its timer and its answers'). This once applied only while the loop mostly
idled (up to 35-45% busy), with a 3 ms reserve (a 5 ms class held 1 ms) up to 65-75%; once HTTP answers were
written from the batch's own turn, held so up to 75% (`benchmarks/paired.py`, `digits`, 8 reps against the
tiers): at 40% of capacity (10,700 queries/s) 31.3 against 19.5 rows a batch, -2.3 µs of server CPU a query
(cheaper in 7 of 8), 99.68% within SLO (lowest rep 99.47%) against 99.85%; at 60% (16,000) 46.2 against 12.7
rows, -5.0 µs (8 of 8), 99.58% (lowest 98.69%) against 99.70% (lowest 99.13%); at 80% (21,300), where the loop
is past 85% busy, 17.4 against 17.3 rows, 99.16% against 99.44%, each decided by two bad reps against one."""


NEAR_MISS_SHARE = 0.5
"""A request that finished after this share of the latency budget left it when its hold ended came near
missing it: a 5 ms request held 1 ms, after 3 ms (as 0.6 of the whole budget was, before holds grew); held
2 ms, after 3.5 ms. Judged on the whole budget, a 2 ms hold made nearly every tight request a near miss and
the scale halved it away (10-12 rows a batch at 20% of capacity instead of 14)."""
HOLD_INCREASE = 0.02
HOLD_DECREASE = 0.5


MIN_HOLD_MS = 0.5
"""A shorter hold is none: the event loop's timers have a resolution of a millisecond."""


def hold_ms(budget_ms: float, max_hold_ms: float, scale: float = 1.0, room: float = 0.0) -> float:
    """How long a request with ``budget_ms`` of latency SLO may be held for others to join its batch, while the
    event loop has ``room`` in [0, 1] (:func:`loop_room`)."""
    reserve, fraction = _reserve_and_fraction(room)
    hold = scale * min(max_hold_ms, fraction * (budget_ms - reserve))
    return hold if hold >= MIN_HOLD_MS else 0.0


ARRIVALS_WINDOW_S = 0.05
"""How long the batcher counts arrivals for :func:`holds_gather` before it decides again."""
QUIET_WINDOWS = 2
"""Holds stop after this many windows in a row in which they would gather nobody: one alone may be a stall (the
host stopped the server, or the client, and the window's arrivals were read after it), and at 5,600 queries/s
the windows after one stall each went unheld (`digits`, paired, 8 reps: 16.2-16.4 rows a batch against 16.7,
in every rep)."""


def holds_gather(arrivals: int, elapsed_s: float, max_hold_ms: float) -> bool:
    """Whether requests with a deadline are held at all: whether at the rate ``arrivals`` came over the last
    ``elapsed_s`` at least one request is expected to join a batch during a whole hold (``max_hold_ms``).

    A hold that gathers nobody saves no batch, adds its wait to the request's latency, and runs the batch from a
    timer that wakes the event loop again, where without it the batch runs in the turn that read the request: on
    this VM a wake-up of an idle loop costs about a batch's own work (caches gone cold), so holding pays once a
    hold expects one more request. Below that (500 queries/s a variant with the 2 ms default) a lone query on a
    quiet server is answered at once, not 2 ms later (at 50/s, ~1 ms p50 against ~3); at the benchmark's loads
    (2,800/s and up) it changes nothing. Paired (`benchmarks/paired.py`, `digits`, model-less, 8 reps), holding
    against not: +40 µs of server CPU a query at 200/s (2 of 8 reps cheaper), -3 at 500 (5 of 8), -15 at 1,000
    (6 of 8)."""
    return arrivals * max_hold_ms >= 1e3 * elapsed_s


def holdable_ms(room: float) -> float:
    """The least budget :func:`hold_ms` gives a hold to (at full scale and no cap) with ``room``: a tighter
    request is not held, and the batcher spares working out by how much."""
    reserve, fraction = _reserve_and_fraction(room)
    return reserve + MIN_HOLD_MS / fraction


def _reserve_and_fraction(room: float) -> tuple[float, float]:
    reserve = HOLD_RESERVE_MS + room * (ROOMY_RESERVE_MS - HOLD_RESERVE_MS)
    return reserve, SLO_HOLD_FRACTION + room * (ROOMY_HOLD_FRACTION - SLO_HOLD_FRACTION)


LOOP_LOAD_WINDOW_S = 0.1
"""The window over which the event loop's busy share is measured."""
LOOP_BUSY_FULL_HOLD = 0.75
LOOP_BUSY_NO_HOLD = 0.85
"""Every hold shrinks from whole to none as the event loop goes from 75% of a core busy to 85% (the server gates
by its lag too: :func:`lag_hold_scale`; the simulator, with no loop to run behind, by its front end's busy share
alone). So busy, the loop's turns gather batches of 15-17 rows without holds (`digits` at ~80% of capacity, the
loop 85-95% busy), and a hold's timer and window cost more than the row or two it adds. At 80% of `digits`'
capacity (21,300 queries/s; `benchmarks/paired.py`, 8 reps) holding nothing (``max_slo_hold_us`` 0) was
0.7 µs of server CPU a query cheaper in 8 of 8 reps at 98.70% within SLO against 98.71%; this gate, at 20,000
queries/s, 0.5 µs cheaper at 98.96% against 98.57% (better in 6 of 8 reps); at 60% (15,000, the loop 70-76%
busy) it left the holds as they were (13.6 against 14.0 rows, 99.78% against 99.74%). It was at 90-100%, for
the simulator only."""


def loop_hold_scale(busy: float) -> float:
    """The share of their hold requests get while the event loop (the simulator's front end) is ``busy`` (CPU s
    per s), in [0, 1]."""
    return min(1.0, max(0.0, (LOOP_BUSY_NO_HOLD - busy) / (LOOP_BUSY_NO_HOLD - LOOP_BUSY_FULL_HOLD)))


def loop_room(busy: float) -> float:
    """The room the event loop has for holding tight classes when it is ``busy`` (CPU s per s), in [0, 1]
    (:func:`hold_ms`): :func:`loop_hold_scale`, whole up to 75% of a core busy and none from 85%. At 20% of
    `digits`' capacity the loop runs ~30% busy, at 40% ~50%, at 60% 70-76%, at 80% 85-95% (the server's CPU a
    query times the rate, an upper bound of the loop thread's share). It went from whole to none between 65%
    and 75% before (a 3 ms reserve), and the reserve fell to 1 ms only up to 35-45% (see
    :data:`ROOMY_RESERVE_MS`)."""
    return loop_hold_scale(busy)


LAG_FULL_HOLD_MS = 0.25
LAG_NO_HOLD_MS = 1.0
"""Holds shrink from whole to none as the server's event loop goes from running 0.25 ms behind to this
(:class:`~sloserve.dataplane.loop_load.LoopLag`): the loop's own queueing measured where it happens, which a
CPU share only hints at (on this 2-core machine, with the load generator beside it, the loop was 65% busy at
20% of capacity in a slow hour and idle enough to hold at 40% in a fast one)."""


def lag_hold_scale(lag_ms: float) -> float:
    """The share of their hold requests get while the event loop runs ``lag_ms`` behind."""
    return min(1.0, max(0.0, (LAG_NO_HOLD_MS - lag_ms) / (LAG_NO_HOLD_MS - LAG_FULL_HOLD_MS)))


def near_miss_after(released: float, deadline: float) -> float:
    """The moment after which an answer to a request whose hold ended at ``released`` came near its ``deadline``
    (any one unit of time): the batcher works it out once, at arrival."""
    return released + NEAR_MISS_SHARE * (deadline - released)


def hold_scale_update(scale: float, any_near_miss: bool) -> float:
    """The next hold scale after a batch with (or without) a request that came near its deadline."""
    if any_near_miss:
        return scale * HOLD_DECREASE
    return min(1.0, scale + HOLD_INCREASE)


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
    if total_rows <= limit and deadlines_ms[0] >= now_ms + model.predict_ms(total_rows):
        return len(deadlines_ms)  # all of them in one batch loses none: the usual case, spared the search
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
