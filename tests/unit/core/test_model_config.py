from __future__ import annotations

from typing import Any

import pytest

from sloserve.errors import InvalidArgumentError
from sloserve.model_config import parse_model_config

GOOD: dict[str, Any] = {
    "name": "digits",
    "platform": "onnx_onnxv1",
    "max_batch_size": 64,
    "inputs": [{"name": "input", "datatype": "FP32", "shape": [-1, 64]}],
    "outputs": [{"name": "probabilities", "datatype": "FP32", "shape": [-1, 10]}],
    "dynamic_batching": {"max_queue_delay_us": 100, "max_queue_size": 16},
    "instance_count": 2,
}


def test_a_good_config_round_trips() -> None:
    config = parse_model_config(GOOD)
    assert config.batching.max_queue_delay_us == 100
    assert config.instance_count == 2
    assert parse_model_config(config.to_dict()) == config


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"platform": "tensorflow"}, "platform"),
        ({"max_batch_size": -1}, "max_batch_size"),
        ({"instance_count": 0}, "instance_count"),
        ({"inputs": []}, "inputs"),
        ({"inputs": [{"name": "input", "datatype": "FLOAT", "shape": [-1, 64]}]}, "datatype"),
        ({"inputs": [{"name": "input", "datatype": "FP32", "shape": [64]}]}, "first dimension must be -1"),
        ({"inputs": [{"name": "input", "datatype": "FP32", "shape": [-1, -2]}]}, "shape"),
        ({"outputs": [{"name": "a", "datatype": "FP32", "shape": [-1]}] * 2}, "duplicate"),
        ({"dynamic_batching": {"max_queue_size": 0}}, "max_queue_size"),
        ({"dynamic_batching": {"delay": 1}}, "unknown keys"),
        ({"colour": "blue"}, "unknown keys"),
        ({"name": "bad/name"}, "invalid model name"),
    ],
)
def test_bad_configs_are_reported_with_the_field(change: dict[str, Any], message: str) -> None:
    with pytest.raises(InvalidArgumentError, match=message):
        parse_model_config({**GOOD, **change})


def test_unbatched_models_keep_fixed_shapes() -> None:
    raw = {**GOOD, "max_batch_size": 0, "inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 64]}]}
    assert parse_model_config(raw).inputs[0].shape == (1, 64)
