"""Workloads for the simulator: arrival times, SLO classes, models and rows, generated in bulk with numpy.

A :class:`Workload` is a set of parallel arrays sorted by arrival time. Generated
workloads are Poisson processes with a piecewise-constant rate (one segment: plain
Poisson; several: steps; alternating base and burst segments: bursts); each arrival
draws its SLO class by share and its model uniformly among the simulated models.
A CSV workload gives every arrival explicitly (see :func:`from_csv`).

Everything is seeded: the same segments, classes and seed give the same arrays.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from sloserve.errors import InvalidArgumentError
from sloserve.policy.selection import Slo

FloatArray = np.ndarray[Any, np.dtype[np.float64]]
IntArray = np.ndarray[Any, np.dtype[np.int64]]

CSV_COLUMNS = ("time_s", "model", "latency_slo_ms", "min_accuracy", "rows")


@dataclass(frozen=True, slots=True)
class SloClass:
    name: str
    slo: Slo
    share: float = 1.0
    """Fraction of generated arrivals in this class (shares are normalised)."""


@dataclass(frozen=True, slots=True)
class Segment:
    duration_s: float
    rate_rps: float


@dataclass(frozen=True, slots=True, eq=False)
class Workload:
    time_ms: FloatArray
    """Arrival times in milliseconds from the start, non-decreasing."""
    klass: IntArray
    """Index into ``classes``."""
    model: IntArray
    """Index into ``models``."""
    rows: IntArray
    classes: tuple[SloClass, ...]
    models: tuple[str, ...]
    duration_s: float

    def __len__(self) -> int:
        return len(self.time_ms)

    def deadlines_ms(self) -> FloatArray:
        """Each arrival's deadline (inf: no latency bound)."""
        bound = np.array([math.inf if c.slo.latency_ms is None else c.slo.latency_ms for c in self.classes])
        return self.time_ms + bound[self.klass] if len(self.classes) else self.time_ms.copy()


# ---- parsing command-line specs ------------------------------------------------


def parse_slo_class(spec: str) -> SloClass:
    """``name:latency_ms:min_accuracy:share[:best_effort]``; ``-`` leaves a bound out."""
    parts = spec.split(":")
    if len(parts) not in (4, 5) or not parts[0]:
        raise InvalidArgumentError(
            f"--slo {spec!r}: expected NAME:LATENCY_MS:MIN_ACCURACY:SHARE[:best_effort], e.g. tight:5:0.97:0.5"
        )
    name, latency_raw, accuracy_raw, share_raw = parts[:4]
    latency = None if latency_raw in ("", "-") else _number(latency_raw, f"--slo {spec!r}: latency")
    accuracy = None if accuracy_raw in ("", "-") else _number(accuracy_raw, f"--slo {spec!r}: min accuracy")
    share = _number(share_raw, f"--slo {spec!r}: share")
    if latency is not None and latency <= 0:
        raise InvalidArgumentError(f"--slo {spec!r}: the latency SLO must be positive")
    if accuracy is not None and not 0 <= accuracy <= 1:
        raise InvalidArgumentError(f"--slo {spec!r}: the minimum accuracy must be between 0 and 1")
    if share <= 0:
        raise InvalidArgumentError(f"--slo {spec!r}: the share must be positive")
    if len(parts) == 5 and parts[4] not in ("best_effort", "best-effort"):
        raise InvalidArgumentError(f"--slo {spec!r}: the fifth field can only be 'best_effort'")
    return SloClass(name, Slo(latency, accuracy, best_effort=len(parts) == 5), share)


def parse_steps(spec: str) -> list[Segment]:
    """``DURATION_S:RATE,DURATION_S:RATE,...`` e.g. ``10:1000,10:5000,10:1000``."""
    segments = []
    for item in spec.split(","):
        pieces = item.strip().split(":")
        if len(pieces) != 2:
            raise InvalidArgumentError(f"--steps {spec!r}: each step is DURATION_S:RATE, got {item!r}")
        segments.append(
            Segment(_number(pieces[0], f"--steps: duration {pieces[0]!r}"), _number(pieces[1], "--steps: rate"))
        )
    check_segments(segments)
    return segments


def _number(raw: str, what: str) -> float:
    try:
        value = float(raw)
    except ValueError:
        raise InvalidArgumentError(f"{what}: {raw!r} is not a number") from None
    if not math.isfinite(value):
        raise InvalidArgumentError(f"{what}: {raw!r} is not a finite number")
    return value


# ---- generated workloads ---------------------------------------------------------


def check_segments(segments: Sequence[Segment]) -> None:
    if not segments:
        raise InvalidArgumentError("a workload needs at least one segment")
    for s in segments:
        if not (math.isfinite(s.rate_rps) and s.rate_rps >= 0):
            raise InvalidArgumentError(f"arrival rates must be non-negative, got {s.rate_rps}")
        if not (math.isfinite(s.duration_s) and s.duration_s > 0):
            raise InvalidArgumentError(f"durations must be positive, got {s.duration_s}")


