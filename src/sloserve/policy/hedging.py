"""When to send a backup of a slow batch to another replica ("The Tail at Scale").

A batch still running after its version's live ``quantile`` latency (p95 by
default) gets a backup on another replica, if all of these hold:

- **budget**: a token bucket earns ``budget`` tokens per batch (capped at
  ``burst``) and a hedge costs one, so hedges never exceed ``budget`` times the
  batches, whatever else happens;
- **a backup can be faster**: some other replica has a free slot and is not
  itself slow. A replica's *slowness* is the median of its recent latency ratios:
  a batch's latency over the *baseline* median of its size class, a median that
  follows the live one slowly (time constant ``baseline_s``). When every
  candidate is ``slow_factor`` times slower than that, every replica is slow (an
  outage, an overload): a backup would only add load, so there is none, until
  the slowness passes or lasts long enough to become the new baseline.

A batch whose check finds no backup (no free slot, no token, all slow) is
checked again after twice the delay, up to ``checks`` times: a true straggler
is still running then, while the ordinary tail is done. The first check may
only spend tokens above ``reserve``; later checks may spend the reserve too. So
when the ordinary tail alone would use up the budget, the batches that have
outlived their quantile longest, the likely stragglers, still get backups.

The delay is the quantile, but never more than ``max_delay_factor`` times the
median: when stragglers are more than ``1 - quantile`` of the batches, the
quantile *is* a straggler's latency and nothing would ever be hedged; a batch
five times slower than the median is late whatever the quantile says.

Latency depends on batch size, so samples are kept per size class (powers of
two: 1, 2-3, 4-7, ...), each a window of the last ``window`` batches. A class
with too few samples borrows the nearest larger class that has enough (larger
batches are slower: the delay errs long, so a cold class hedges less, never
more); with none, there is no hedge.

Everything here is pure: state in, decision (and new state) out; the caller
(``dataplane/hedger.py``) owns the clock and the replicas.
"""

from __future__ import annotations

import enum
import math
from collections.abc import Sequence
from dataclasses import dataclass

from sloserve.model_config import HedgingConfig


@dataclass(frozen=True, slots=True)
class HedgeParams:
    quantile: float = 0.95
    budget: float = 0.05
    """Hedges per batch, at most (a token per 1/budget batches)."""
    burst: float = 5.0
    """Most tokens saved up for a burst of stragglers."""
    min_samples: int = 20
    """Batches of a size class seen before its quantile is trusted."""
    window: int = 256
    """Recent batches kept per size class."""
    max_delay_factor: float = 5.0
    """Hedge no later than this many times the median, whatever the quantile."""
    min_delay_s: float = 0.001
    """Never hedge sooner: the server loop's (uvloop) timers have millisecond resolution, and a
    shorter delay would fire at once, hedging batches that are not late at all."""
    slow_factor: float = 3.0
    baseline_s: float = 30.0
    """Time constant over which the baseline median follows the live one."""
    checks: int = 4
    """Times a running batch is considered for a backup (after the delay, then doubling)."""
    reserve: float = 2.0
    """Tokens only a batch's second and later checks may spend (below ``burst``, or first checks never fire)."""

    @classmethod
    def from_config(cls, config: HedgingConfig) -> HedgeParams:
        return cls(quantile=config.quantile, budget=config.budget)


def size_class(rows: int) -> int:
    """The power-of-two class of a batch of ``rows`` rows: 1 → 1, 2-3 → 2, 4-7 → 3, ..."""
    return max(1, rows).bit_length()


