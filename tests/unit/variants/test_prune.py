"""Structured pruning: hidden units really go (smaller weights), the numbers follow, the rest is zeroed."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from sloserve.model_config import ModelConfig, TensorSpec
from sloserve.runtime.graph import TARGET_OPSET, check_config
from sloserve.variant import Task
from sloserve.variants import RECIPES, RecipeInput, RecipeSkipped
from sloserve.variants.prune import hidden_widths
from tests.unit.variants.kit import Outcome, Reference, predict, relative_error

Array = np.ndarray[Any, Any]


def _weights(path: Path) -> dict[str, Array]:
    return {init.name: numpy_helper.to_array(init) for init in onnx.load(str(path)).graph.initializer}


def _parameters(path: Path) -> int:
    return sum(array.size for array in _weights(path).values())


@pytest.mark.parametrize(("name", "kept"), [("pruned-50", 32), ("pruned-75", 16), ("pruned-90", 6)])
def test_digits_hidden_layer_really_shrinks(
    name: str, kept: int, digits: Reference, digits_variants: dict[str, Outcome]
) -> None:
    outcome = digits_variants[name]
    assert outcome.built is not None
    reference, pruned = _weights(digits.path), _weights(outcome.path)
    assert reference["coefficient"].shape == (64, 64) and reference["coefficient1"].shape == (64, 10)
    assert pruned["coefficient"].shape == (64, kept)  # columns of W1: the hidden units
    assert pruned["intercepts"].shape == (1, kept)
    assert pruned["coefficient1"].shape == (kept, 10)  # rows of W2
    assert pruned["intercepts1"].shape == (1, 10)
    assert hidden_widths(onnx.load(str(outcome.path))) == [kept]
    removed = (64 - kept) * (64 + 1 + 10)
    assert _parameters(outcome.path) == _parameters(digits.path) - removed
    details = outcome.built.details
    assert details["hidden_units_reference"] == [64] and details["hidden_units"] == [kept]
    assert details["dense_weights_reference"] == 64 * 64 + 64 * 10
    assert details["dense_weights"] == 64 * kept + kept * 10
    assert details["structured_fraction"] >= details["sparsity"]
    assert details["unstructured_fraction"] == 0.0  # both matrices already lost the fraction by structure
    assert details["refit_layers"] == 1


def test_pruned_50_holds_up_on_rows_it_was_not_fit_on(digits: Reference, tmp_path: Path) -> None:
    assert digits.y is not None
    fit, held_out, labels = digits.x[::2], digits.x[1::2], digits.y[1::2]
    path = tmp_path / "pruned.onnx"
    RECIPES["pruned-50"](digits.source({"input": fit}), path)
    want, have = predict(digits.path, held_out)["label"], predict(path, held_out)["label"]
    assert np.mean(have == want) >= 0.95
    assert np.mean(have == labels) >= np.mean(want == labels) - 0.03


def test_without_calibration_units_are_cut_without_refit(digits: Reference, tmp_path: Path) -> None:
    path = tmp_path / "pruned.onnx"
    built = RECIPES["pruned-50"](digits.source({}), path)
    assert built.details["hidden_units"] == [32]
    assert built.details["refit_layers"] == 0 and built.details["fit_rows"] == 0
    want, have = predict(digits.path, digits.x)["label"], predict(path, digits.x)["label"]
    assert np.mean(have == want) >= 0.85
    check_config(digits.config, path)


# ---- hand-built graphs: Gemm with transB/alpha/beta, MatMul+Add, branches ---------------------------


def _save(path: Path, nodes: list[onnx.NodeProto], weights: dict[str, Array], n_in: int, n_out: int) -> ModelConfig:
    graph = helper.make_graph(
        nodes,
        "mlp",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", n_in])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, ["N", n_out])],
        initializer=[numpy_helper.from_array(w.astype(np.float32), name) for name, w in weights.items()],
    )
    opsets = [helper.make_opsetid("", TARGET_OPSET)]
    model = helper.make_model(graph, opset_imports=opsets, ir_version=helper.find_min_ir_version_for(opsets))
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return ModelConfig(
        name="mlp",  # type: ignore[arg-type]
        inputs=(TensorSpec("input", "FP32", (-1, n_in)),),
        outputs=(TensorSpec("output", "FP32", (-1, n_out)),),
    )


def _mixed_mlp_with_dead_units(path: Path) -> ModelConfig:
    """Gemm(transB, alpha, beta) -> Tanh -> MatMul+Add -> Relu -> Gemm; half of each hidden layer is dead.

    A dead unit has zero incoming weights and bias and zero outgoing weights, so
    it never contributes: pruning exactly those must not change the output.
    """
    rng = np.random.default_rng(5)
    w1 = rng.standard_normal((8, 5))  # transB: [out, in]
    b1 = rng.standard_normal(8)
    w2 = rng.standard_normal((8, 6))
    b2 = rng.standard_normal((1, 6))
    w3 = rng.standard_normal((6, 3))
    b3 = rng.standard_normal(3)
    for dead in (1, 3, 5, 7):
        w1[dead], b1[dead], w2[dead] = 0.0, 0.0, 0.0
    for dead in (0, 2, 4):
        w2[:, dead], b2[0, dead], w3[dead] = 0.0, 0.0, 0.0
    nodes = [
        helper.make_node("Gemm", ["input", "w1", "b1"], ["h1"], transB=1, alpha=0.5, beta=2.0),
        helper.make_node("Tanh", ["h1"], ["a1"]),
        helper.make_node("MatMul", ["a1", "w2"], ["m2"]),
        helper.make_node("Add", ["b2", "m2"], ["h2"]),  # bias first: either order is a bias
        helper.make_node("Relu", ["h2"], ["a2"]),
        helper.make_node("Gemm", ["a2", "w3", "b3"], ["output"]),
    ]
    weights = {"w1": w1, "b1": b1, "w2": w2, "b2": b2, "w3": w3, "b3": b3}
    return _save(path, nodes, weights, n_in=5, n_out=3)


@pytest.mark.parametrize("calibrated", [False, True])
def test_pruning_dead_units_changes_nothing(tmp_path: Path, calibrated: bool) -> None:
    reference = tmp_path / "mixed.onnx"
    config = _mixed_mlp_with_dead_units(reference)
    x = np.random.default_rng(0).standard_normal((200, 5)).astype(np.float32)
    source = RecipeInput(reference, config, {"input": x} if calibrated else {}, Task.REGRESSION)
    path = tmp_path / "pruned.onnx"
    built = RECIPES["pruned-50"](source, path)
    weights = _weights(path)
    assert weights["w1"].shape == (4, 5) and weights["b1"].shape == (4,)  # transB: rows are units
    assert weights["w2"].shape == (4, 3) and weights["b2"].shape == (1, 3)
    assert weights["w3"].shape == (3, 3)
    assert built.details["hidden_units"] == [4, 3]
    want, have = predict(reference, x)["output"], predict(path, x)["output"]
    if calibrated:  # refit by ridge least squares: exact up to the ridge's slight shrinkage
        assert relative_error(have, want) < 2e-3
        assert built.details["refit_layers"] == 2
    else:  # cut only
        np.testing.assert_allclose(have, want, rtol=1e-5, atol=1e-5)


def test_layers_outside_a_chain_are_magnitude_pruned(tmp_path: Path) -> None:
    """``a`` feeds two layers, so neither link from it can be cut: A and D are zeroed instead."""
    rng = np.random.default_rng(9)
    weights = {name: rng.standard_normal(shape) for name, shape in {"wa": (16, 8), "wb": (8, 6), "wc": (6, 4)}.items()}
    weights["wd"] = rng.standard_normal((8, 4))
    nodes = [
        helper.make_node("Gemm", ["input", "wa"], ["ha"]),
        helper.make_node("Relu", ["ha"], ["a"]),
        helper.make_node("Gemm", ["a", "wb"], ["hb"]),
        helper.make_node("Relu", ["hb"], ["b"]),
        helper.make_node("Gemm", ["b", "wc"], ["c"]),
        helper.make_node("Gemm", ["a", "wd"], ["d"]),
        helper.make_node("Add", ["c", "d"], ["output"]),
    ]
    reference = tmp_path / "branches.onnx"
    config = _save(reference, nodes, weights, n_in=16, n_out=4)
    x = rng.standard_normal((100, 16)).astype(np.float32)
    path = tmp_path / "pruned.onnx"
    built = RECIPES["pruned-75"](RecipeInput(reference, config, {"input": x}, Task.REGRESSION), path)
    pruned = _weights(path)
    assert pruned["wb"].shape == (8, 2) and pruned["wc"].shape == (2, 4)  # the one link: 6 -> 2 units
    assert pruned["wa"].shape == (16, 8) and np.count_nonzero(pruned["wa"]) == 128 - 96
    assert pruned["wd"].shape == (8, 4) and np.count_nonzero(pruned["wd"]) == 32 - 24
    kept = np.abs(pruned["wa"][pruned["wa"] != 0])
    assert kept.min() >= np.sort(np.abs(weights["wa"]).ravel())[96 - 1]  # the smallest went
    # The link kept 2 of 6 units: 2/3 of wb and wc are gone, and magnitude pruning tops them up to 3/4.
    assert np.count_nonzero(pruned["wb"]) == 16 - (36 - 32) and np.count_nonzero(pruned["wc"]) == 8 - (18 - 16)
    assert built.details["unstructured_fraction"] == round((96 + 24 + 4 + 2) / (128 + 48 + 24 + 32), 4)
    assert built.details["structured_fraction"] == round((32 + 16) / (128 + 48 + 24 + 32), 4)
    assert built.details["hidden_units"] == [2]
    check_config(config, path)


def test_a_single_dense_layer_is_skipped(tmp_path: Path) -> None:
    reference = tmp_path / "linear.onnx"
    config = _save(
        reference,
        [helper.make_node("Gemm", ["input", "w"], ["output"])],
        {"w": np.ones((4, 2))},
        n_in=4,
        n_out=2,
    )
    with pytest.raises(RecipeSkipped, match="no chain of dense layers"):
        RECIPES["pruned-50"](RecipeInput(reference, config, {}, Task.REGRESSION), tmp_path / "pruned.onnx")
