"""Serving metrics: every ``sloserve_*`` name lives here.

The Prometheus registry is injected, never the global one, so two servers in
one process (tests do this) keep separate metrics. What every request and batch
counts (successes, rows, latency histograms, pending requests) is kept as plain
numbers per model and exported when the metrics are read (:class:`_PerModel`):
prometheus_client's metric objects take a lock per update and a Python loop per
histogram observation, ~7 µs a query at thousands of queries per second. The data
plane adds its answers up in bulk (``requests_succeeded``, ``slo_outcomes``), and
before every read (:meth:`ServingMetrics.on_read`). The
rest are its metric objects, with label children cached (:class:`_Labelled`).
Counts and reads share the event loop.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Callable, Iterator
from itertools import accumulate
from typing import Any, Protocol

import numpy as np
from prometheus_client import CollectorRegistry, Counter, Gauge, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector

# Seconds: 50 µs .. 10 s, dense where a served request usually lands.
_LATENCY_BUCKETS = (
    0.00005,
    0.0001,
    0.00025,
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    10.0,
)
_BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)


class _Histogram:
    """A histogram as plain counts: one per bucket (a value goes to the first bound it does not exceed,
    Prometheus's ``le``) and one past the last."""

    __slots__ = ("bounds", "counts", "edges", "sum")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds = bounds
        self.edges = np.array(bounds, dtype=np.float64)
        self.counts = [0] * (len(bounds) + 1)
        self.sum = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect_left(self.bounds, value)] += 1
        self.sum += value

    def observe_many(self, values: np.ndarray[Any, Any]) -> None:
        """:meth:`observe` each of ``values`` (one pass of numpy: the bucket is the same, ``le``)."""
        buckets = np.bincount(np.searchsorted(self.edges, values, side="left"), minlength=len(self.counts))
        for i, n in enumerate(buckets.tolist()):
            self.counts[i] += n
        self.sum += float(values.sum())

    def buckets(self) -> list[tuple[str, float]]:
        """Cumulative counts by ``le``, as the exposition format has them."""
        edges = [repr(float(b)) for b in self.bounds] + ["+Inf"]  # 0.005, 1.0, 5e-05: as prometheus_client writes them
        return list(zip(edges, map(float, accumulate(self.counts)), strict=True))


class _ModelCounts:
    __slots__ = (
        "batch_size",
        "compute_seconds",
        "executions",
        "inferences",
        "pending",
        "queue_seconds",
        "request_seconds",
        "success",
    )

    def __init__(self) -> None:
        self.success = 0
        self.inferences = 0
        self.executions = 0
        self.pending = 0
        self.request_seconds = _Histogram(_LATENCY_BUCKETS)
        self.queue_seconds = _Histogram(_LATENCY_BUCKETS)
        self.compute_seconds = _Histogram(_LATENCY_BUCKETS)
        self.batch_size = _Histogram(_BATCH_BUCKETS)


class _PerModel(Collector):
    """The per-request and per-batch metrics of every model, from :class:`_ModelCounts`."""

    def __init__(self) -> None:
        self.models: dict[str, _ModelCounts] = {}

    def counts(self, model: str) -> _ModelCounts:
        counts = self.models.get(model)
        if counts is None:
            counts = self.models[model] = _ModelCounts()
        return counts

    def describe(self) -> Iterator[Metric]:
        return self._families({})

    def collect(self) -> Iterator[Metric]:
        return self._families(self.models)

    @staticmethod
    def _families(models: dict[str, _ModelCounts]) -> Iterator[Metric]:
        counters = (
            ("sloserve_request_success", "Inference requests answered successfully.", "success"),
            ("sloserve_inference_count", "Rows inferred (batch dimension summed over requests).", "inferences"),
            ("sloserve_execution_count", "Model executions (batches run on a replica).", "executions"),
        )
        for name, doc, field in counters:
            counter = CounterMetricFamily(name, doc, labels=["model"])
            for model, c in models.items():
                counter.add_metric([model], getattr(c, field))
            yield counter
        histograms = (
            (
                "sloserve_request_duration_seconds",
                "End-to-end time of an inference request in the server.",
                "request_seconds",
            ),
            ("sloserve_queue_duration_seconds", "Time a request waited in the batching queue.", "queue_seconds"),
            (
                "sloserve_compute_duration_seconds",
                "Time a batch spent on its replica (transfer included).",
                "compute_seconds",
            ),
            ("sloserve_batch_size", "Rows per executed batch.", "batch_size"),
        )
        for name, doc, field in histograms:
            histogram = HistogramMetricFamily(name, doc, labels=["model"])
            for model, c in models.items():
                h: _Histogram = getattr(c, field)
                histogram.add_metric([model], h.buckets(), h.sum)
            yield histogram
        pending = GaugeMetricFamily(
            "sloserve_pending_requests", "Requests waiting in the queue or running.", labels=["model"]
        )
        for model, c in models.items():
            pending.add_metric([model], c.pending)
        yield pending