class LatencyWindow:
    """The last ``size`` latencies, with quantiles from a sorted copy refreshed every ``refresh`` samples."""

    __slots__ = ("_next", "_refresh", "_size", "_sorted", "_stale", "_values")

    def __init__(self, size: int, refresh: int = 16) -> None:
        self._values: list[float] = []
        self._size = size
        self._next = 0
        self._refresh = refresh
        self._sorted: list[float] = []
        self._stale = 0

    def __len__(self) -> int:
        return len(self._values)

    def add(self, value: float) -> None:
        if len(self._values) < self._size:
            self._values.append(value)
        else:
            self._values[self._next] = value
            self._next = (self._next + 1) % self._size
        self._stale += 1

    def quantile(self, q: float) -> float:
        """Nearest-rank ``q`` quantile of the window (0.0 when empty)."""
        if self._stale >= self._refresh or len(self._sorted) != len(self._values) or not self._sorted:
            self._sorted = sorted(self._values)
            self._stale = 0
        n = len(self._sorted)
        if n == 0:
            return 0.0
        return self._sorted[min(n - 1, max(0, math.ceil(q * n) - 1))]


def trusted_window(windows: dict[int, LatencyWindow], rows: int, min_samples: int) -> LatencyWindow | None:
    """The window to judge a ``rows``-row batch by: its class's, else the nearest larger trusted one."""
    cls = size_class(rows)
    own = windows.get(cls)
    if own is not None and len(own) >= min_samples:
        return own
    larger = [c for c, w in windows.items() if c > cls and len(w) >= min_samples]
    return windows[min(larger)] if larger else None


def hedge_delay(window: LatencyWindow | None, params: HedgeParams) -> float | None:
    """Seconds after which a batch judged by ``window`` gets a backup; None: no hedge."""
    if window is None:
        return None
    delay = min(window.quantile(params.quantile), params.max_delay_factor * window.quantile(0.5))
    return max(params.min_delay_s, delay)


# ---------------------------------------------------------------- budget


def earn(tokens: float, params: HedgeParams) -> float:
    """Tokens after one more batch."""
    return min(params.burst, tokens + params.budget)


# ---------------------------------------------------------------- slowness


def follow_baseline(baseline: float | None, live_median: float, elapsed_s: float, params: HedgeParams) -> float:
    """The baseline median after ``elapsed_s`` seconds in which the live median was ``live_median``."""
    if baseline is None:
        return live_median
    step = min(1.0, max(0.0, elapsed_s) / params.baseline_s)
    return baseline + (live_median - baseline) * step


def slowness(ratios: Sequence[float]) -> float:
    """How much slower than usual a replica is now: the median of its recent latency ratios (1.0 if none)."""
    if not ratios:
        return 1.0
    ordered = sorted(ratios)
    n = len(ordered)
    mid = n // 2
    return ordered[mid] if n % 2 else (ordered[mid - 1] + ordered[mid]) / 2


# ---------------------------------------------------------------- the decision


class HedgeVerdict(enum.Enum):
    FIRE = "fire"
    NO_REPLICA = "no_replica"
    """No other healthy replica has a free slot."""
    ALL_SLOW = "all_slow"
    """Every replica that could take the backup is itself slow."""
    NO_BUDGET = "no_budget"


@dataclass(frozen=True, slots=True)
class BackupCandidate:
    load: int
    """Batches outstanding on it."""
    slowness: float


@dataclass(frozen=True, slots=True)
class HedgeDecision:
    verdict: HedgeVerdict
    backup: int | None = None
    """Index into the candidates when the verdict is FIRE."""


def decide_hedge(
    tokens: float, candidates: Sequence[BackupCandidate], params: HedgeParams, check: int = 1
) -> HedgeDecision:
    """Whether a batch that has outlived its hedge delay gets a backup at its ``check``-th look (1: at the
    delay), and on which candidate.

    The backup goes to the least loaded candidate that is not slow (the less slow on a tie).
    """
    if not candidates:
        return HedgeDecision(HedgeVerdict.NO_REPLICA)
    usable = [i for i, c in enumerate(candidates) if c.slowness < params.slow_factor]
    if not usable:
        return HedgeDecision(HedgeVerdict.ALL_SLOW)
    if tokens < 1.0 + (params.reserve if check <= 1 else 0.0):
        return HedgeDecision(HedgeVerdict.NO_BUDGET)
    best = min(usable, key=lambda i: (candidates[i].load, candidates[i].slowness))
    return HedgeDecision(HedgeVerdict.FIRE, best)
