"""Distillation: a small student that generalizes like its teacher, or a clear reason to skip."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from sloserve.model_config import ModelConfig, TensorSpec
from sloserve.runtime.graph import TARGET_OPSET, check_config, read_signature
from sloserve.variant import Task
from sloserve.variants import RECIPES, RecipeInput, RecipeSkipped
from tests.unit.variants.kit import Reference, predict

Array = np.ndarray[Any, Any]


def _parameters(path: Path) -> int:
    return sum(numpy_helper.to_array(init).size for init in onnx.load(str(path)).graph.initializer)


def test_student_matches_the_teacher_on_rows_it_never_saw(digits: Reference, tmp_path: Path) -> None:
    """Fit on half the validation rows, score both models on the other half against the true labels."""
    assert digits.y is not None
    fit, held_out, labels = digits.x[::2], digits.x[1::2], digits.y[1::2]
    path = tmp_path / "distilled.onnx"
    built = RECIPES["distilled"](digits.source({"input": fit}), path)
    teacher = float(np.mean(predict(digits.path, held_out)["label"] == labels))
    student_out = predict(path, held_out)
    student = float(np.mean(student_out["label"] == labels))
    assert student >= teacher - 0.05, f"student {student:.3f}, teacher {teacher:.3f}"
    np.testing.assert_array_equal(student_out["label"], student_out["probabilities"].argmax(axis=1))
    assert built.details["student_hidden"] == 16 and built.details["teacher_hidden"] == [64]
    assert built.details["training_rows"] == len(fit) * 11
    assert _parameters(path) < _parameters(digits.path) / 2
    assert read_signature(path) == read_signature(digits.path)


def _model(
    path: Path, inputs: list[tuple[str, int, list[Any]]], outputs: list[tuple[str, int, list[Any]]], nodes: list[Any]
) -> None:
    graph = helper.make_graph(
        nodes,
        "model",
        [helper.make_tensor_value_info(*i) for i in inputs],
        [helper.make_tensor_value_info(*o) for o in outputs],
    )
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", TARGET_OPSET)], ir_version=10), path)


def test_a_regressor_with_a_rank_one_output_is_reproduced(tmp_path: Path) -> None:
    """y = sum(tanh(x @ w)): a smooth target the student can learn; output [-1] stays [-1]."""
    w = np.random.default_rng(1).standard_normal((4, 8)).astype(np.float32) * np.float32(0.5)
    path = tmp_path / "reg.onnx"
    nodes = [
        helper.make_node("MatMul", ["input", "w"], ["h"]),
        helper.make_node("Tanh", ["h"], ["t"]),
        helper.make_node("ReduceSum", ["t", "axes"], ["output"], keepdims=0),
    ]
    _model(path, [("input", TensorProto.FLOAT, ["N", 4])], [("output", TensorProto.FLOAT, ["N"])], nodes)
    model = onnx.load(str(path))
    model.graph.initializer.extend(
        [numpy_helper.from_array(w, "w"), numpy_helper.from_array(np.array([1], dtype=np.int64), "axes")]
    )
    onnx.save(model, str(path))
    config = ModelConfig(
        name="reg",  # type: ignore[arg-type]
        inputs=(TensorSpec("input", "FP32", (-1, 4)),),
        outputs=(TensorSpec("output", "FP32", (-1,)),),
    )
    rng = np.random.default_rng(2)
    x = rng.standard_normal((300, 4)).astype(np.float32)
    variant = tmp_path / "distilled.onnx"
    RECIPES["distilled"](RecipeInput(path, config, {"input": x}, Task.REGRESSION), variant)
    check_config(config, variant)
    unseen = rng.standard_normal((200, 4)).astype(np.float32)
    want, have = predict(path, unseen)["output"], predict(variant, unseen)["output"]
    assert have.shape == (200,) and have.dtype == np.float32
    r2 = 1 - np.sum((have - want) ** 2) / np.sum((want - want.mean()) ** 2)
    assert r2 > 0.9


def _config(inputs: list[TensorSpec], outputs: list[TensorSpec]) -> ModelConfig:
    return ModelConfig(name="m", inputs=tuple(inputs), outputs=tuple(outputs))  # type: ignore[arg-type]


def test_two_inputs_are_skipped(tmp_path: Path) -> None:
    path = tmp_path / "add.onnx"
    _model(
        path,
        [("a", TensorProto.FLOAT, ["N", 3]), ("b", TensorProto.FLOAT, ["N", 3])],
        [("output", TensorProto.FLOAT, ["N", 3])],
        [helper.make_node("Add", ["a", "b"], ["output"])],
    )
    config = _config(
        [TensorSpec("a", "FP32", (-1, 3)), TensorSpec("b", "FP32", (-1, 3))], [TensorSpec("output", "FP32", (-1, 3))]
    )
    x = np.ones((10, 3), dtype=np.float32)
    with pytest.raises(RecipeSkipped, match="one input; this one has 2"):
        RECIPES["distilled"](RecipeInput(path, config, {"a": x, "b": x}, Task.REGRESSION), tmp_path / "d.onnx")


@pytest.mark.parametrize(
    ("spec", "reason"),
    [
        (TensorSpec("input", "INT64", (-1, 64)), "needs an FP32 input"),
        (TensorSpec("input", "FP32", (-1, 8, 8)), "needs an FP32 input"),
    ],
)
def test_inputs_that_are_not_float_rows_are_skipped(
    spec: TensorSpec, reason: str, digits: Reference, tmp_path: Path
) -> None:
    config = _config([spec], list(digits.config.outputs))
    with pytest.raises(RecipeSkipped, match=reason):
        RECIPES["distilled"](RecipeInput(digits.path, config, {}, Task.CLASSIFICATION), tmp_path / "d.onnx")


def test_unreproducible_outputs_and_tasks_are_skipped(digits: Reference, tmp_path: Path) -> None:
    probabilities_only = _config(list(digits.config.inputs), [TensorSpec("probabilities", "FP32", (-1, 10))])
    source = RecipeInput(digits.path, probabilities_only, {"input": digits.x}, Task.CLASSIFICATION)
    with pytest.raises(RecipeSkipped, match="integer label output"):
        RECIPES["distilled"](source, tmp_path / "d.onnx")
    with pytest.raises(RecipeSkipped, match="classification or regression task"):
        RECIPES["distilled"](RecipeInput(digits.path, digits.config, {}, Task.OTHER), tmp_path / "d.onnx")
    with pytest.raises(RecipeSkipped, match="one FP32 output"):  # a classifier's outputs, called a regressor
        RECIPES["distilled"](RecipeInput(digits.path, digits.config, {}, Task.REGRESSION), tmp_path / "d.onnx")


def test_no_calibration_data_is_skipped(digits: Reference, tmp_path: Path) -> None:
    with pytest.raises(RecipeSkipped, match="calibration inputs; there are none"):
        RECIPES["distilled"](digits.source({}), tmp_path / "d.onnx")
