"""The profiler's statistics: percentiles, noise, re-measuring, the latency fit, with a fake clock."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from sloserve.errors import InvalidArgumentError
from sloserve.model_config import ModelConfig, TensorSpec
from sloserve.profiling.latency import (
    LatencyMeasurement,
    best_batch,
    default_batch_sizes,
    fit_latency,
    measure_latencies,
    noise_score,
    sample_latencies,
    summarize_latencies,
)
from sloserve.profiling.profiler import ProfileSettings, profile_variant
from sloserve.testing import FakeClock
from sloserve.types import ModelName
from sloserve.variant import LatencyStats, Task

Array = np.ndarray[Any, Any]

N = 20
SETTINGS = ProfileSettings(min_samples=N, seconds_per_batch=1e-6, max_cv=0.5, max_attempts=3)
QUIET = [1.0] * (N - 1) + [1.2]  # ms
TAIL = [1.0] * (N - 1) + [50.0]  # p99 > 5 x p50
NOISY_A = [1.0, 4.0] * (N // 2)  # cv 0.6
NOISY_B = [1.0, 3.5] * (N // 2)  # cv ~0.56: the least noisy of the three
NOISY_C = [1.0, 9.0] * (N // 2)  # cv 0.8


class Scripted:
    """A call that takes the scripted time (ms) on the fake clock; one script per attempt."""

    def __init__(self, clock: FakeClock, attempts: list[list[float]]) -> None:
        self.clock = clock
        self.attempts = attempts
        self.calls = 0

    async def __call__(self) -> None:
        attempt, index = divmod(self.calls, len(self.attempts[0]))
        self.calls += 1
        await self.clock.advance(self.attempts[attempt][index] / 1000.0)


def values(m: LatencyMeasurement) -> list[float]:
    return [m.stats.p50_ms, m.stats.p95_ms, m.stats.p99_ms, m.mean_ms, m.cv, m.samples]


def same(a: LatencyMeasurement, b: LatencyMeasurement) -> bool:
    """Equal up to rounding (the fake clock adds binary fractions of a second)."""
    return values(a) == pytest.approx(values(b), rel=1e-6)


def test_summarize_latencies() -> None:
    samples = [float(v) for v in range(1, 101)]
    m = summarize_latencies(samples)
    assert m.stats == LatencyStats(
        float(np.percentile(samples, 50)), float(np.percentile(samples, 95)), float(np.percentile(samples, 99))
    )
    assert m.samples == 100
    assert m.mean_ms == pytest.approx(50.5)
    assert m.cv == pytest.approx(np.std(samples) / 50.5)
    with pytest.raises(InvalidArgumentError):
        summarize_latencies([])


def test_noise_score() -> None:
    assert noise_score(summarize_latencies(QUIET), 0.5) <= 1.0
    assert noise_score(summarize_latencies(TAIL), 0.5) > 1.0  # the tail, although cv is small
    assert noise_score(summarize_latencies(NOISY_A), 0.5) > 1.0  # the cv, although the tail is short
    assert noise_score(summarize_latencies(NOISY_A), 1.0) <= 1.0


async def test_noisy_measurements_are_taken_again_and_the_least_noisy_kept() -> None:
    clock = FakeClock()
    calls = {
        1: Scripted(clock, [TAIL, QUIET]),  # noisy once, then quiet: 2 attempts
        2: Scripted(clock, [QUIET]),  # quiet at once: never sampled again
        4: Scripted(clock, [NOISY_A, NOISY_B, NOISY_C]),  # never quiet: the least noisy attempt
    }
    results = await measure_latencies(calls, SETTINGS, clock)
    assert {size: attempts for size, (_, attempts) in results.items()} == {1: 2, 2: 1, 4: 3}
    assert [calls[size].calls for size in (1, 2, 4)] == [2 * N, N, 3 * N]
    assert same(results[1][0], summarize_latencies(QUIET))
    assert same(results[2][0], summarize_latencies(QUIET))
    assert same(results[4][0], summarize_latencies(NOISY_B))


async def test_a_single_attempt_keeps_a_noisy_measurement() -> None:
    clock = FakeClock()
    settings = ProfileSettings(min_samples=N, seconds_per_batch=1e-6, max_attempts=1)
    results = await measure_latencies({1: Scripted(clock, [TAIL])}, settings, clock)
    measurement, attempts = results[1]
    assert attempts == 1
    assert same(measurement, summarize_latencies(TAIL))


async def test_sampling_lasts_at_least_seconds_per_batch() -> None:
    clock = FakeClock(start=0.0)
    tick_ms = 1000.0 / 512  # exact in binary, so 50 calls make exactly 50/512 s
    settings = ProfileSettings(min_samples=5, seconds_per_batch=50 / 512)
    call = Scripted(clock, [[tick_ms] * 100])
    samples = await sample_latencies({8: call}, settings, clock)
    assert samples[8] == [tick_ms] * 50


async def test_slow_models_stop_sampling_after_max_seconds() -> None:
    clock = FakeClock()
    settings = ProfileSettings(min_samples=50, seconds_per_batch=0.4, max_seconds_per_batch=3.0)
    call = Scripted(clock, [[1000.0] * 100])  # 1 s a call
    samples = await sample_latencies({1: call}, settings, clock)
    assert len(samples[1]) == 5  # MIN_SAMPLES_WHEN_SLOW, past the 3 s cap


async def test_sizes_are_interleaved() -> None:
    clock = FakeClock()
    order: list[int] = []

    def recorder(size: int) -> Scripted:
        scripted = Scripted(clock, [[1.0] * N])

        async def call() -> None:
            order.append(size)
            await scripted()

        return call  # type: ignore[return-value]

    await sample_latencies({1: recorder(1), 8: recorder(8)}, SETTINGS, clock)
    assert order == [1, 8] * N


@pytest.mark.parametrize(
    ("points", "expected"),
    [
        pytest.param({1: 0.3, 2: 0.4, 4: 0.6, 8: 1.0}, (0.2, 0.1), id="exact-line"),
        pytest.param({1: 0.5, 8: 0.4, 64: 0.3}, (0.4, 0.0), id="falling-is-flat"),
        pytest.param({1: 0.1, 2: 0.5, 4: 1.3}, (0.0, (0.1 + 1.0 + 5.2) / 21), id="negative-intercept-through-origin"),
        pytest.param({16: 2.0}, (2.0, 0.0), id="single-point"),
    ],
)
def test_fit_latency(points: dict[int, float], expected: tuple[float, float]) -> None:
    intercept, per_row = fit_latency(points)
    assert (intercept, per_row) == pytest.approx(expected)
    assert intercept >= 0
    assert per_row >= 0


def test_best_batch_has_the_most_rows_per_second() -> None:
    def stats(p50: float) -> LatencyStats:
        return LatencyStats(p50, p50, p50)

    assert best_batch({1: stats(0.1), 8: stats(0.2), 64: stats(0.5)}) == 64  # 128 rows/ms
    assert best_batch({1: stats(0.1), 8: stats(2.0), 64: stats(20.0)}) == 1  # 10 rows/ms
    assert best_batch({2: stats(1.0), 4: stats(2.0)}) == 2  # a tie: the smaller


@pytest.mark.parametrize(
    ("max_batch_size", "expected"),
    [(64, (1, 2, 4, 8, 16, 32, 64)), (48, (1, 2, 4, 8, 16, 32, 48)), (1, (1,)), (0, (1,)), (3, (1, 2, 3))],
)
def test_default_batch_sizes(max_batch_size: int, expected: tuple[int, ...]) -> None:
    assert default_batch_sizes(max_batch_size) == expected


@pytest.mark.parametrize(
    "kwargs",
    [
        {"batch_sizes": ()},
        {"batch_sizes": (0, 4)},
        {"min_samples": 0},
        {"max_attempts": 0},
        {"warmup": -1},
        {"seconds_per_batch": 0.0},
        {"max_cv": 0.0},
        {"intra_op_threads": 0},
    ],
)
def test_settings_are_checked(kwargs: dict[str, object]) -> None:
    with pytest.raises(InvalidArgumentError):
        ProfileSettings(**kwargs)  # type: ignore[arg-type]


CONFIG = ModelConfig(
    name=ModelName("m"),
    inputs=(TensorSpec("x", "FP32", (-1, 4)),),
    outputs=(TensorSpec("y", "FP32", (-1, 2)),),
    max_batch_size=16,
)


@pytest.mark.parametrize(
    ("validation", "labels", "reference", "settings", "message"),
    [
        pytest.param({"X": np.zeros((3, 4))}, None, None, ProfileSettings(), "takes", id="input-names"),
        pytest.param({"x": np.zeros((3, 4))}, np.zeros(2), None, ProfileSettings(), "labels has 2", id="labels"),
        pytest.param(
            {"x": np.zeros((3, 4))}, None, {"y": np.zeros((4, 2))}, ProfileSettings(), "'y' has 4", id="reference"
        ),
        pytest.param(None, None, None, ProfileSettings(batch_sizes=(8, 32)), "exceed", id="batch-too-big"),
    ],
)
async def test_bad_arguments_are_refused_before_any_worker_starts(
    tmp_path: Path,
    validation: dict[str, Array] | None,
    labels: Array | None,
    reference: dict[str, Array] | None,
    settings: ProfileSettings,
    message: str,
) -> None:
    with pytest.raises(InvalidArgumentError, match=message):
        await profile_variant(
            tmp_path / "missing.onnx",
            CONFIG,
            validation=validation,
            labels=labels,
            reference_outputs=reference,
            task=Task.REGRESSION,
            settings=settings,
        )