class EventLoopGauge(Protocol):
    """What the metrics read of the serving event loop (:class:`~sloserve.dataplane.loop_load.LoopLag`)."""

    @property
    def lag_ms(self) -> float: ...

    @property
    def busy(self) -> float: ...

    @property
    def stalls(self) -> int: ...

    @property
    def stalled_s(self) -> float: ...

    @property
    def in_flight(self) -> int: ...

    @property
    def backlog_ms(self) -> float: ...


class _EventLoop(Collector):
    """The serving event loop's lag, busy share and stalls, read when the metrics are."""

    def __init__(self) -> None:
        self.loop: EventLoopGauge | None = None

    def describe(self) -> Iterator[Metric]:
        return self._families(None)

    def collect(self) -> Iterator[Metric]:
        return self._families(self.loop)

    @staticmethod
    def _families(loop: EventLoopGauge | None) -> Iterator[Metric]:
        lag = GaugeMetricFamily(
            "sloserve_event_loop_lag_seconds",
            "How far behind the serving event loop runs (moving average of how late a timer fires while it works).",
        )
        busy = GaugeMetricFamily(
            "sloserve_event_loop_busy_ratio", "CPU seconds per second of the serving event loop's thread."
        )
        stalls = CounterMetricFamily(
            "sloserve_event_loop_stalls",
            "Times the serving event loop was found held up without working (a timer late with no CPU "
            "used: the process stopped by its host, a VM's hiccup, CPU throttling, or a wait on another thread).",
        )
        stalled = CounterMetricFamily("sloserve_event_loop_stalled_seconds", "Those stalls' lengths, summed.")
        in_flight = GaugeMetricFamily(
            "sloserve_in_flight_requests", "Requests taken in by the data plane and not yet answered, every model."
        )
        backlog = GaugeMetricFamily(
            "sloserve_event_loop_backlog_seconds",
            "The saturated event loop's work ahead of a request read now (requests in flight times its CPU per "
            "request; 0 while it is not saturated), which admission control refuses tight queries for.",
        )
        if loop is not None:
            lag.add_metric([], loop.lag_ms / 1e3)
            busy.add_metric([], loop.busy)
            stalls.add_metric([], loop.stalls)
            stalled.add_metric([], loop.stalled_s)
            in_flight.add_metric([], loop.in_flight)
            backlog.add_metric([], loop.backlog_ms / 1e3)
        yield from (lag, busy, stalls, stalled, in_flight, backlog)


class _Labelled:
    """A labelled counter whose children are kept: ``labels()`` takes a lock and ~2 µs per call, and some of
    these are counted on every request."""

    def __init__(self, metric: Counter) -> None:
        self._metric = metric
        self._children: dict[tuple[str, ...], Counter] = {}

    def labels(self, *values: str) -> Counter:
        child = self._children.get(values)
        if child is None:
            child = self._children[values] = self._metric.labels(*values)
        return child


class _Tally:
    """Counts kept as plain integers and added to their counter when the metrics are read
    (:meth:`ServingMetrics.exposition`): for the per-query counters, where a lock per ``inc()``
    is measurable at thousands of queries per second. Reads and counts share the event loop."""

    def __init__(self, metric: Counter) -> None:
        self._labelled = _Labelled(metric)
        self._counts: dict[tuple[str, ...], int] = {}

    def add(self, *values: str) -> None:
        self._counts[values] = self._counts.get(values, 0) + 1

    def add_many(self, count: int, *values: str) -> None:
        self._counts[values] = self._counts.get(values, 0) + count

    def flush(self) -> None:
        counts, self._counts = self._counts, {}
        for values, n in counts.items():
            self._labelled.labels(*values).inc(n)


class ServingMetrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        r = self.registry
        self._failure = Counter(
            "sloserve_request_failure",
            "Inference requests that failed, by error code.",
            ["model", "reason"],
            registry=r,
        )
        self._per_model = _PerModel()
        r.register(self._per_model)
        self._event_loop = _EventLoop()
        r.register(self._event_loop)
        self._worker_restarts = Counter(
            "sloserve_replica_restarts", "Replica processes restarted after dying.", ["model"], registry=r
        )
        self._cache_hits = Counter(
            "sloserve_cache_hit", "Requests answered from the prediction cache.", ["model"], registry=r
        )
        self._cache_misses = Counter(
            "sloserve_cache_miss",
            "Requests to a model with the cache on that the cache could not answer.",
            ["model"],
            registry=r,
        )
        self._cache_bytes = Gauge(
            "sloserve_cache_bytes", "Bytes of answers held in the prediction cache.", ["model"], registry=r
        )
        self._hedges = Counter(
            "sloserve_hedge",
            "Hedged batches by event: fired (a backup sent), won (the backup answered first), "
            "lost (the original answered first), cancelled (a losing run cancelled).",
            ["model", "event"],
            registry=r,
        )
        self._hedge_tokens = Gauge(
            "sloserve_hedge_budget_tokens",
            "Hedges the budget allows right now (a token bucket earning the hedging budget per batch).",
            ["model"],
            registry=r,
        )
        self._splits = Counter(
            "sloserve_split_requests",
            "Requests split into chunks across replicas (scatter-gather).",
            ["model"],
            registry=r,
        )
        self._split_chunks = Counter(
            "sloserve_split_chunks", "Chunks that split requests were cut into.", ["model"], registry=r
        )

        # model-less serving (issue 4)
        self._slo = Counter(
            "sloserve_slo_requests",
            "Answered requests by whether they met their SLO (latency and accuracy), per variant.",
            ["model", "variant", "met"],
            registry=r,
        )
        self._selections = Counter(
            "sloserve_variant_selections",
            "Queries routed to each variant by selection.",
            ["model", "variant"],
            registry=r,
        )
        self._replicas = Gauge(
            "sloserve_replicas", "Replicas running per variant (version).", ["model", "variant"], registry=r
        )
        self._scale_decisions = Counter(
            "sloserve_autoscaler_decisions",
            "Autoscaler decisions, by action (scale_up, scale_down, upgrade, reclaim).",
            ["model", "variant", "action"],
            registry=r,
        )

        self._failures = _Labelled(self._failure)
        self._slo_outcomes = _Tally(self._slo)
        self._selected = _Tally(self._selections)
        self._on_read: list[Callable[[], None]] = []

    def request_started(self, model: str) -> None:
        self._per_model.counts(model).pending += 1

    def request_succeeded(self, model: str, rows: int, total_s: float, queue_s: float) -> None:
        c = self._per_model.counts(model)
        c.pending -= 1
        c.success += 1
        c.inferences += rows
        c.request_seconds.observe(total_s)
        c.queue_seconds.observe(queue_s)

    def requests_succeeded(
        self, model: str, count: int, rows: int, total_s: np.ndarray[Any, Any], queue_s: np.ndarray[Any, Any]
    ) -> None:
        """:meth:`request_succeeded` for ``count`` requests at once (the data plane adds up its answers in bulk)."""
        c = self._per_model.counts(model)
        c.pending -= count
        c.success += count
        c.inferences += rows
        c.request_seconds.observe_many(total_s)
        c.queue_seconds.observe_many(queue_s)

    def request_failed(self, model: str, reason: str, total_s: float) -> None:
        c = self._per_model.counts(model)
        c.pending -= 1
        self._failures.labels(model, reason).inc()
        c.request_seconds.observe(total_s)

    def request_rejected(self, model: str, reason: str) -> None:
        """A request refused before it was queued (never counted as pending)."""
        self._failures.labels(model, reason).inc()

    def batch_executed(self, model: str, rows: int, compute_s: float) -> None:
        c = self._per_model.counts(model)
        c.executions += 1
        c.batch_size.observe(rows)
        c.compute_seconds.observe(compute_s)

    def event_loop(self, loop: EventLoopGauge) -> None:
        """Export ``loop``'s lag, busy share and stalls (read at every scrape)."""
        self._event_loop.loop = loop

    def replica_restarted(self, model: str) -> None:
        self._worker_restarts.labels(model).inc()

    def cache_lookup(self, model: str, hit: bool) -> None:
        (self._cache_hits if hit else self._cache_misses).labels(model).inc()

    def cache_size(self, model: str, nbytes: int) -> None:
        self._cache_bytes.labels(model).set(nbytes)

    def hedge_event(self, model: str, event: str) -> None:
        """``fired``, ``won``, ``lost`` or ``cancelled``."""
        self._hedges.labels(model, event).inc()

    def hedge_budget(self, model: str, tokens: Callable[[], float]) -> None:
        """Report the hedge budget's tokens by calling ``tokens`` at every scrape."""
        self._hedge_tokens.labels(model).set_function(tokens)

    def request_split(self, model: str, chunks: int) -> None:
        self._splits.labels(model).inc()
        self._split_chunks.labels(model).inc(chunks)

    def slo_outcome(self, model: str, variant: str, met: bool) -> None:
        self._slo_outcomes.add(model, variant, "true" if met else "false")

    def slo_outcomes(self, model: str, variant: str, met: int, missed: int) -> None:
        """:meth:`slo_outcome` for ``met`` answers that met their SLO and ``missed`` that did not."""
        if met:
            self._slo_outcomes.add_many(met, model, variant, "true")
        if missed:
            self._slo_outcomes.add_many(missed, model, variant, "false")

    def variant_selected(self, model: str, variant: str, count: int = 1) -> None:
        self._selected.add_many(count, model, variant)

    def on_read(self, callback: Callable[[], None]) -> None:
        """Call ``callback`` whenever the metrics are read, before: for counts kept elsewhere (the data plane
        keeps the selections of a kept choice in it, :meth:`VariantChooser.kept`) to be added first."""
        self._on_read.append(callback)

    def replicas(self, model: str, variant: str, count: int) -> None:
        self._replicas.labels(model, variant).set(count)

    def autoscale_decision(self, model: str, variant: str, action: str) -> None:
        self._scale_decisions.labels(model, variant, action).inc()

    def exposition(self) -> bytes:
        """The Prometheus text format of every metric in this registry."""
        for callback in self._on_read:
            callback()
        self._slo_outcomes.flush()
        self._selected.flush()
        return generate_latest(self.registry)