def poisson(rate_rps: float, duration_s: float) -> list[Segment]:
    segments = [Segment(duration_s, rate_rps)]
    check_segments(segments)
    return segments


def bursts(base_rps: float, burst_rps: float, every_s: float, length_s: float, duration_s: float) -> list[Segment]:
    """``base_rps`` throughout, plus ``burst_rps`` for ``length_s`` at the start of every ``every_s``."""
    if not 0 < length_s < every_s:
        raise InvalidArgumentError(
            f"a burst lasts less than its period: got --burst-length {length_s}, --burst-every {every_s}"
        )
    if burst_rps < 0:
        raise InvalidArgumentError(f"--burst-rate must be non-negative, got {burst_rps}")
    segments: list[Segment] = []
    start = 0.0
    while start < duration_s - 1e-12:
        for length, rate in ((length_s, base_rps + burst_rps), (every_s - length_s, base_rps)):
            length = min(length, duration_s - start)
            if length > 1e-12:
                segments.append(Segment(length, rate))
                start += length
    check_segments(segments)
    return segments


def arrival_times_ms(segments: Sequence[Segment], rng: np.random.Generator) -> FloatArray:
    """A Poisson process with a piecewise-constant rate: per segment a Poisson count, uniform sorted times."""
    check_segments(segments)
    parts = []
    start_s = 0.0
    for s in segments:
        count = int(rng.poisson(s.rate_rps * s.duration_s))
        parts.append(np.sort(rng.uniform(start_s, start_s + s.duration_s, size=count)) * 1000.0)
        start_s += s.duration_s
    return np.concatenate(parts) if parts else np.empty(0)


def generate(
    segments: Sequence[Segment],
    classes: Sequence[SloClass],
    models: Sequence[str],
    rng: np.random.Generator,
    rows: int = 1,
) -> Workload:
    if not classes:
        raise InvalidArgumentError("a workload needs at least one SLO class")
    if not models:
        raise InvalidArgumentError("a workload needs at least one model")
    if rows < 1:
        raise InvalidArgumentError(f"rows per request must be at least 1, got {rows}")
    times = arrival_times_ms(segments, rng)
    n = len(times)
    shares = np.array([c.share for c in classes], dtype=np.float64)
    klass = rng.choice(len(classes), size=n, p=shares / shares.sum()) if len(classes) > 1 else np.zeros(n, np.int64)
    model = rng.integers(0, len(models), size=n) if len(models) > 1 else np.zeros(n, np.int64)
    return Workload(
        times,
        klass.astype(np.int64),
        model.astype(np.int64),
        np.full(n, rows, dtype=np.int64),
        tuple(classes),
        tuple(models),
        sum(s.duration_s for s in segments),
    )


# ---- CSV workloads ------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class CsvRows:
    """A CSV workload before classes and models are resolved (see :func:`from_csv`)."""

    time_ms: FloatArray
    model: tuple[str | None, ...] | None
    latency_ms: FloatArray | None
    """NaN where a row leaves the bound out."""
    min_accuracy: FloatArray | None
    rows: IntArray


def read_csv(path: Path) -> CsvRows:
    """Read arrivals: ``time_s`` required; ``model``, ``latency_slo_ms``, ``min_accuracy``, ``rows`` optional.

    Errors name the file and line. Empty optional cells leave the value out (no bound, the
    default model, one row). Rows need not be sorted by time.
    """
    try:
        with path.open(newline="") as f:
            return _parse_csv(path, csv.reader(f))
    except UnicodeDecodeError:
        raise InvalidArgumentError(f"{path}: not a text CSV file") from None
    except csv.Error as error:
        raise InvalidArgumentError(f"{path}: malformed CSV: {error}") from None


