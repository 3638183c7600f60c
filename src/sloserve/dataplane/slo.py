"""A request's SLO from its ``parameters``, over the model's defaults.

Request parameters (HTTP JSON ``parameters`` or gRPC ``InferParameter``):

* ``latency_slo_ms`` (> 0): the answer must leave the server within this many ms;
* ``min_accuracy`` (0-1): only variants at least this accurate may serve it;
* ``best_effort`` (bool): serve the closest variant rather than refuse an SLO none can meet.

Numbers may also come as strings ("0.97"): tritonclient's gRPC client cannot send
float parameters. Defaults when a request states none: the model's
``default_slo`` from its config; without one, no latency bound and, for a
registered model, accuracy within :data:`DEFAULT_ACCURACY_TOLERANCE` of the
``fp32`` reference, so the cheapest variant that is nearly as accurate serves.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from sloserve.errors import InvalidArgumentError
from sloserve.model_config import SloConfig
from sloserve.policy.selection import Slo

DEFAULT_ACCURACY_TOLERANCE = 0.01
LATENCY_SLO = "latency_slo_ms"
MIN_ACCURACY = "min_accuracy"
BEST_EFFORT = "best_effort"


def _number(value: Any, name: str) -> float:
    """A finite number, or a string that spells one as JSON would (Python's own ``5_000`` is not one)."""
    if isinstance(value, bool) or (isinstance(value, str) and "_" in value):
        raise InvalidArgumentError(f"parameter {name} must be a number, got {value!r}")
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise InvalidArgumentError(f"parameter {name} must be a number, got {value!r}") from None
    if not math.isfinite(number):  # "inf", "nan", "1e400": no bound is stated by leaving the parameter out
        raise InvalidArgumentError(f"parameter {name} must be a finite number, got {value!r}")
    return number


def _flag(value: Any, name: str) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in ("true", "false", "1", "0"):
        return value.lower() in ("true", "1")
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    raise InvalidArgumentError(f"parameter {name} must be true or false, got {value!r}")


def request_slo(
    parameters: Mapping[str, Any], default: SloConfig, reference_accuracy: float | None, accuracy_known: bool = True
) -> Slo:
    """The SLO a request states, over the model's defaults. ``accuracy_known``: some variant's accuracy was measured;
    if none was (a model added without a validation set), a ``min_accuracy`` no variant can be shown to meet is
    refused, unless best effort, as an SLO no variant meets is."""
    latency = default.latency_slo_ms
    if LATENCY_SLO in parameters:
        latency = _number(parameters[LATENCY_SLO], LATENCY_SLO)
        if not latency > 0:
            raise InvalidArgumentError(f"parameter {LATENCY_SLO} must be > 0 (milliseconds), got {latency:g}")
    accuracy = default.min_accuracy
    if accuracy is None and reference_accuracy is not None:
        accuracy = max(0.0, reference_accuracy - DEFAULT_ACCURACY_TOLERANCE)
    if MIN_ACCURACY in parameters:
        accuracy = _number(parameters[MIN_ACCURACY], MIN_ACCURACY)
        if not 0.0 <= accuracy <= 1.0:
            raise InvalidArgumentError(f"parameter {MIN_ACCURACY} must be between 0 and 1, got {accuracy:g}")
    best_effort = _flag(parameters[BEST_EFFORT], BEST_EFFORT) if BEST_EFFORT in parameters else False
    if MIN_ACCURACY in parameters and not accuracy_known and not best_effort:
        raise InvalidArgumentError(
            f"parameter {MIN_ACCURACY}: this model's accuracy was never measured, so no variant can be shown to meet "
            "it; register the model with a validation set (`sloserve register PATH --name NAME --validation "
            'FILE.npz`), or send "best_effort": true'
        )
    return Slo(latency_ms=latency, min_accuracy=accuracy, best_effort=best_effort)


class RequestSlos:
    """:func:`request_slo` for one model, remembered per distinct parameter values: clients send a handful of
    SLO classes, and parsing and checking them again costs every query a few µs of the event loop. Values are
    told apart by type too (``true`` is not ``1``); a request that fails the checks is not remembered."""

    _LIMIT = 256

    def __init__(self, default: SloConfig, reference_accuracy: float | None, accuracy_known: bool = True) -> None:
        self._default = default
        self._reference_accuracy = reference_accuracy
        self._accuracy_known = accuracy_known
        self._known: dict[tuple[Any, ...], Slo] = {}

    def __call__(self, parameters: Mapping[str, Any]) -> Slo:
        latency = parameters.get(LATENCY_SLO)
        accuracy = parameters.get(MIN_ACCURACY)
        best_effort = parameters.get(BEST_EFFORT)
        key = (latency, latency.__class__, accuracy, accuracy.__class__, best_effort, best_effort.__class__)
        try:
            slo = self._known.get(key)
        except TypeError:  # an unhashable value: checked (and refused) below, never remembered
            return request_slo(parameters, self._default, self._reference_accuracy, self._accuracy_known)
        if slo is None:
            slo = request_slo(parameters, self._default, self._reference_accuracy, self._accuracy_known)
            if len(self._known) >= self._LIMIT:
                self._known.clear()
            self._known[key] = slo
        return slo
