"""int8 and fp16: what gets quantized or converted, and when there is nothing to do."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from sloserve.model_config import ModelConfig, TensorSpec
from sloserve.runtime.graph import TARGET_OPSET
from sloserve.variant import Task
from sloserve.variants import RECIPES, RecipeInput, RecipeSkipped
from tests.unit.variants.kit import GEMM_LAYERS, Outcome, Reference


def _op_types(path: Path) -> set[str]:
    return {node.op_type for node in onnx.load(str(path)).graph.node}


def _initializer_types(path: Path) -> set[int]:
    return {init.data_type for init in onnx.load(str(path)).graph.initializer}


def test_static_int8_needs_calibration_data(digits: Reference, tmp_path: Path) -> None:
    with pytest.raises(RecipeSkipped, match="needs calibration data"):
        RECIPES["int8-static"](digits.source({}), tmp_path / "int8.onnx")


def test_dynamic_int8_needs_no_calibration_data(digits: Reference, tmp_path: Path) -> None:
    built = RECIPES["int8-dynamic"](digits.source({}), tmp_path / "int8.onnx")
    assert built.details["per_channel"] is False  # nothing to judge per-channel by
    assert "calibration_error" not in built.details


@pytest.mark.parametrize("name", ["int8-dynamic", "int8-static"])
def test_a_graph_without_weights_has_nothing_to_quantize(name: str, tmp_path: Path) -> None:
    graph = helper.make_graph(
        [helper.make_node("Relu", ["input"], ["output"])],
        "relu",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 3])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, ["N", 3])],
    )
    path = tmp_path / "relu.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", TARGET_OPSET)], ir_version=10), path)
    config = ModelConfig(
        name="relu",  # type: ignore[arg-type]
        inputs=(TensorSpec("input", "FP32", (-1, 3)),),
        outputs=(TensorSpec("output", "FP32", (-1, 3)),),
    )
    x = np.ones((4, 3), dtype=np.float32)
    with pytest.raises(RecipeSkipped, match="nothing to quantize"):
        RECIPES[name](RecipeInput(path, config, {"input": x}, Task.OTHER), tmp_path / "int8.onnx")


def test_dynamic_int8_covers_gemm_layers(gemm_variants: dict[str, Outcome]) -> None:
    outcome = gemm_variants["int8-dynamic"]
    assert outcome.built is not None
    assert outcome.built.details["quantized_nodes"] == GEMM_LAYERS + 1
    ops = _op_types(outcome.path)
    assert "MatMulInteger" in ops and "Gemm" not in ops  # every Gemm became an int8 MatMul
    assert TensorProto.INT8 in _initializer_types(outcome.path)


@pytest.mark.parametrize("reference", ["digits", "gemm"])
def test_static_int8_is_qdq_with_int8_weights(
    reference: str, digits_variants: dict[str, Outcome], gemm_variants: dict[str, Outcome]
) -> None:
    outcome = (digits_variants if reference == "digits" else gemm_variants)["int8-static"]
    assert outcome.built is not None
    details = outcome.built.details
    assert {"QuantizeLinear", "DequantizeLinear"} <= _op_types(outcome.path)
    assert TensorProto.INT8 in _initializer_types(outcome.path)
    assert details["format"] == "QDQ" and details["calibration_rows"] in (450, 300)
    chosen = details["calibration_error_per_channel" if details["per_channel"] else "calibration_error_per_tensor"]
    assert details["calibration_error"] == chosen < 0.1
    if details["per_channel"]:  # kept only when clearly better than per-tensor
        assert details["calibration_error_per_channel"] < 0.9 * details["calibration_error_per_tensor"]


def test_fp16_stores_half_precision_weights_behind_fp32_io(digits_variants: dict[str, Outcome]) -> None:
    outcome = digits_variants["fp16"]
    assert outcome.built is not None and outcome.built.meant_for == "gpu"
    model = onnx.load(str(outcome.path))
    matmul_weights = {node.input[1] for node in model.graph.node if node.op_type == "MatMul"}
    weights = {init.name: init.data_type for init in model.graph.initializer}
    assert matmul_weights and all(weights[name] == TensorProto.FLOAT16 for name in matmul_weights)
    assert model.graph.input[0].type.tensor_type.elem_type == TensorProto.FLOAT
    assert "Cast" in _op_types(outcome.path)  # FP32 in, FP16 inside, FP32 out