def _parse_csv(path: Path, reader: Iterable[list[str]]) -> CsvRows:
    it = iter(reader)
    header = next(it, None)
    if header is None:
        raise InvalidArgumentError(f"{path}: empty file; expected a header line with at least time_s")
    names = [h.strip() for h in header]
    unknown = [h for h in names if h not in CSV_COLUMNS]
    if unknown or "time_s" not in names or len(set(names)) != len(names):
        raise InvalidArgumentError(
            f"{path} line 1: expected a header with time_s and optionally {', '.join(CSV_COLUMNS[1:])} "
            f"(each once), got {', '.join(names) or 'nothing'}"
        )
    col = {name: names.index(name) for name in names}
    times: list[float] = []
    models: list[str | None] = []
    latency: list[float] = []
    accuracy: list[float] = []
    rows: list[int] = []
    for line, record in enumerate(it, start=2):
        if not record or all(not cell.strip() for cell in record):
            continue
        if len(record) != len(names):
            raise InvalidArgumentError(f"{path} line {line}: expected {len(names)} fields, got {len(record)}")
        cells = {name: record[i].strip() for name, i in col.items()}
        t = _cell_number(path, line, "time_s", cells["time_s"])
        if t is None or t < 0:
            raise InvalidArgumentError(f"{path} line {line}: time_s must be a non-negative number")
        times.append(t * 1000.0)
        if "model" in cells:
            models.append(cells["model"] or None)
        if "latency_slo_ms" in cells:
            value = _cell_number(path, line, "latency_slo_ms", cells["latency_slo_ms"])
            if value is not None and value <= 0:
                raise InvalidArgumentError(f"{path} line {line}: latency_slo_ms must be positive, got {value}")
            latency.append(math.nan if value is None else value)
        if "min_accuracy" in cells:
            value = _cell_number(path, line, "min_accuracy", cells["min_accuracy"])
            if value is not None and not 0 <= value <= 1:
                raise InvalidArgumentError(f"{path} line {line}: min_accuracy must be between 0 and 1, got {value}")
            accuracy.append(math.nan if value is None else value)
        raw_rows = cells.get("rows", "")
        if raw_rows:
            try:
                count = int(raw_rows)
            except ValueError:
                raise InvalidArgumentError(f"{path} line {line}: rows {raw_rows!r} is not an integer") from None
            if count < 1:
                raise InvalidArgumentError(f"{path} line {line}: rows must be at least 1, got {count}")
            rows.append(count)
        else:
            rows.append(1)
    if not times:
        raise InvalidArgumentError(f"{path}: no arrivals after the header")
    order = np.argsort(np.array(times), kind="stable")
    return CsvRows(
        np.array(times)[order],
        tuple(models[i] for i in order) if "model" in col else None,
        np.array(latency)[order] if "latency_slo_ms" in col else None,
        np.array(accuracy)[order] if "min_accuracy" in col else None,
        np.array(rows, dtype=np.int64)[order],
    )


def _cell_number(path: Path, line: int, column: str, raw: str) -> float | None:
    if raw == "":
        return None
    try:
        value = float(raw)
    except ValueError:
        raise InvalidArgumentError(f"{path} line {line}: {column} {raw!r} is not a number") from None
    if not math.isfinite(value):
        raise InvalidArgumentError(f"{path} line {line}: {column} {raw!r} is not a finite number")
    return value


def from_csv(data: CsvRows, models: Sequence[str], classes: Sequence[SloClass], rng: np.random.Generator) -> Workload:
    """Resolve a CSV's models and SLO classes.

    A row's model must be one of ``models``; a row without one goes to the first. Rows with
    SLO columns form one class per distinct (latency, accuracy) pair; without SLO columns,
    rows draw a class from ``classes`` by share.
    """
    n = len(data.time_ms)
    model_index = {name: i for i, name in enumerate(models)}
    if data.model is None:
        model = np.zeros(n, np.int64)
    else:
        unknown = sorted({m for m in data.model if m is not None and m not in model_index})
        if unknown:
            raise InvalidArgumentError(
                f"the CSV names model(s) {', '.join(map(repr, unknown))}, not among the simulated "
                f"{', '.join(map(repr, models))}"
            )
        model = np.array([0 if m is None else model_index[m] for m in data.model], dtype=np.int64)
    if data.latency_ms is None and data.min_accuracy is None:
        if not classes:
            raise InvalidArgumentError("the CSV has no SLO columns: give SLO classes with --slo")
        shares = np.array([c.share for c in classes], dtype=np.float64)
        klass = rng.choice(len(classes), size=n, p=shares / shares.sum()) if len(classes) > 1 else np.zeros(n)
        resolved = tuple(classes)
    else:
        latency = data.latency_ms if data.latency_ms is not None else np.full(n, math.nan)
        accuracy = data.min_accuracy if data.min_accuracy is not None else np.full(n, math.nan)
        pairs = np.stack([np.nan_to_num(latency, nan=-1.0), np.nan_to_num(accuracy, nan=-1.0)], axis=1)
        unique, klass = np.unique(pairs, axis=0, return_inverse=True)
        resolved = tuple(_csv_class(lat, acc, n, int(np.sum(klass == i))) for i, (lat, acc) in enumerate(unique))
    end_s = float(data.time_ms[-1]) / 1000.0
    return Workload(
        data.time_ms, np.asarray(klass, np.int64).reshape(-1), model, data.rows, resolved, tuple(models), end_s
    )


def _csv_class(latency: float, accuracy: float, total: int, count: int) -> SloClass:
    slo = Slo(None if latency < 0 else float(latency), None if accuracy < 0 else float(accuracy))
    name = f"{'-' if slo.latency_ms is None else f'{slo.latency_ms:g}'} ms / acc {'-' if slo.min_accuracy is None else f'{slo.min_accuracy:g}'}"
    return SloClass(name, slo, count / total)
