"""Workload generators and CSV parsing."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from sloserve.errors import InvalidArgumentError
from sloserve.policy.selection import Slo
from sloserve.sim.workload import (
    Segment,
    SloClass,
    arrival_times_ms,
    bursts,
    from_csv,
    generate,
    parse_slo_class,
    parse_steps,
    poisson,
    read_csv,
)

CLASSES = [SloClass("a", Slo(5.0, 0.9), 0.25), SloClass("b", Slo(50.0), 0.75)]


def within(count: int, expected: float, sigmas: float = 5.0) -> bool:
    return abs(count - expected) <= sigmas * math.sqrt(expected)


def test_poisson_rate_and_spacing_are_right() -> None:
    times = arrival_times_ms(poisson(5000, 10), np.random.default_rng(1))
    assert within(len(times), 50_000)
    assert np.all(np.diff(times) >= 0)
    assert times[0] >= 0 and times[-1] < 10_000
    gaps = np.diff(times)
    assert abs(gaps.mean() - 0.2) < 0.01  # ms between arrivals at 5,000/s
    assert abs(gaps.std() / gaps.mean() - 1) < 0.05  # exponential: coefficient of variation 1


def test_steps_give_each_segment_its_rate() -> None:
    segments = parse_steps("2:1000, 3:4000,1:0")
    assert segments == [Segment(2, 1000), Segment(3, 4000), Segment(1, 0)]
    times = arrival_times_ms(segments, np.random.default_rng(2))
    assert within(int(np.sum(times < 2000)), 2000)
    assert within(int(np.sum((times >= 2000) & (times < 5000))), 12_000)
    assert np.sum(times >= 5000) == 0


def test_bursts_add_their_rate_at_the_start_of_every_period() -> None:
    segments = bursts(1000, 9000, every_s=2, length_s=0.5, duration_s=5)
    assert [(s.duration_s, s.rate_rps) for s in segments] == [
        (0.5, 10000),
        (1.5, 1000),
        (0.5, 10000),
        (1.5, 1000),
        (0.5, 10000),
        (0.5, 1000),
    ]
    times = arrival_times_ms(segments, np.random.default_rng(3)) / 1000
    in_burst = (times % 2) < 0.5
    assert within(int(in_burst.sum()), 3 * 0.5 * 10000)
    assert within(int((~in_burst).sum()), 3.5 * 1000)


def test_classes_follow_their_shares_and_the_seed() -> None:
    w = generate(poisson(2000, 10), CLASSES, ["m"], np.random.default_rng(4))
    assert within(int(np.sum(w.klass == 0)), 0.25 * len(w))
    assert set(w.model.tolist()) == {0} and set(w.rows.tolist()) == {1}
    again = generate(poisson(2000, 10), CLASSES, ["m"], np.random.default_rng(4))
    other = generate(poisson(2000, 10), CLASSES, ["m"], np.random.default_rng(5))
    assert np.array_equal(w.time_ms, again.time_ms) and np.array_equal(w.klass, again.klass)
    assert not np.array_equal(w.time_ms[:100], other.time_ms[:100])
    deadlines = w.deadlines_ms()
    assert np.allclose(deadlines - w.time_ms, np.where(w.klass == 0, 5.0, 50.0))


def test_several_models_share_the_arrivals_evenly() -> None:
    w = generate(poisson(2000, 5), CLASSES, ["m", "n"], np.random.default_rng(6))
    assert within(int(np.sum(w.model == 1)), len(w) / 2)


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda: poisson(-1, 10), "non-negative"),
        (lambda: poisson(10, 0), "positive"),
        (lambda: poisson(math.inf, 10), "non-negative"),
        (lambda: parse_steps("10:100,5"), "DURATION_S:RATE"),
        (lambda: parse_steps("10:-5"), "non-negative"),
        (lambda: parse_steps("ten:5"), "not a number"),
        (lambda: bursts(10, 10, every_s=1, length_s=2, duration_s=5), "less than its period"),
        (lambda: bursts(10, -10, every_s=2, length_s=1, duration_s=5), "non-negative"),
    ],
)
def test_bad_generated_workloads_are_refused(make: object, message: str) -> None:
    with pytest.raises(InvalidArgumentError, match=message):
        make()  # type: ignore[operator]


def test_slo_class_specs() -> None:
    assert parse_slo_class("tight:5:0.97:0.5") == SloClass("tight", Slo(5.0, 0.97), 0.5)
    assert parse_slo_class("any:-:-:1") == SloClass("any", Slo(None, None), 1.0)
    assert parse_slo_class("be:1:0.99:2:best_effort").slo.best_effort
    for bad in ("tight:5:0.97", "t:0:0.9:1", "t:5:1.5:1", "t:5:0.9:0", "t:x:0.9:1", "t:5:0.9:1:maybe"):
        with pytest.raises(InvalidArgumentError, match="--slo"):
            parse_slo_class(bad)


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "arrivals.csv"
    path.write_text(text)
    return path


def test_csv_with_every_column(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "time_s,model,latency_slo_ms,min_accuracy,rows\n0.5,b,10,0.9,2\n0.1,a,10,0.9,\n\n0.3,,,0.95,1\n",
    )
    data = read_csv(path)
    assert data.time_ms.tolist() == [100.0, 300.0, 500.0]  # sorted
    assert data.model == ("a", None, "b")
    assert data.rows.tolist() == [1, 1, 2]
    w = from_csv(data, ["a", "b"], [], np.random.default_rng(0))
    assert w.model.tolist() == [0, 0, 1]
    assert [c.slo for c in w.classes] == [Slo(None, 0.95), Slo(10.0, 0.9)]
    assert w.klass.tolist() == [1, 0, 1]
    assert w.duration_s == 0.5
    assert math.isinf(w.deadlines_ms()[1]) and w.deadlines_ms()[0] == 110.0


def test_csv_without_slo_columns_draws_classes(tmp_path: Path) -> None:
    path = write(tmp_path, "time_s\n" + "".join(f"{i / 1000}\n" for i in range(4000)))
    w = from_csv(read_csv(path), ["m"], CLASSES, np.random.default_rng(0))
    assert w.classes == tuple(CLASSES)
    assert within(int(np.sum(w.klass == 0)), 1000)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "empty file"),
        ("model\na\n", "line 1: expected a header with time_s"),
        ("time_s,latency_ms\n1,2\n", "line 1: expected a header"),
        ("time_s,time_s\n1,2\n", "line 1"),
        ("time_s\n", "no arrivals"),
        ("time_s\n0.1\nabc\n", "line 3: time_s 'abc' is not a number"),
        ("time_s\n0.1\n-1\n", "line 3: time_s must be a non-negative"),
        ("time_s,rows\n0.1,1\n0.2\n", "line 3: expected 2 fields, got 1"),
        ("time_s,rows\n0.1,0\n", "line 2: rows must be at least 1"),
        ("time_s,rows\n0.1,1.5\n", "line 2: rows '1.5' is not an integer"),
        ("time_s,latency_slo_ms\n0.1,0\n", "line 2: latency_slo_ms must be positive"),
        ("time_s,min_accuracy\n0.1,2\n", "line 2: min_accuracy must be between 0 and 1"),
        ("time_s\n0.1\nnan\n", "line 3: time_s 'nan' is not a finite number"),
    ],
)
def test_malformed_csv_names_the_line(tmp_path: Path, text: str, message: str) -> None:
    path = write(tmp_path, text)
    with pytest.raises(InvalidArgumentError, match=message):
        read_csv(path)


def test_csv_naming_an_unknown_model_is_refused(tmp_path: Path) -> None:
    data = read_csv(write(tmp_path, "time_s,model\n0.1,a\n0.2,zzz\n"))
    with pytest.raises(InvalidArgumentError, match="'zzz'"):
        from_csv(data, ["a"], CLASSES, np.random.default_rng(0))


def test_binary_file_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "x.csv"
    path.write_bytes(b"\xff\xfe\x00time")
    with pytest.raises(InvalidArgumentError, match="not a text CSV"):
        read_csv(path)
