"""The profiler: measure one variant as the server will run it and produce its :class:`VariantProfile`.

The variant runs in the kind of replica the server will give it (the model
config's ``replica_kind``): a :class:`~sloserve.cluster.local.LocalReplica`, the
same worker process the server uses, timed from this (the parent) process so the
numbers include the inter-process hand-off the server will pay; or, for a small
variant, an :class:`~sloserve.cluster.inline.InlineReplica` in this process,
whose CPU cost is this thread's time and whose memory is what loading it added
(at least its weights). Calls are made one at a time: a latency is one batch's,
never a queue's. Reference outputs (:func:`reference_outputs`, the user's own
model, run first) always come from a worker: a model that crashes the runtime
takes only the worker down.

Steps, for one variant::

    start worker ─► first batch answered (load_ms) ─► warm-up
      ─► latencies of every batch size, sampled in interleaved rounds; noisy ones again
      ─► fit latency(b) ~ intercept + per_row * b; best batch = most rows/s
      ─► closed loop at the best batch: throughput and worker CPU per 1,000 rows
      ─► whole validation set through the worker: accuracy
      ─► peak worker memory ─► stop worker (always)

Batches are built from validation rows when there are any (cycled to the batch
size), else from synthetic data of the configured dtype and shape: standard
normal floats, zero integers (safe as indices), ``b"0"`` strings; a variable
non-batch dimension is taken as 1.

Noisy samples are taken again; the statistics and the fit are pure functions
in :mod:`sloserve.profiling.latency`, unit-tested with a fake clock.

Platform notes: peak memory is ``VmHWM`` from ``/proc/<pid>/status`` (Linux);
elsewhere it is ``getrusage(RUSAGE_CHILDREN).ru_maxrss`` read after the worker
stopped (the largest child process so far: an upper bound), and 0 where even
that is missing. Worker CPU time is read from the process CPU clock
(``clock_getcpuclockid``, nanoseconds) or ``/proc/<pid>/stat`` (ticks); where
neither exists the wall time of the throughput run is used, which is exact for a
worker busy all along and an upper bound otherwise.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import os
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from sloserve.clock import Clock, SystemClock
from sloserve.cluster.inline import InlineReplica, runs_inline
from sloserve.cluster.local import LocalReplica
from sloserve.datatypes import numpy_dtype
from sloserve.errors import InvalidArgumentError
from sloserve.model_config import ModelConfig, TensorSpec
from sloserve.profiling.accuracy import measure_accuracy
from sloserve.profiling.graph_stats import read_graph_stats
from sloserve.profiling.latency import best_batch, default_batch_sizes, fit_latency, measure_latencies
from sloserve.replica import Replica
from sloserve.types import ReplicaId
from sloserve.variant import LatencyStats, Task, VariantProfile

Array = np.ndarray[Any, Any]
Feed = dict[str, Array]


@dataclass(frozen=True, slots=True)
class ProfileSettings:
    batch_sizes: tuple[int, ...] | None = None
    """Batch sizes to measure; None: 1, 2, 4, ... up to ``max_batch_size``, and that size itself."""
    warmup: int = 20
    """Calls before measuring, cycling through the batch sizes."""
    min_samples: int = 50
    """Latency samples per batch size and attempt, at least ..."""
    seconds_per_batch: float = 0.4
    """... and at least this long; also the length of the throughput run."""
    max_cv: float = 0.5
    """Coefficient of variation above which a batch size is measured again."""
    max_attempts: int = 3
    intra_op_threads: int = 1
    max_seconds_per_batch: float = 5.0
    """A slow model stops sampling a batch size after this long (with at least
    :data:`~sloserve.profiling.latency.MIN_SAMPLES_WHEN_SLOW` samples), whatever ``min_samples`` says."""

    def __post_init__(self) -> None:
        if self.batch_sizes is not None and (not self.batch_sizes or min(self.batch_sizes) < 1):
            raise InvalidArgumentError(f"profile batch sizes must be at least 1, got {self.batch_sizes}")
        if self.warmup < 0 or self.min_samples < 1 or self.max_attempts < 1 or self.intra_op_threads < 1:
            raise InvalidArgumentError("profile warmup must be >= 0; min_samples, max_attempts, threads >= 1")
        if not (self.seconds_per_batch > 0 and self.max_cv > 0 and self.max_seconds_per_batch > 0):
            raise InvalidArgumentError("profile seconds_per_batch, max_cv and max_seconds_per_batch must be > 0")


# ---------------------------------------------------------------- inputs


class _Batches:
    """Input batches for a model: validation rows cycled to size, or synthetic data."""

    def __init__(self, config: ModelConfig, validation: Mapping[str, Array] | None, seed: int = 0) -> None:
        self._config = config
        self._validation = _check_validation(config, validation) if validation is not None else None
        self._rng = np.random.default_rng(seed)

    @property
    def validation(self) -> Feed | None:
        """The validation set, checked against the config and cast to its dtypes."""
        return self._validation

    def batch(self, rows: int) -> Feed:
        if self._validation is not None:
            if self._config.max_batch_size == 0:
                return dict(self._validation)
            index = np.arange(rows) % len(next(iter(self._validation.values())))
            return {name: array[index] for name, array in self._validation.items()}
        return {spec.name: self._synthetic(spec, rows) for spec in self._config.inputs}

    def _synthetic(self, spec: TensorSpec, rows: int) -> Array:
        dims = [d if d >= 0 else 1 for d in spec.shape]
        if self._config.max_batch_size > 0:
            dims[0] = rows
        dtype = numpy_dtype(spec.datatype)
        if dtype.kind == "f":
            return self._rng.standard_normal(dims).astype(dtype)
        if dtype.kind == "O":
            return np.full(dims, b"0", dtype=object)
        return np.zeros(dims, dtype=dtype)


def _check_validation(config: ModelConfig, validation: Mapping[str, Array]) -> dict[str, Array]:
    names = {spec.name for spec in config.inputs}
    if set(validation) != names:
        raise InvalidArgumentError(
            f"validation set has inputs {sorted(validation)}, the model {config.name!r} takes {sorted(names)}"
        )
    checked: dict[str, Array] = {}
    for spec in config.inputs:
        array = np.asarray(validation[spec.name])
        dtype = numpy_dtype(spec.datatype)
        if dtype.kind != "O" and array.dtype != dtype:
            try:
                array = array.astype(dtype)
            except (TypeError, ValueError) as exc:
                raise InvalidArgumentError(
                    f"validation input {spec.name!r} ({array.dtype}) cannot be read as {spec.datatype}: {exc}"
                ) from None
        checked[spec.name] = array
    rows = {len(a) if a.ndim else 0 for a in checked.values()}
    if len(rows) != 1 or 0 in rows:
        raise InvalidArgumentError(f"validation inputs must have the same, non-zero number of rows, got {rows}")
    return checked


def _check_rows(validation: Feed | None, labels: Array | None, reference: Mapping[str, Array] | None) -> None:
    """Labels and reference outputs must cover the validation rows (checked before any measuring)."""
    if validation is None:
        return
    rows = len(next(iter(validation.values())))
    scoring = {"labels": labels} if labels is not None else {}
    scoring.update({f"reference output {name!r}": array for name, array in (reference or {}).items()})
    for what, array in scoring.items():
        have = len(array) if np.ndim(array) else 0
        if have != rows:
            raise InvalidArgumentError(f"{what} has {have} rows, the validation set {rows}")


def _batch_sizes(config: ModelConfig, settings: ProfileSettings) -> tuple[int, ...]:
    if config.max_batch_size == 0:
        return (1,)
    sizes = settings.batch_sizes or default_batch_sizes(config.max_batch_size)
    too_big = [b for b in sizes if b > config.max_batch_size]
    if too_big:
        raise InvalidArgumentError(f"batch sizes {too_big} exceed max_batch_size {config.max_batch_size}")
    return tuple(sorted(set(sizes)))


# ---------------------------------------------------------------- the worker


def _output_names(config: ModelConfig) -> tuple[str, ...]:
    return tuple(spec.name for spec in config.outputs)


def _replica(artifact: Path, config: ModelConfig, threads: int, rows: int) -> LocalReplica:
    return LocalReplica(
        ReplicaId(f"profile-{config.name}"),
        artifact,
        intra_op_threads=threads,
        max_batch_rows=max(1, rows),
        capacity=1,
    )


def _serving_replica(artifact: Path, config: ModelConfig, threads: int, rows: int) -> LocalReplica | InlineReplica:
    """A replica of the kind the server will run ``artifact`` in (``replica_kind``), so the profile measures
    what serving costs: a small variant served inline has no worker round trip in its latency or cost."""
    if runs_inline(config.replica_kind, artifact):
        return InlineReplica(ReplicaId(f"profile-{config.name}"), artifact)
    return _replica(artifact, config, threads, rows)


async def _run_all(replica: Replica, config: ModelConfig, validation: Mapping[str, Array]) -> dict[str, Array]:
    """Every validation row through the worker, in ``max_batch_size`` chunks, outputs concatenated."""
    names = _output_names(config)
    if config.max_batch_size == 0:
        return await replica.run(validation, names)
    rows = len(next(iter(validation.values())))
    parts: list[dict[str, Array]] = []
    for start in range(0, rows, config.max_batch_size):
        chunk = {name: array[start : start + config.max_batch_size] for name, array in validation.items()}
        parts.append(await replica.run(chunk, names))
    return {name: np.concatenate([part[name] for part in parts]) for name in names}


async def reference_outputs(
    artifact: Path, config: ModelConfig, validation: Mapping[str, Array], *, intra_op_threads: int = 1
) -> dict[str, Array]:
    """The outputs of the model at ``artifact`` on the whole validation set, run in a worker."""
    checked = _check_validation(config, validation)
    replica = _replica(artifact, config, intra_op_threads, config.max_batch_size)
    try:
        await replica.start()
        return await _run_all(replica, config, checked)
    finally:
        await replica.stop()


# ---------------------------------------------------------------- the profile


async def profile_variant(
    artifact: Path,
    config: ModelConfig,
    *,
    validation: Mapping[str, Array] | None,
    labels: Array | None,
    reference_outputs: Mapping[str, Array] | None,
    task: Task,
    settings: ProfileSettings = ProfileSettings(),
    progress: Callable[[str], None] | None = None,
) -> VariantProfile:
    """Measure the variant at ``artifact`` (served with ``config``) on this machine.

    ``validation`` maps input names to rows; ``labels`` (one per row) and/or the
    reference model's ``reference_outputs`` on the same rows score its accuracy
    (see :func:`~sloserve.profiling.accuracy.measure_accuracy`). Raises
    InvalidArgumentError for a model or validation set that does not fit the
    config and the model's own errors if it fails on the batches.
    """
    say = progress or _silent
    clock = SystemClock()
    sizes = _batch_sizes(config, settings)
    batches = _Batches(config, validation)
    _check_rows(batches.validation, labels, reference_outputs)
    names = _output_names(config)
    graph = await asyncio.to_thread(read_graph_stats, artifact)
    replica = _serving_replica(artifact, config, settings.intra_op_threads, max(*sizes, config.max_batch_size))
    peak_mb: float | None = None
    rss_before = _own_rss_mb()
    try:
        started = clock.now()
        await replica.start()
        await replica.run(batches.batch(sizes[0]), names)
        load_ms = (clock.now() - started) * 1000.0
        pid = replica.pid
        say(f"loaded in {load_ms:.0f} ms ({'inline' if pid is None else f'worker pid {pid}'})")
        for i in range(settings.warmup):
            await replica.run(batches.batch(sizes[i % len(sizes)]), names)

        calls = {size: functools.partial(replica.run, batches.batch(size), names) for size in sizes}
        latency: dict[int, LatencyStats] = {}
        for size, (measurement, attempts) in (await measure_latencies(calls, settings, clock)).items():
            latency[size] = measurement.stats
            retried = f", {attempts} attempts" if attempts > 1 else ""
            say(
                f"batch {size}: p50 {measurement.stats.p50_ms:.3f} ms, p99 {measurement.stats.p99_ms:.3f} ms "
                f"({measurement.samples} samples{retried})"
            )
        intercept, per_row = fit_latency({b: s.p50_ms for b, s in latency.items()})
        best = best_batch(latency)

        throughput, cpu_s_per_1k = await _closed_loop(replica, batches.batch(best), names, best, settings, clock)
        say(f"batch {best}: {throughput:,.0f} rows/s, {cpu_s_per_1k * 1000:.3f} ms of worker CPU per 1,000 rows")

        accuracy, kind = None, None
        if batches.validation is not None:
            outputs = await _run_all(replica, config, batches.validation)
            accuracy, kind = measure_accuracy(outputs, task=task, labels=labels, reference=reference_outputs)
            say(f"accuracy: {accuracy:.4f} ({kind.value})" if accuracy is not None and kind else "accuracy: unknown")
        if pid is not None:
            peak_mb = _peak_rss_mb(pid)
        elif rss_before is not None and (rss_after := _own_rss_mb()) is not None:
            # inline: what loading and running it added here, at least its weights (freed memory is reused)
            peak_mb = max(rss_after - rss_before, graph.size_bytes / 2**20)
    finally:
        await replica.stop()
    memory_mb = peak_mb if peak_mb is not None else _children_peak_rss_mb()
    return VariantProfile(
        latency_ms=latency,
        latency_intercept_ms=intercept,
        latency_per_row_ms=per_row,
        best_batch=best,
        throughput_sps=throughput,
        accuracy=accuracy,
        accuracy_kind=kind,
        memory_mb=memory_mb,
        size_bytes=graph.size_bytes,
        load_ms=load_ms,
        flops_per_row=graph.flops_per_row,
        parameters=graph.parameters,
        cost_cpu_s_per_1k=cpu_s_per_1k,
        intra_op_threads=settings.intra_op_threads,
        measured_at=time.time(),
    )


def _silent(message: str) -> None:
    return None


async def _closed_loop(
    replica: Replica, batch: Feed, names: Sequence[str], rows: int, settings: ProfileSettings, clock: Clock
) -> tuple[float, float]:
    """Rows per second and the replica's CPU seconds per 1,000 rows (its worker's, or this thread's when it
    runs inline), one call after another."""
    pid = getattr(replica, "pid", None)
    cpu_s_now: Callable[[], float | None] = (
        functools.partial(process_cpu_s, pid) if pid is not None else time.thread_time
    )
    cpu_before = cpu_s_now()
    started = clock.now()
    done = 0
    while True:
        await replica.run(batch, names)
        done += rows
        elapsed = clock.now() - started
        if elapsed >= settings.seconds_per_batch:
            break
    cpu_after = cpu_s_now()
    cpu_s = cpu_after - cpu_before if cpu_before is not None and cpu_after is not None else elapsed
    return done / elapsed, cpu_s / done * 1000.0


# ---------------------------------------------------------------- the worker process, from outside


def process_cpu_s(pid: int) -> float | None:
    """User + system CPU seconds of process ``pid`` (all its threads), or None when unknown.

    Linux: the process CPU clock (what glibc's ``clock_getcpuclockid`` returns,
    ``(~pid << 3) | 2``; nanoseconds), else ``/proc/<pid>/stat`` (clock ticks).
    """
    if sys.platform.startswith("linux"):
        with contextlib.suppress(OSError, OverflowError):
            return time.clock_gettime((~pid << 3) | 2)
        with contextlib.suppress(OSError, ValueError, IndexError):
            stat = Path(f"/proc/{pid}/stat").read_text()
            fields = stat[stat.rindex(")") + 2 :].split()  # the command name may hold spaces
            return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return None


def _peak_rss_mb(pid: int) -> float | None:
    """Peak resident memory (VmHWM) of a live process, Linux only."""
    with contextlib.suppress(OSError, ValueError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024.0
    return None


def _own_rss_mb() -> float | None:
    """Resident memory of this process now (MB), Linux only."""
    with contextlib.suppress(OSError, ValueError, IndexError):
        return int(Path("/proc/self/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
    return None


def _children_peak_rss_mb() -> float:
    """Largest peak resident memory of any child process reaped so far (MB), 0 when unknown."""
    try:
        import resource
    except ImportError:
        return 0.0
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return peak / (1024.0 * 1024.0) if sys.platform == "darwin" else peak / 1024.0
