"""The protocol-neutral data plane: every v2 operation, written once.

HTTP and gRPC transports decode their wire format, call a method here and encode
the result; errors are :mod:`sloserve.errors` exceptions that each transport
maps in one place. Loaded models arrive as :class:`CatalogSnapshot` values
published by the control plane (:meth:`DataPlane.apply_catalog`); the request
path only reads ``self._hosts``.
"""

from __future__ import annotations

from typing import Any, Protocol

from sloserve import __version__
from sloserve.catalog import CatalogSnapshot, ModelState, ModelStatus
from sloserve.clock import Clock
from sloserve.dataplane.host import ModelHost
from sloserve.dataplane.validation import check_request
from sloserve.errors import NotFoundError, ResourceExhaustedError, SloserveError, UnavailableError
from sloserve.metrics import ServingMetrics
from sloserve.protocol.types import InferRequest, InferResponse, Tensor
from sloserve.types import ModelName

SERVER_NAME = "sloserve"
EXTENSIONS = ("binary_tensor_data", "model_repository", "statistics")


class RepositoryControl(Protocol):
    """What the data plane needs from the control plane (implemented in ``control/``)."""

    def index(self) -> list[ModelStatus]: ...

    async def load(self, name: str) -> None: ...

    async def unload(self, name: str) -> None: ...


class DataPlane:
    def __init__(self, clock: Clock, metrics: ServingMetrics) -> None:
        self._clock = clock
        self._metrics = metrics
        self._hosts: dict[str, ModelHost] = {}
        self._catalog = CatalogSnapshot()
        self._control: RepositoryControl | None = None
        self._ready = False

    # -- wiring, called by the composition root and the control plane -----------------------------

    def attach_control(self, control: RepositoryControl) -> None:
        self._control = control

    def set_ready(self, ready: bool) -> None:
        self._ready = ready

    async def apply_catalog(self, snapshot: CatalogSnapshot) -> None:
        """Start hosts for newly loaded models; drain and drop those that went away."""
        retired: list[ModelHost] = []
        hosts = dict(self._hosts)
        for name, host in self._hosts.items():
            if snapshot.loaded.get(ModelName(name)) is not host.loaded:
                retired.append(hosts.pop(name))
        for name, loaded in snapshot.loaded.items():
            if name not in hosts:
                host = ModelHost(loaded, self._clock, self._metrics)
                host.start()
                hosts[name] = host
        self._hosts = hosts
        self._catalog = snapshot
        for host in retired:
            await host.close()

    # -- health and metadata ----------------------------------------------------------------------

    def live(self) -> bool:
        return True

    def ready(self) -> bool:
        return self._ready

    def _host(self, name: str, version: str | None = None) -> ModelHost:
        host = self._hosts.get(name)
        if host is None:
            status = self._catalog.statuses.get(ModelName(name))
            if status is None:
                raise NotFoundError(f"unknown model {name!r}")
            detail = f": {status.reason}" if status.reason else ""
            raise UnavailableError(f"model {name!r} is not loaded (state {status.state.value}){detail}")
        host.check_version(version)
        return host

    def model_ready(self, name: str, version: str | None = None) -> bool:
        """True if loaded and serving; False if known but not loaded; NotFoundError otherwise."""
        try:
            self._host(name, version)
        except UnavailableError:
            return False
        return self._ready

    def server_metadata(self) -> dict[str, Any]:
        return {"name": SERVER_NAME, "version": __version__, "extensions": list(EXTENSIONS)}

    def model_metadata(self, name: str, version: str | None = None) -> dict[str, Any]:
        host = self._host(name, version)
        config = host.config
        return {
            "name": config.name,
            "versions": [host.loaded.version],
            "platform": config.platform,
            "inputs": [t.to_dict() for t in config.inputs],
            "outputs": [t.to_dict() for t in config.outputs],
        }

    # -- inference --------------------------------------------------------------------------------

    async def infer(self, request: InferRequest) -> InferResponse:
        name = request.model_name
        host = self._host(name, request.model_version)
        started = self._clock.now()
        inputs, rows, output_names = check_request(request, host.config)
        try:
            waiting = host.batcher.submit(inputs, rows)
        except ResourceExhaustedError as error:
            self._metrics.request_rejected(name, error.code.value)
            host.stats.request_failed(0.0)
            raise
        self._metrics.request_started(name)
        try:
            result = await waiting
        except SloserveError as error:
            elapsed = self._clock.now() - started
            self._metrics.request_failed(name, error.code.value, elapsed)
            host.stats.request_failed(elapsed)
            raise
        except BaseException:  # cancelled: the client went away
            self._metrics.request_failed(name, "cancelled", self._clock.now() - started)
            raise
        elapsed = self._clock.now() - started
        self._metrics.request_succeeded(name, rows, elapsed, result.queue_s)
        host.stats.request_succeeded(rows, elapsed, result.queue_s, result.compute_s)
        config = host.config
        outputs = []
        for out_name in output_names:
            array = result.outputs[out_name]
            spec = config.output(out_name)
            datatype = spec.datatype if spec is not None else "BYTES"
            outputs.append(Tensor(out_name, datatype, array.shape, array))
        return InferResponse(model_name=name, model_version=host.loaded.version, id=request.id, outputs=outputs)

    # -- statistics and repository extensions -----------------------------------------------------

    def model_stats(self, name: str | None = None, version: str | None = None) -> dict[str, Any]:
        hosts = [self._host(name, version)] if name else [self._hosts[n] for n in sorted(self._hosts)]
        return {"model_stats": [h.stats.to_dict() for h in hosts]}

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
