"""Serving metrics: every ``sloserve_*`` name lives here.

The Prometheus registry is injected, never the global one, so two servers in
one process (tests do this) keep separate metrics. Label children are cached
per model so the request path pays one dict lookup, not a label resolution.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

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


@dataclass(slots=True)
class _ModelChildren:
    success: Counter
    inferences: Counter
    executions: Counter
    request_seconds: Histogram
    queue_seconds: Histogram
    compute_seconds: Histogram
    batch_size: Histogram
    pending: Gauge


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

    def flush(self) -> None:
        counts, self._counts = self._counts, {}
        for values, n in counts.items():
            self._labelled.labels(*values).inc(n)


class ServingMetrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        r = self.registry
        self._success = Counter(
            "sloserve_request_success", "Inference requests answered successfully.", ["model"], registry=r
        )
        self._failure = Counter(
            "sloserve_request_failure",
            "Inference requests that failed, by error code.",
            ["model", "reason"],
            registry=r,
        )
        self._inferences = Counter(
            "sloserve_inference_count",
            "Rows inferred (batch dimension summed over requests).",
            ["model"],
            registry=r,
        )
        self._executions = Counter(
            "sloserve_execution_count", "Model executions (batches run on a replica).", ["model"], registry=r
        )
        self._request_seconds = Histogram(
            "sloserve_request_duration_seconds",
            "End-to-end time of an inference request in the server.",
            ["model"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self._queue_seconds = Histogram(
            "sloserve_queue_duration_seconds",
            "Time a request waited in the batching queue.",
            ["model"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self._compute_seconds = Histogram(
            "sloserve_compute_duration_seconds",
            "Time a batch spent on its replica (transfer included).",
            ["model"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self._batch_size = Histogram(
            "sloserve_batch_size", "Rows per executed batch.", ["model"], buckets=_BATCH_BUCKETS, registry=r
        )
        self._pending = Gauge(
            "sloserve_pending_requests", "Requests waiting in the queue or running.", ["model"], registry=r
        )
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
        self._children: dict[str, _ModelChildren] = {}

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

    def _model(self, model: str) -> _ModelChildren:
        children = self._children.get(model)
        if children is None:
            children = _ModelChildren(
                success=self._success.labels(model),
                inferences=self._inferences.labels(model),
                executions=self._executions.labels(model),
                request_seconds=self._request_seconds.labels(model),
                queue_seconds=self._queue_seconds.labels(model),
                compute_seconds=self._compute_seconds.labels(model),
                batch_size=self._batch_size.labels(model),
                pending=self._pending.labels(model),
            )
            self._children[model] = children
        return children

    def request_started(self, model: str) -> None:
        self._model(model).pending.inc()

    def request_succeeded(self, model: str, rows: int, total_s: float, queue_s: float) -> None:
        c = self._model(model)
        c.pending.dec()
        c.success.inc()
        c.inferences.inc(rows)
        c.request_seconds.observe(total_s)
        c.queue_seconds.observe(queue_s)

    def request_failed(self, model: str, reason: str, total_s: float) -> None:
        c = self._model(model)
        c.pending.dec()
        self._failures.labels(model, reason).inc()
        c.request_seconds.observe(total_s)

    def request_rejected(self, model: str, reason: str) -> None:
        """A request refused before it was queued (never counted as pending)."""
        self._failures.labels(model, reason).inc()

    def batch_executed(self, model: str, rows: int, compute_s: float) -> None:
        c = self._model(model)
        c.executions.inc()
        c.batch_size.observe(rows)
        c.compute_seconds.observe(compute_s)

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

    def variant_selected(self, model: str, variant: str) -> None:
        self._selected.add(model, variant)

    def replicas(self, model: str, variant: str, count: int) -> None:
        self._replicas.labels(model, variant).set(count)

    def autoscale_decision(self, model: str, variant: str, action: str) -> None:
        self._scale_decisions.labels(model, variant, action).inc()

    def exposition(self) -> bytes:
        """The Prometheus text format of every metric in this registry."""
        self._slo_outcomes.flush()
        self._selected.flush()
        return generate_latest(self.registry)
