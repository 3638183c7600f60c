from __future__ import annotations

import pickle
import re
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import pytest
from onnx import TensorProto

from sloserve.errors import InvalidArgumentError
from sloserve.model_config import ModelConfig, TensorSpec
from sloserve.runtime.graph import check_config, config_from_signature, is_onnx, read_signature

F, I64, S = TensorProto.FLOAT, TensorProto.INT64, TensorProto.STRING


def _config(inputs: tuple[TensorSpec, ...], outputs: tuple[TensorSpec, ...], max_batch_size: int = 64) -> ModelConfig:
    return ModelConfig(name="m", inputs=inputs, outputs=outputs, max_batch_size=max_batch_size)  # type: ignore[arg-type]


@pytest.fixture
def two_in_two_out(write_identity: Callable[..., Path]) -> Path:
    return write_identity(
        inputs=[("x", F, ["N", 3, 4]), ("ids", I64, ["N"])],
        outputs=[("y", F, ["N", 3, 4]), ("ids_out", I64, ["N"])],
    )


def test_read_signature_from_path_and_bytes(two_in_two_out: Path) -> None:
    expected = (
        (TensorSpec("x", "FP32", (-1, 3, 4)), TensorSpec("ids", "INT64", (-1,))),
        (TensorSpec("y", "FP32", (-1, 3, 4)), TensorSpec("ids_out", "INT64", (-1,))),
    )
    assert read_signature(two_in_two_out) == expected
    assert read_signature(two_in_two_out.read_bytes()) == expected


def test_read_signature_infers_undeclared_output_shapes(identity_model: Callable[..., bytes]) -> None:
    data = identity_model([("s", S, ["batch", 2])], [("t", S, None)])
    assert read_signature(data) == ((TensorSpec("s", "BYTES", (-1, 2)),), (TensorSpec("t", "BYTES", (-1, 2)),))


def test_matching_config_passes_including_wildcards(two_in_two_out: Path) -> None:
    inputs, outputs = read_signature(two_in_two_out)
    check_config(_config(inputs, outputs), two_in_two_out)
    # -1 in the config matches a fixed graph dim; a fixed config dim may narrow a symbolic one;
    # a config may expose a subset of the outputs.
    narrowed = (TensorSpec("x", "FP32", (-1, -1, 4)), TensorSpec("ids", "INT64", (-1,)))
    check_config(_config(narrowed, outputs[:1]), two_in_two_out)
    check_config(_config(inputs, outputs, max_batch_size=0), two_in_two_out)
    fixed_batch = (TensorSpec("x", "FP32", (8, 3, 4)), TensorSpec("ids", "INT64", (8,)))
    check_config(_config(fixed_batch, outputs, max_batch_size=0), two_in_two_out)


def test_every_mismatch_is_reported_at_once(two_in_two_out: Path) -> None:
    config = _config(
        inputs=(
            TensorSpec("x", "FP16", (-1, 3, 5)),  # datatype and a fixed dim differ
            TensorSpec("extra", "FP32", (-1,)),  # not in the graph; graph input "ids" is missing
        ),
        outputs=(
            TensorSpec("y", "FP32", (-1, 12)),  # rank differs
            TensorSpec("nope", "FP32", (-1,)),  # not in the graph
        ),
    )
    with pytest.raises(InvalidArgumentError) as info:
        check_config(config, two_in_two_out)
    message = info.value.message
    assert "(6 problems)" in message
    assert str(two_in_two_out) in message
    for expected in (
        "input 'x': datatype is FP16 in the config, FP32 in the graph",
        "input 'x': dimension 2 is 5 in the config, 4 in the graph",
        "input 'extra' is in the config but not in the graph (graph inputs: ['ids', 'x'])",
        "graph input 'ids' (INT64 [-1]) is missing from the config",
        "output 'y': shape [-1, 12] in the config has rank 2, the graph's [-1, 3, 4] has rank 3",
        "output 'nope' is in the config but not in the graph",
    ):
        assert expected in message


def test_batching_needs_a_symbolic_first_dim(write_identity: Callable[..., Path]) -> None:
    path = write_identity(inputs=[("x", F, [1, 3])], outputs=[("y", F, [1, 3])])
    config = _config((TensorSpec("x", "FP32", (-1, 3)),), (TensorSpec("y", "FP32", (-1, 3)),), max_batch_size=8)
    with pytest.raises(InvalidArgumentError) as info:
        check_config(config, path)
    assert "graph input 'x' has shape [1, 3] with no symbolic batch dimension" in info.value.message
    assert "graph output 'y' has shape [1, 3]" in info.value.message
    check_config(replace(config, max_batch_size=0), path)


def test_config_from_signature_batches_only_symbolic_first_dims() -> None:
    batched = config_from_signature(
        "a", (TensorSpec("x", "FP32", (-1, 3)),), (TensorSpec("y", "FP32", (-1,)),), max_batch_size=32
    )
    assert batched.max_batch_size == 32
    fixed = config_from_signature(
        "b", (TensorSpec("x", "FP32", (1, 3)),), (TensorSpec("y", "FP32", (1,)),), max_batch_size=32
    )
    assert fixed.max_batch_size == 0
    assert fixed.inputs[0].shape == (1, 3)
    scalar_out = config_from_signature("c", (TensorSpec("x", "FP32", (-1, 3)),), (TensorSpec("y", "FP32", ()),))
    assert scalar_out.max_batch_size == 0


def test_non_onnx_sources_are_refused(tmp_path: Path, two_in_two_out: Path) -> None:
    text = tmp_path / "notes.txt"
    text.write_text("hello, not a model")
    pickled = tmp_path / "dict.pkl"
    pickled.write_bytes(pickle.dumps({"weights": [1, 2, 3]}))
    truncated = tmp_path / "truncated.onnx"
    truncated.write_bytes(two_in_two_out.read_bytes()[:40])

    assert is_onnx(two_in_two_out)
    for path in (text, pickled, truncated, tmp_path / "absent.onnx"):
        assert not is_onnx(path)
        with pytest.raises(InvalidArgumentError, match=re.escape(f"{path} is not a loadable ONNX model")):
            read_signature(path)
    with pytest.raises(InvalidArgumentError, match="the ONNX model is not a loadable ONNX model"):
        read_signature(b"garbage")
