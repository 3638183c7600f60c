"""A request's SLO from its parameters: defaults, checks, and the per-model memory of parsed classes."""

from __future__ import annotations

from typing import Any

import pytest

from sloserve.dataplane.slo import DEFAULT_ACCURACY_TOLERANCE, RequestSlos, request_slo
from sloserve.errors import InvalidArgumentError
from sloserve.model_config import SloConfig
from sloserve.policy.selection import Slo


def test_defaults_apply_when_the_request_states_none() -> None:
    assert request_slo({}, SloConfig(20.0, None), 0.98) == Slo(20.0, pytest.approx(0.98 - DEFAULT_ACCURACY_TOLERANCE))
    assert request_slo({}, SloConfig(None, 0.9), 0.98) == Slo(None, 0.9)
    assert request_slo({"latency_slo_ms": "5", "min_accuracy": 0.95}, SloConfig(), None) == Slo(5.0, 0.95)


@pytest.mark.parametrize(
    ("parameters", "message"),
    [
        ({"latency_slo_ms": 0}, "must be > 0"),
        ({"latency_slo_ms": True}, "must be a number"),
        ({"latency_slo_ms": "soon"}, "must be a number"),
        ({"min_accuracy": 1.5}, "between 0 and 1"),
        ({"best_effort": "maybe"}, "true or false"),
        ({"latency_slo_ms": [5]}, "must be a number"),
        ({"latency_slo_ms": "inf"}, "must be a finite number"),
        ({"latency_slo_ms": "1e400"}, "must be a finite number"),
        ({"min_accuracy": "nan"}, "must be a finite number"),
        ({"latency_slo_ms": "5_000"}, "must be a number"),
    ],
)
def test_bad_parameters_are_refused_every_time(parameters: dict[str, Any], message: str) -> None:
    slos = RequestSlos(SloConfig(), None)
    for _ in range(2):  # a refusal is never remembered as an answer
        with pytest.raises(InvalidArgumentError, match=message):
            slos(parameters)


def test_a_class_seen_before_is_not_parsed_again_and_types_are_told_apart() -> None:
    slos = RequestSlos(SloConfig(latency_slo_ms=50.0), 0.97)
    first = slos({"latency_slo_ms": 5, "min_accuracy": 0.95})
    assert first == Slo(5.0, 0.95)
    assert slos({"min_accuracy": 0.95, "latency_slo_ms": 5, "other": "x"}) is first  # same class: remembered
    assert slos({"latency_slo_ms": 1, "min_accuracy": 0.95}) == Slo(1.0, 0.95)
    with pytest.raises(InvalidArgumentError, match="must be a number"):
        slos({"latency_slo_ms": True, "min_accuracy": 0.95})  # equal to 1 as a key, but not a number
    assert slos({"best_effort": 1}) == Slo(50.0, pytest.approx(0.96), best_effort=True)
    assert slos({"best_effort": True}) == Slo(50.0, pytest.approx(0.96), best_effort=True)
    assert slos({}) == Slo(50.0, pytest.approx(0.96))


def test_a_floor_on_an_accuracy_never_measured_is_refused_unless_best_effort() -> None:
    """A model added without a validation set has no measured accuracy: no variant can be shown to meet a
    min_accuracy, so it is refused as an SLO no variant meets is (a configured default is the operator's)."""
    slos = RequestSlos(SloConfig(latency_slo_ms=50.0), None, accuracy_known=False)
    for _ in range(2):
        with pytest.raises(InvalidArgumentError, match=r"accuracy was never measured.*--validation"):
            slos({"min_accuracy": 0.9})
    assert slos({"min_accuracy": 0.9, "best_effort": True}) == Slo(50.0, 0.9, best_effort=True)
    assert slos({"latency_slo_ms": 5}) == Slo(5.0, None)
    assert RequestSlos(SloConfig(min_accuracy=0.9), None, accuracy_known=False)({}) == Slo(None, 0.9)
