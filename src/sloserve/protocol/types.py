"""Protocol-neutral inference request and response.

Transports decode their wire format into these and encode these back; the data
plane only ever sees these. ``Tensor.data`` is a numpy array already in
``shape``; BYTES tensors are object arrays of ``bytes``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from sloserve.policy.selection import Slo


@dataclass(slots=True)
class Tensor:
    name: str
    datatype: str
    shape: tuple[int, ...]
    data: np.ndarray[Any, Any]
    parameters: dict[str, Any] = field(default_factory=dict)


@dataclass(slots=True)
class RequestedOutput:
    name: str
    parameters: dict[str, Any] = field(default_factory=dict)


@dataclass(slots=True)
class InferRequest:
    model_name: str
    inputs: list[Tensor]
    model_version: str | None = None
    id: str | None = None
    outputs: list[RequestedOutput] = field(default_factory=list)
    """Requested outputs; empty means every output of the model."""
    parameters: dict[str, Any] = field(default_factory=dict)
    received_s: float | None = None
    """When the server received the request (the data plane's clock; None: when the data plane sees it).
    Latency SLOs count from here, so time spent waiting for a busy event loop to parse it counts."""
    slo: Slo | None = None
    """Its SLO as the transport's admission check (the codecs' ``admit``) read it from ``parameters`` before
    the tensors were decoded; None: not checked yet (the data plane checks it then)."""


Admit = Callable[[Mapping[str, Any]], Slo]
"""An early admission check a transport runs on a request's parameters, as soon as it has them and before it
decodes the tensors: what it raises refuses the request at the cost of parsing it; what it returns, the
request's SLO, goes into :attr:`InferRequest.slo` (the data plane's ``DataPlane.admit``)."""


@dataclass(slots=True)
class InferResponse:
    model_name: str
    outputs: list[Tensor]
    model_version: str | None = None
    id: str | None = None
    parameters: dict[str, Any] = field(default_factory=dict)
