"""The protocol-neutral data plane: every v2 operation, written once.

HTTP and gRPC transports decode their wire format, call a method here and encode
the result; errors are :mod:`sloserve.errors` exceptions that each transport
maps in one place. Loaded models arrive as :class:`CatalogSnapshot` values
published by the control plane (:meth:`DataPlane.apply_catalog`); the request
path only reads ``self._models``.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from types import CoroutineType
from typing import Any, Protocol, cast

from sloserve import __version__
from sloserve.catalog import CatalogSnapshot, LoadedModel, ModelState, ModelStatus
from sloserve.clock import Clock
from sloserve.dataplane.batcher import RowsResult
from sloserve.dataplane.cache import PredictionCache, input_digest
from sloserve.dataplane.host import VersionHost
from sloserve.dataplane.loop_load import LoopLag
from sloserve.dataplane.selector import AdmissionRefused, VariantChooser
from sloserve.dataplane.slo import RequestSlos
from sloserve.dataplane.splitter import MAX_CHUNKS, scatter_gather
from sloserve.dataplane.validation import check_request
from sloserve.errors import (
    InternalError,
    NotFoundError,
    ResourceExhaustedError,
    SloserveError,
    UnavailableError,
)
from sloserve.metrics import ServingMetrics
from sloserve.policy.autoscale import VariantLoad, capacity_within_slo
from sloserve.policy.selection import Slo
from sloserve.protocol.types import InferRequest, InferResponse, Tensor
from sloserve.replica import Arrays
from sloserve.types import ModelName, VersionId
from sloserve.variant import VariantProfile

log = logging.getLogger(__name__)

SERVER_NAME = "sloserve"
LAG_TURNS = 2
"""Turns of the event loop a request still waits for once read: its batch's, and its answer's (its caller's task
woken by the result)."""
LAG_TURNS_SOON = 1
"""The same for a request answered from its batch's own turn (:meth:`DataPlane.infer_soon`, HTTP's): that turn
alone. Admitting HTTP queries by it (paired against two turns, `digits` at 21,300, 24,000 and 26,000 queries/s,
6-8 reps each): 99.10% against 99.02%, 98.89% against 98.68%, 96.05% against 93.71% within SLO, the lowest rep
higher at each rate (98.09 against 96.94%, 97.65 against 95.50%, 90.80 against 82.66%)."""
EXTENSIONS = ("binary_tensor_data", "model_repository", "statistics")


class RepositoryControl(Protocol):
    """What the data plane needs from the control plane (implemented in ``control/``)."""

    def index(self) -> list[ModelStatus]: ...

    async def load(self, name: str) -> None: ...

    async def unload(self, name: str) -> None: ...

    async def ensure_running(self, name: str, version: str) -> None: ...

    def variants(self, name: str) -> list[dict[str, Any]]: ...


@dataclass(slots=True)
class _ModelView:
    loaded: LoadedModel
    hosts: dict[VersionId, VersionHost]
    chooser: VariantChooser
    slos: RequestSlos
    """A request's SLO from its parameters, over the model's defaults."""


class DataPlane:
    def __init__(self, clock: Clock, metrics: ServingMetrics) -> None:
        self._clock = clock
        self._metrics = metrics
        self._models: dict[str, _ModelView] = {}
        self._catalog = CatalogSnapshot()
        self._control: RepositoryControl | None = None
        self._ready = False
        self._cache = PredictionCache(clock)
        self._loads_read_at = clock.now()
        self._loop_lag = LoopLag()
        metrics.event_loop(self._loop_lag)
        self._wanted: dict[tuple[str, VersionId], int] = {}
        """Rows that a variant not running would have served (refused, or sent to a dearer one)."""
        metrics.on_read(self._before_metrics_read)

    # -- wiring, called by the composition root and the control plane -----------------------------

    def attach_control(self, control: RepositoryControl) -> None:
        self._control = control

    def set_ready(self, ready: bool) -> None:
        """Ready (called in the running loop): serving, and watching the event loop's lag; not: neither."""
        self._ready = ready
        if ready:
            self._loop_lag.start()
        else:
            self._loop_lag.stop()

    async def apply_catalog(self, snapshot: CatalogSnapshot) -> None:
        """Start hosts for newly running versions; drain and drop those that went away."""
        current = {(name, v): host for name, view in self._models.items() for v, host in view.hosts.items()}
        choosers = {name: view.chooser for name, view in self._models.items()}
        models: dict[str, _ModelView] = {}
        for name, loaded in snapshot.loaded.items():
            hosts: dict[VersionId, VersionHost] = {}
            for version, running in loaded.running.items():
                host = current.pop((name, version), None)
                if host is None or host.running is not running:
                    if host is not None:
                        current[(name, version)] = host  # replaced: retire the old one below
                    profile = loaded.profiles.get(version)
                    host = VersionHost(
                        loaded.config,
                        running,
                        self._clock,
                        self._metrics,
                        profile=profile,
                        split_rows=profile.best_batch if profile is not None else None,
                        loop=self._loop_lag,
                    )
                    host.start()
                hosts[version] = host
                self._metrics.replicas(name, version, len(running.replicas))
            chooser = choosers.get(name)
            if chooser is None or self._models[name].loaded.profiles is not loaded.profiles:
                if chooser is not None:
                    self._take_counts(name, chooser)
                chooser = VariantChooser(loaded.profiles, loaded.config.max_batch_size)
            accuracy_known = any(p.accuracy is not None for p in loaded.profiles.values())
            slos = RequestSlos(loaded.config.default_slo, _reference_accuracy(loaded), accuracy_known)
            models[name] = _ModelView(loaded, hosts, chooser, slos)
        for unloaded in choosers.keys() - models.keys():  # what its kept choices served still counts
            self._take_counts(unloaded, choosers[unloaded])
        self._models = models
        self._catalog = snapshot
        self._cache.retain(snapshot)  # answers of replaced models and versions go
        for (gone, version), host in current.items():
            if gone not in models or version not in models[gone].hosts:
                self._metrics.replicas(gone, version, 0)
            await host.close()

    def variant_loads(self) -> dict[str, list[VariantLoad]]:
        """Per registered model, each variant's load since the last call (for the autoscaler)."""
        loads: dict[str, list[VariantLoad]] = {}
        self._take_kept_counts()
        interval_s = self._load_interval()
        for name, view in self._models.items():
            loaded = view.loaded
            if not loaded.profiles:
                continue
            tightest = loaded.config.default_slo.latency_slo_ms
            variants = []
            for version, profile in loaded.profiles.items():
                host = view.hosts.get(version)
                routed, refused, queue_ms = host.take_load() if host is not None else (0, 0, 0.0)
                refused += self._wanted.pop((name, version), 0)
                capacity = capacity_within_slo(
                    profile.latency_intercept_ms,
                    profile.latency_per_row_ms,
                    max(loaded.config.max_batch_size, 1),
                    tightest,
                    profile.throughput_sps,
                )
                variants.append(
                    VariantLoad(
                        version,
                        len(host.running.replicas) if host is not None else 0,  # down or not: restarts are not scaling
                        (routed + refused) / interval_s,
                        capacity,
                        queue_ms,
                        loaded.config.intra_op_threads,
                        profile.load_ms,
                        min_replicas=1 if version == loaded.default else 0,
                    )
                )
            loads[name] = variants
        return loads

    def _take_kept_counts(self) -> None:
        """Add what the kept choices served (:meth:`VariantChooser.kept`) to the metrics and the demand."""
        for name, view in self._models.items():
            self._take_counts(name, view.chooser)

    def _before_metrics_read(self) -> None:
        """Bring the metrics up to date: what kept choices served, every host's answers (:meth:`VersionHost.flush`)."""
        self._take_kept_counts()
        for view in self._models.values():
            for host in view.hosts.values():
                host.flush()

    def _take_counts(self, name: str, chooser: VariantChooser) -> None:
        served, wanted = chooser.take_counts(self._clock.now())
        for version, count in served.items():
            self._metrics.variant_selected(name, version, count)
        for version, rows in wanted.items():
            key = (name, version)
            self._wanted[key] = self._wanted.get(key, 0) + rows

    def _load_interval(self) -> float:
        now = self._clock.now()
        elapsed = max(now - self._loads_read_at, 1e-3)
        self._loads_read_at = now
        return elapsed

    # -- health and metadata ----------------------------------------------------------------------

    def live(self) -> bool:
        return True

    def ready(self) -> bool:
        return self._ready

    def _view(self, name: str, version: str | None) -> tuple[_ModelView, VersionId]:
        """The loaded model and the version a request means (its default when none is given)."""
        view = self._models.get(name)
        if view is None:
            status = self._catalog.statuses.get(ModelName(name))
            if status is None:
                raise NotFoundError(f"unknown model {name!r}")
            detail = f": {status.reason}" if status.reason else ""
            raise UnavailableError(f"model {name!r} is not loaded (state {status.state.value}){detail}")
        if not version:
            return view, view.loaded.default
        if version not in view.loaded.versions:
            raise NotFoundError(
                f"model {name!r} has no version {version!r}; versions: {', '.join(view.loaded.versions)}"
            )
        return view, VersionId(version)

    async def _cold_start(self, name: str, version: VersionId) -> VersionHost:
        """The host of a served version that is not running yet, once started."""
        await self._require_control().ensure_running(name, version)
        view, _ = self._view(name, version)
        host = view.hosts.get(version)
        if host is None:
            raise UnavailableError(f"version {version!r} of model {name!r} could not be started")
        return host

    def model_ready(self, name: str, version: str | None = None) -> bool:
        """True if loaded and serving; False if known but not loaded; NotFoundError otherwise."""
        try:
            self._view(name, version)
        except UnavailableError:
            return False
        return self._ready

    def server_metadata(self) -> dict[str, Any]:
        return {"name": SERVER_NAME, "version": __version__, "extensions": list(EXTENSIONS)}

    def model_metadata(self, name: str, version: str | None = None) -> dict[str, Any]:
        view, _ = self._view(name, version)
        config = view.loaded.config
        return {
            "name": config.name,
            "versions": list(view.loaded.versions),
            "platform": config.platform,
            "inputs": [t.to_dict() for t in config.inputs],
            "outputs": [t.to_dict() for t in config.outputs],
        }

    # -- inference --------------------------------------------------------------------------------

    def admit(
        self,
        name: str,
        version: str | None,
        received_s: float | None,
        parameters: Mapping[str, Any],
        turns: int = LAG_TURNS,
    ) -> Slo:
        """Refuse at once (RESOURCE_EXHAUSTED) a query whose latency SLO the event loop's lag already spends:
        it has waited to be read, and still waits ``turns`` turns of the loop (for its batch, and for its answer
        unless the batch's turn writes it: :data:`LAG_TURNS_SOON`); on a saturated loop, for the requests in
        flight ahead of it (:attr:`LoopLag.backlog_ms`).

        Transports call it with a request's parameters as soon as they have them, before decoding its tensors
        (the codecs' ``admit``), because that is when the loop is behind: a refusal then costs about half of
        what serving does, most of it the parse, and every µs it saves goes to the queries still served.
        Unknown models and invalid parameters raise what :meth:`infer` would. The request's SLO, for
        :attr:`InferRequest.slo`."""
        view, _ = self._view(name, version)
        slo = view.slos(parameters)
        try:
            self._admit(view, slo, self._clock.now() if received_s is None else received_s, turns)
        except ResourceExhaustedError:
            self._loop_lag.taken += 1  # never reaches infer; what reading it cost counts in the CPU per request
            raise
        return slo

    def _admit(self, view: _ModelView, slo: Slo, started: float, turns: int = LAG_TURNS) -> None:
        if slo.latency_ms is not None and not slo.best_effort and slo.latency_ms > view.chooser.fastest_ms:
            waited_ms = (self._clock.now() - started) * 1e3
            loop = self._loop_lag
            turns_ms, backlog_ms = turns * loop.lag_ms, loop.in_flight * loop.ms_per_request  # its backlog_ms
            # what the loop alone will make it wait, and may have made it wait unseen before it was read
            if waited_ms + loop.stall_ms + (backlog_ms if backlog_ms > turns_ms else turns_ms) >= slo.latency_ms:
                lag_ms, stall_ms = loop.lag_ms, loop.stall_ms
                saturated = backlog_ms > turns_ms
                self._metrics.request_rejected(view.loaded.name, "loop_saturated" if saturated else "loop_overloaded")
                raise ResourceExhaustedError(
                    _loop_overloaded(waited_ms, stall_ms, lag_ms, slo.latency_ms, turns, loop.in_flight, backlog_ms)
                )

    async def infer(self, request: InferRequest) -> InferResponse:
        query = self._begin(request)
        if isinstance(query, InferResponse):
            return query
        return await self._wait(query)

    def infer_soon(
        self, request: InferRequest, answer: Answer
    ) -> InferResponse | CoroutineType[Any, Any, InferResponse] | Pending:
        """:meth:`infer` for a transport that can take the answer in any callback: the :class:`Pending` query
        when it waits in a batcher's queue and ``answer`` will get its response, or the error it failed with,
        from the batcher's own turn of the event loop (sparing the wake-up of the caller's task, ~2.5 µs a
        query, and the turn of reading that comes before it); the transport cancels it if its client goes away
        first. Otherwise the response (a cached answer) or a coroutine that makes it (a version to start first,
        or a request split across batches: a native coroutine, which the transport tells from a query by its
        exact type, ~0.3 µs a query cheaper than the ``Coroutine`` ABC's check). Errors before it is queued
        raise."""
        query = self._begin(request)
        if isinstance(query, InferResponse):
            return query
        host = query.host
        if host is None or (host.split_rows > 0 and query.rows > host.split_rows):
            return cast("CoroutineType[Any, Any, InferResponse]", self._wait(query))  # what an async def makes
        query.answer = answer
        try:
            host.batcher.submit_reply(query.inputs, query.rows, query.deadline, query)
        except ResourceExhaustedError as error:
            query.refused(error)
            raise
        query.submitted()
        return query

    def _begin(self, request: InferRequest) -> InferResponse | _Query:
        """What every query goes through before it waits: the checks, admission, the variant, the cache (a hit
        is the response)."""
        self._loop_lag.taken += 1
        name = request.model_name
        started = self._clock.now() if request.received_s is None else request.received_s
        view, version = self._view(name, request.model_version)
        config = view.loaded.config
        slo = request.slo
        if slo is None:
            slo = view.slos(request.parameters)
            self._admit(view, slo, started)
        split_rows = config.max_batch_size
        max_rows = split_rows * MAX_CHUNKS if split_rows > 0 else None
        inputs, rows, output_names = check_request(request, config, max_rows)
        if not request.model_version and view.loaded.profiles:
            now = self._clock.now()
            version = view.chooser.kept(view.hosts, slo, rows, now) or self._select(view, slo, rows, now)
        deadline = None if slo.latency_ms is None or slo.best_effort else started + slo.latency_ms / 1e3
        query = _Query(self, request, name, version, slo, started, inputs, rows, output_names, deadline)
        host = view.hosts.get(version)
        if host is not None:
            return query.on(host)
        return query

    async def _wait(self, query: _Query) -> InferResponse:
        """The rest of :meth:`infer`: start the version if need be, queue the query and wait for its answer."""
        if query.host is None:
            cached = query.on(await self._cold_start(query.name, query.version))
            if isinstance(cached, InferResponse):
                return cached
        host = query.host
        assert host is not None
        waiting: Awaitable[RowsResult]
        try:
            if host.split_rows > 0 and query.rows > host.split_rows:
                submit = functools.partial(host.batcher.submit, deadline_s=query.deadline)
                waiting = scatter_gather(submit, query.inputs, query.rows, host.split_rows)
                self._metrics.request_split(query.name, -(-query.rows // host.split_rows))
            else:
                waiting = host.batcher.submit(query.inputs, query.rows, query.deadline)
        except ResourceExhaustedError as error:
            query.refused(error)
            raise
        query.submitted()
        try:
            result = await waiting
        except SloserveError as error:
            query.failed(error)
            raise
        except BaseException:  # cancelled: the client went away
            query.failed(None)
            raise
        return query.succeeded(result)

    def _select(self, view: _ModelView, slo: Slo, rows: int, now: float) -> VersionId:
        """The variant for an unpinned query of a registered model that no kept choice serves (admission
        control included)."""
        loaded = view.loaded
        name = loaded.name
        try:
            version, _, cheaper = view.chooser.choose(view.hosts, slo, rows, now)
        except AdmissionRefused as refused:
            self._metrics.request_rejected(name, "slo_overloaded")
            host = view.hosts.get(VersionId(refused.variant))
            if host is not None:
                host.refused(rows)
            else:
                key = (name, VersionId(refused.variant))
                self._wanted[key] = self._wanted.get(key, 0) + rows
            raise
        except SloserveError:
            self._metrics.request_rejected(name, "slo_impossible")
            raise
        self._metrics.variant_selected(name, version)
        if cheaper is not None:  # a cheaper accurate-enough variant is not running: the autoscaler should start it
            key = (name, cheaper)
            self._wanted[key] = self._wanted.get(key, 0) + rows
        return version

    @staticmethod
    def _response(
        request: InferRequest,
        host: VersionHost,
        output_names: tuple[str, ...],
        result: RowsResult,
        cached: bool = False,
        slo_met: bool = True,
    ) -> InferResponse:
        config = host.config
        outputs = []
        for out_name in output_names:
            array = result.outputs[out_name]
            spec = config.output(out_name)
            datatype = spec.datatype if spec is not None else "BYTES"
            outputs.append(Tensor(out_name, datatype, array.shape, array))
        # milliseconds to 4 places: an integer rounding and a division print the same as round(ms, 4), whose
        # decimal rounding cost 0.3 µs each (`benchmarks/requestpath.py`, session 27)
        parameters: dict[str, Any] = {
            "variant": host.version,
            "queue_ms": round(result.queue_s * 1e7) / 1e4,
            "compute_ms": round(result.compute_s * 1e7) / 1e4,
            "slo_met": slo_met,
        }
        if cached:
            parameters["cache"] = True
        return InferResponse(
            model_name=request.model_name,
            model_version=host.version,
            id=request.id,
            outputs=outputs,
            parameters=parameters,
        )

    # -- statistics and repository extensions -----------------------------------------------------

    def model_stats(self, name: str | None = None, version: str | None = None) -> dict[str, Any]:
        if name:
            view, wanted = self._view(name, version)
            if version:
                hosts = [view.hosts[wanted]] if wanted in view.hosts else []
            else:
                hosts = list(view.hosts.values())
        else:
            hosts = [h for n in sorted(self._models) for h in self._models[n].hosts.values()]
        for host in hosts:
            host.flush()
        return {"model_stats": [h.stats.to_dict() for h in hosts]}

    def variants(self, name: str) -> list[dict[str, Any]]:
        self._view(name, None)
        return self._require_control().variants(name)

    def _require_control(self) -> RepositoryControl:
        if self._control is None:
            raise UnavailableError("the model repository is not available")
        return self._control

    def repository_index(self, ready_only: bool = False) -> list[dict[str, Any]]:
        entries = []
        for status in self._require_control().index():
            if ready_only and status.state is not ModelState.READY:
                continue
            entry: dict[str, Any] = {"name": status.name, "state": status.state.value, "reason": status.reason}
            if status.versions:
                entry["version"] = status.versions[-1]
            entries.append(entry)
        return entries

    async def load_model(self, name: str) -> None:
        await self._require_control().load(name)

    async def unload_model(self, name: str) -> None:
        await self._require_control().unload(name)


Answer = Callable[[InferResponse | SloserveError], None]
"""Where :meth:`DataPlane.infer_soon` hands a query's response, or the error it failed with."""


class Pending(Protocol):
    """A query :meth:`DataPlane.infer_soon` left waiting in a batcher's queue."""

    def cancel(self) -> None:
        """Its client went away: it is not computed if its batch has not been taken yet, nor answered, and it
        counts as a failure with reason ``cancelled`` (as a gRPC call the client cancels)."""
        ...


class _Query:
    """One inference from its checks to its answer: what the data plane does with its result (metrics,
    statistics, the cache, the response). Also the batcher's reply for :meth:`DataPlane.infer_soon`, carrying on
    in the batcher's turn (:class:`~sloserve.dataplane.batcher.Reply`)."""

    __slots__ = (
        "_done", "_dp", "answer", "deadline", "host", "inputs", "key", "name", "output_names", "request", "rows",
        "slo", "started", "version",
    )  # fmt: skip

    def __init__(
        self,
        dp: DataPlane,
        request: InferRequest,
        name: str,
        version: VersionId,
        slo: Slo,
        started: float,
        inputs: Arrays,
        rows: int,
        output_names: tuple[str, ...],
        deadline: float | None,
    ) -> None:
        self._dp = dp
        self.request = request
        self.name = name
        self.version = version
        self.slo = slo
        self.started = started
        self.inputs = inputs
        self.rows = rows
        self.output_names = output_names
        self.deadline = deadline
        self.host: VersionHost | None = None
        self.key: bytes | None = None
        self.answer: Answer | None = None
        self._done = False

    def on(self, host: VersionHost) -> InferResponse | _Query:
        """Served by ``host``: its cached answer if it has one, else this query, to queue."""
        self.host = host
        host.routed(self.rows)
        if not host.config.cache.enabled:
            return self
        dp, name = self._dp, self.name
        key = self.key = input_digest(self.inputs)
        cached = dp._cache.lookup(name, host.version, key)
        dp._metrics.cache_lookup(name, cached is not None)
        if cached is None:
            return self
        elapsed = dp._clock.now() - self.started
        dp._metrics.request_started(name)
        dp._metrics.request_succeeded(name, self.rows, elapsed, 0.0)
        host.stats.request_succeeded(self.rows, elapsed, 0.0, 0.0)
        return dp._response(self.request, host, self.output_names, RowsResult(cached, 0.0, 0.0), cached=True)

    def refused(self, error: SloserveError) -> None:
        """Its batcher refused it (a full queue)."""
        self._dp._metrics.request_rejected(self.name, error.code.value)
        assert self.host is not None
        self.host.stats.request_failed(0.0)

    def submitted(self) -> None:
        self._dp._metrics.request_started(self.name)
        self._dp._loop_lag.in_flight += 1

    def succeeded(self, result: RowsResult) -> InferResponse:
        dp, host = self._dp, self.host
        assert host is not None
        dp._loop_lag.in_flight -= 1
        now = dp._clock.now()
        elapsed = now - self.started
        met = _slo_met(self.slo, elapsed, host.profile)
        host.answered(self.rows, elapsed, result.queue_s, result.compute_s, met, now)
        if self.key is not None:
            dp._cache.store(self.name, host.running, self.key, result.outputs)
            dp._metrics.cache_size(self.name, dp._cache.nbytes(self.name))
        return dp._response(self.request, host, self.output_names, result, slo_met=met)

    def failed(self, error: SloserveError | None) -> None:
        """It failed with ``error`` after it was queued (None: its caller went away)."""
        dp = self._dp
        dp._loop_lag.in_flight -= 1
        elapsed = dp._clock.now() - self.started
        if error is None:
            dp._metrics.request_failed(self.name, "cancelled", elapsed)
            return
        dp._metrics.request_failed(self.name, error.code.value, elapsed)
        assert self.host is not None
        self.host.stats.request_failed(elapsed)

    # -- the batcher's reply (infer_soon) ---------------------------------------------------------

    def cancel(self) -> None:
        """:meth:`Pending.cancel`: done, so the batcher skips it when it takes its batch."""
        if self._done:
            return
        self._done = True
        self.answer = None
        self.failed(None)

    def done(self) -> bool:
        return self._done

    def set_result(self, result: RowsResult, /) -> None:
        self._done = True
        try:
            outcome: InferResponse | SloserveError = self.succeeded(result)
        except Exception as error:  # a bug: still answer, and never into the batcher's loop
            log.exception("unexpected error answering a query of %s", self.name)
            outcome = InternalError(f"answering failed: {error!r}")
        self._hand_over(outcome)

    def set_exception(self, exception: BaseException, /) -> None:
        self._done = True
        error = exception if isinstance(exception, SloserveError) else InternalError(f"failed: {exception!r}")
        self.failed(error)
        self._hand_over(error)

    def _hand_over(self, outcome: InferResponse | SloserveError) -> None:
        answer, self.answer = self.answer, None  # no cycle left through the transport's callback
        assert answer is not None
        try:
            answer(outcome)
        except Exception:
            log.exception("unexpected error handing over an answer of %s", self.name)


def _loop_overloaded(
    waited_ms: float,
    stall_ms: float,
    lag_ms: float,
    slo_ms: float,
    turns: int = LAG_TURNS,
    in_flight: int = 0,
    backlog_ms: float = 0.0,
) -> str:
    """Why a query is refused before any work: the front end alone would make it miss its SLO."""
    if waited_ms >= slo_ms:  # spent before it could even be read: no work can save it
        return (
            f"overloaded: the request waited {waited_ms:.1f} ms for the server to read it, past its {slo_ms:g} ms "
            "latency SLO; retry later"
        )
    if backlog_ms > turns * lag_ms:
        return (
            f"overloaded: the server's event loop is saturated, with {in_flight} requests in flight ahead of this one"
            f" (~{backlog_ms:.1f} ms of its work), past its {slo_ms:g} ms latency SLO; retry later"
        )
    if stall_ms > 0:
        return (
            f"overloaded: the server's event loop was held up for ~{stall_ms:.0f} ms without working (its process "
            f"stopped by the host, or waiting on another thread) just before it read the request, which may have "
            f"waited all that time, and it runs ~{lag_ms:.1f} ms behind: past the request's {slo_ms:g} ms latency "
            "SLO; retry"
        )
    waits = "a turn for the batch, another for the answer" if turns > 1 else "a turn for the batch and its answer"
    return (
        f"overloaded: the server's event loop runs ~{lag_ms:.1f} ms behind ({waits}), and the request waited "
        f"{waited_ms:.1f} ms to be read: past its {slo_ms:g} ms latency SLO; retry later"
    )


def _reference_accuracy(loaded: LoadedModel) -> float | None:
    """The accuracy of the model's default (reference) variant, when measured."""
    profile = loaded.profiles.get(loaded.default)
    return profile.accuracy if profile is not None else None


def _slo_met(slo: Slo, elapsed_s: float, profile: VariantProfile | None) -> bool:
    """Answered within its latency SLO by a variant measured at least as accurate as it asked (an accuracy never
    measured meets no floor)."""
    fast = slo.latency_ms is None or elapsed_s * 1e3 <= slo.latency_ms
    accurate = slo.min_accuracy is None or (
        profile is not None and profile.accuracy is not None and profile.accuracy >= slo.min_accuracy
    )
    return fast and accurate
