from __future__ import annotations

import dataclasses
import pickle
from typing import Any

import pytest

from sloserve.errors import InvalidArgumentError
from sloserve.model_config import TensorSpec, parse_model_config

GOOD: dict[str, Any] = {
    "name": "digits",
    "platform": "onnx_onnxv1",
    "max_batch_size": 64,
    "inputs": [{"name": "input", "datatype": "FP32", "shape": [-1, 64]}],
    "outputs": [{"name": "probabilities", "datatype": "FP32", "shape": [-1, 10]}],
    "dynamic_batching": {"max_queue_delay_us": 100, "max_queue_size": 16, "max_slo_hold_us": 500},
    "instance_count": 2,
}


def test_a_good_config_round_trips() -> None:
    config = parse_model_config(GOOD)
    assert config.batching.max_queue_delay_us == 100
    assert config.batching.max_slo_hold_us == 500
    assert parse_model_config({**GOOD, "dynamic_batching": {}}).batching.max_slo_hold_us == 2000  # the default
    assert config.instance_count == 2
    assert config.replica_kind == "auto"  # the default
    assert parse_model_config(config.to_dict()) == config
    assert parse_model_config({**GOOD, "replica_kind": "process"}).replica_kind == "process"


def test_tensors_are_found_by_name_in_copies_and_pickles_too() -> None:
    """``input`` / ``output`` look names up in maps built with the config (every request does): a replaced
    copy gets its own, a pickled one (a worker's) works, and the maps take no part in equality or repr."""
    config = parse_model_config(GOOD)
    assert config.input("input") == config.inputs[0] and config.input("probabilities") is None
    assert config.output("probabilities") == config.outputs[0] and config.output("input") is None
    two = dataclasses.replace(config, outputs=(*config.outputs, TensorSpec("label", "INT64", (-1,))))
    assert two.output("label") == TensorSpec("label", "INT64", (-1,)) and config.output("label") is None
    assert pickle.loads(pickle.dumps(two)).output("label") == two.outputs[1]
    assert two != config and dataclasses.replace(two, outputs=config.outputs) == config
    assert "_by_name" not in repr(config) and hash(config) == hash(parse_model_config(GOOD))


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
        ({"dynamic_batching": {"max_slo_hold_us": -1}}, "max_slo_hold_us"),
        ({"dynamic_batching": {"delay": 1}}, "unknown keys"),
        ({"colour": "blue"}, "unknown keys"),
        ({"replica_kind": "thread"}, "replica_kind: expected one of"),
        ({"name": "bad/name"}, "invalid model name"),
    ],
)
def test_bad_configs_are_reported_with_the_field(change: dict[str, Any], message: str) -> None:
    with pytest.raises(InvalidArgumentError, match=message):
        parse_model_config({**GOOD, **change})


def test_unbatched_models_keep_fixed_shapes() -> None:
    raw = {**GOOD, "max_batch_size": 0, "inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 64]}]}
    assert parse_model_config(raw).inputs[0].shape == (1, 64)


def test_cache_hedging_and_default_slo_sections() -> None:
    raw = {
        **GOOD,
        "cache": {"enabled": True, "ttl_s": 5},
        "hedging": {"quantile": 0.99, "budget": 0.1},
        "default_slo": {"latency_slo_ms": 20, "min_accuracy": 0.9},
    }
    config = parse_model_config(raw)
    assert config.cache.enabled and config.cache.ttl_s == 5.0
    assert config.hedging.quantile == 0.99 and config.hedging.enabled
    assert config.default_slo.latency_slo_ms == 20.0 and config.default_slo.min_accuracy == 0.9
    assert parse_model_config(config.to_dict()) == config


@pytest.mark.parametrize(
    ("section", "message"),
    [
        ({"cache": {"enabled": "yes"}}, "cache.enabled"),
        ({"cache": {"size": 1}}, "unknown keys"),
        ({"hedging": {"quantile": 0.2}}, "hedging.quantile"),
        ({"default_slo": {"latency_slo_ms": 0}}, "positive"),
        ({"default_slo": {"min_accuracy": 1.5}}, "min_accuracy"),
        ({"default_slo": {"latency_slo_ms": "fast"}}, "latency_slo_ms"),
    ],
)
def test_bad_sections_name_the_field(section: dict[str, Any], message: str) -> None:
    with pytest.raises(InvalidArgumentError, match=message):
        parse_model_config({**GOOD, **section})
