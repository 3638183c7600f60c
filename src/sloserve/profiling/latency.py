"""Latency statistics for the profiler: sampling, percentiles, noise, the latency fit.

Pure functions (time comes from an injected :class:`~sloserve.clock.Clock`),
unit-tested with a fake clock; :mod:`sloserve.profiling.profiler` runs them
against a worker.

A sample is *noisy* when its coefficient of variation is above
``ProfileSettings.max_cv`` or its p99 is more than :data:`MAX_TAIL_RATIO` times
its p50; it is sampled again, up to ``max_attempts`` times, and the least noisy
attempt is kept.
"""

from __future__ import annotations

import math
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Final, Protocol

import numpy as np

from sloserve.clock import Clock
from sloserve.errors import InvalidArgumentError
from sloserve.variant import LatencyStats

MAX_TAIL_RATIO: Final = 5.0
"""A sample whose p99 exceeds this many times its p50 is noisy."""
MIN_SAMPLES_WHEN_SLOW: Final = 5
"""Samples always taken at a batch size, even past ``max_seconds_per_batch``."""


class SamplingSettings(Protocol):
    """What sampling reads from :class:`~sloserve.profiling.profiler.ProfileSettings`."""

    @property
    def min_samples(self) -> int: ...
    @property
    def seconds_per_batch(self) -> float: ...
    @property
    def max_seconds_per_batch(self) -> float: ...
    @property
    def max_cv(self) -> float: ...
    @property
    def max_attempts(self) -> int: ...


@dataclass(frozen=True, slots=True)
class LatencyMeasurement:
    stats: LatencyStats
    mean_ms: float
    cv: float
    """Standard deviation over mean."""
    samples: int


def summarize_latencies(samples_ms: Sequence[float]) -> LatencyMeasurement:
    """Percentiles (linear interpolation), mean and coefficient of variation of a sample."""
    if not samples_ms:
        raise InvalidArgumentError("no latency samples to summarize")
    values = np.asarray(samples_ms, dtype=np.float64)
    p50, p95, p99 = (float(v) for v in np.percentile(values, [50, 95, 99]))
    mean = float(values.mean())
    cv = float(values.std() / mean) if mean > 0 else 0.0
    return LatencyMeasurement(LatencyStats(p50, max(p50, p95), max(p50, p95, p99)), mean, cv, len(values))


def noise_score(measurement: LatencyMeasurement, max_cv: float) -> float:
    """How noisy a sample is: above 1 means too noisy to keep without trying again."""
    stats = measurement.stats
    tail = stats.p99_ms / stats.p50_ms if stats.p50_ms > 0 else 1.0
    return max(measurement.cv / max_cv, tail / MAX_TAIL_RATIO)


def fit_latency(p50_by_batch: Mapping[int, float]) -> tuple[float, float]:
    """Least squares ``latency(b) ~ intercept + per_row * b``, both non-negative (ms, ms per row).

    With one batch size the whole latency is the intercept.
    """
    if not p50_by_batch:
        raise InvalidArgumentError("no latencies to fit")
    b = np.array(sorted(p50_by_batch), dtype=np.float64)
    y = np.array([p50_by_batch[int(k)] for k in b], dtype=np.float64)
    if len(b) == 1:
        return max(0.0, float(y[0])), 0.0
    slope, intercept = (float(v) for v in np.polyfit(b, y, 1))
    if slope < 0:  # latency falling with batch size is noise: a flat line
        return max(0.0, float(y.mean())), 0.0
    if intercept < 0:  # through the origin
        return 0.0, max(0.0, float(b @ y / (b @ b)))
    return intercept, slope


def best_batch(latency: Mapping[int, LatencyStats]) -> int:
    """The batch size with the most rows per second at its p50 (the smaller on a tie)."""
    if not latency:
        raise InvalidArgumentError("no latencies to choose a batch size from")
    return max(sorted(latency), key=lambda b: b / latency[b].p50_ms if latency[b].p50_ms > 0 else math.inf)


def default_batch_sizes(max_batch_size: int) -> tuple[int, ...]:
    """1, 2, 4, ... up to ``max_batch_size``, and ``max_batch_size`` itself (1 for an unbatched model)."""
    if max_batch_size <= 1:
        return (1,)
    sizes = [1 << i for i in range(max_batch_size.bit_length()) if 1 << i <= max_batch_size]
    if sizes[-1] != max_batch_size:
        sizes.append(max_batch_size)
    return tuple(sizes)


Call = Callable[[], Awaitable[object]]


async def sample_latencies(
    calls: Mapping[int, Call], settings: SamplingSettings, clock: Clock
) -> dict[int, list[float]]:
    """Time every call, one at a time, in rounds (one call of each per round).

    Interleaving spreads any drift of the machine (another process waking up,
    frequency changes) over every batch size alike instead of bending the curve.
    Rounds go on until there are ``min_samples`` of them and ``seconds_per_batch``
    per call has passed, or ``max_seconds_per_batch`` per call (with at least
    :data:`MIN_SAMPLES_WHEN_SLOW` rounds) for slow models.
    """
    samples: dict[int, list[float]] = {key: [] for key in calls}
    started = clock.now()
    rounds = 0
    while True:
        for key, call in calls.items():
            before = clock.now()
            await call()
            samples[key].append((clock.now() - before) * 1000.0)
        rounds += 1
        elapsed = (clock.now() - started) / max(1, len(calls))
        if rounds >= settings.min_samples and elapsed >= settings.seconds_per_batch:
            return samples
        if rounds >= MIN_SAMPLES_WHEN_SLOW and elapsed >= settings.max_seconds_per_batch:
            return samples


async def measure_latencies(
    calls: Mapping[int, Call], settings: SamplingSettings, clock: Clock
) -> dict[int, tuple[LatencyMeasurement, int]]:
    """Each call's latency and the number of attempts it took.

    Every call is sampled; the noisy ones (:func:`noise_score` above 1) are sampled
    again, together, up to ``max_attempts`` times in all, and each keeps its least
    noisy attempt.
    """
    best: dict[int, LatencyMeasurement] = {}
    attempts: dict[int, int] = {}
    pending = list(calls)
    for attempt in range(1, settings.max_attempts + 1):
        sampled = await sample_latencies({key: calls[key] for key in pending}, settings, clock)
        for key, values in sampled.items():
            measurement = summarize_latencies(values)
            attempts[key] = attempt
            if key not in best or noise_score(measurement, settings.max_cv) < noise_score(best[key], settings.max_cv):
                best[key] = measurement
        pending = [key for key in pending if noise_score(best[key], settings.max_cv) > 1.0]
        if not pending:
            break
    return {key: (best[key], attempts[key]) for key in calls}
