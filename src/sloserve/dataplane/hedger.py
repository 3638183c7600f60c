"""The live state hedging decisions are made from, for one running version.

:class:`Hedger` keeps the version's recent batch latencies (per size class) and
their slowly moving baseline medians, each replica's recent slowness, the
budget's tokens and counts of what hedging did, and asks
:mod:`sloserve.policy.hedging` what to do. The race itself (primary, timer,
backup, first answer wins) is :meth:`ReplicaSet.execute
<sloserve.dataplane.replica_set.ReplicaSet.execute>`.

Samples are batch latencies from dispatch to answer, normalized by nothing but
grouped by batch size class: a per-row normalization would make a 1-row batch,
dominated by the fixed transfer cost, look 64 times slower than a 64-row one. A
primary cancelled because its backup won is recorded with the time it had run
when cancelled, a lower bound of its latency: dropping it would leave the
stragglers out of the window and pull the quantile down, so hedges would fire
ever earlier.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from sloserve.clock import Clock
from sloserve.model_config import HedgingConfig
from sloserve.policy.hedging import (
    BackupCandidate,
    HedgeParams,
    HedgeVerdict,
    LatencyWindow,
    decide_hedge,
    earn,
    follow_baseline,
    hedge_delay,
    size_class,
    slowness,
    trusted_window,
)
from sloserve.types import ReplicaId

HedgeListener = Callable[[str], None]
"""Told ``"fired"``, ``"won"``, ``"lost"`` (the original answered first) and ``"cancelled"`` (a loser)."""

_RATIOS_PER_REPLICA = 5


@dataclass(slots=True)
class HedgeCounts:
    batches: int = 0
    fired: int = 0
    won: int = 0
    lost: int = 0
    cancelled: int = 0
    skipped_all_slow: int = 0
    skipped_no_budget: int = 0
    skipped_no_replica: int = 0


class Hedger:
    def __init__(
        self,
        config: HedgingConfig,
        clock: Clock,
        params: HedgeParams | None = None,
        listener: HedgeListener | None = None,
    ) -> None:
        self.params = params if params is not None else HedgeParams.from_config(config)
        self._clock = clock
        self._listener = listener
        self._windows: dict[int, LatencyWindow] = {}
        self._baselines: dict[int, tuple[float, float]] = {}  # size class -> (baseline median, when)
        self._ratios: dict[ReplicaId, deque[float]] = {}
        self._tokens = 0.0
        self.counts = HedgeCounts()

    @property
    def tokens(self) -> float:
        return self._tokens

    def batch_started(self, rows: int) -> float | None:
        """Count a batch and earn its tokens; the seconds after which it should first be
        considered for a backup (None: never, its size class has no trusted latencies yet)."""
        self.counts.batches += 1
        self._tokens = earn(self._tokens, self.params)
        return hedge_delay(trusted_window(self._windows, rows, self.params.min_samples), self.params)

    def observe(self, replica: ReplicaId, rows: int, latency_s: float) -> None:
        """A batch of ``rows`` rows took ``latency_s`` on ``replica`` (or at least that long)."""
        cls = size_class(rows)
        window = self._windows.get(cls)
        if window is None:
            window = self._windows[cls] = LatencyWindow(self.params.window)
        if len(window) >= self.params.min_samples:
            now = self._clock.now()
            previous = self._baselines.get(cls)
            if previous is None:
                baseline = follow_baseline(None, window.quantile(0.5), 0.0, self.params)
            else:
                baseline = follow_baseline(previous[0], window.quantile(0.5), now - previous[1], self.params)
            self._baselines[cls] = (baseline, now)
            if baseline > 0:
                ratios = self._ratios.get(replica)
                if ratios is None:
                    ratios = self._ratios[replica] = deque(maxlen=_RATIOS_PER_REPLICA)
                ratios.append(latency_s / baseline)
        window.add(latency_s)

    def slowness(self, replica: ReplicaId) -> float:
        return slowness(tuple(self._ratios.get(replica, ())))

    def choose_backup(self, candidates: Sequence[tuple[ReplicaId, int]], check: int = 1) -> int | None:
        """Given (replica, outstanding batches) of the replicas that could take a backup now, the index
        of the one that gets it, spending a token; None when there is no hedge. ``check`` counts the
        times this batch has been considered (1: at its delay)."""
        options = [BackupCandidate(load, self.slowness(replica)) for replica, load in candidates]
        decision = decide_hedge(self._tokens, options, self.params, check)
        verdict = decision.verdict
        if verdict is HedgeVerdict.FIRE:
            self._tokens -= 1.0
            self.counts.fired += 1
            self._tell("fired")
            return decision.backup
        if verdict is HedgeVerdict.ALL_SLOW:
            self.counts.skipped_all_slow += 1
        elif verdict is HedgeVerdict.NO_BUDGET:
            self.counts.skipped_no_budget += 1
        else:
            self.counts.skipped_no_replica += 1
        return None

    def outcome(self, won: bool) -> None:
        """A hedged batch was answered, first by the backup (``won``) or by the original."""
        if won:
            self.counts.won += 1
        else:
            self.counts.lost += 1
        self._tell("won" if won else "lost")

    def loser_cancelled(self) -> None:
        self.counts.cancelled += 1
        self._tell("cancelled")

    def _tell(self, event: str) -> None:
        if self._listener is not None:
            self._listener(event)
