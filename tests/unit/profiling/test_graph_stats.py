"""graph_stats: exact FLOP and parameter counts on small graphs built here."""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from sloserve.errors import InvalidArgumentError
from sloserve.profiling.graph_stats import graph_stats, read_graph_stats

Array = np.ndarray[Any, Any]
RNG = np.random.default_rng(0)


def weight(name: str, shape: Sequence[int], dtype: Any = np.float32) -> TensorProto:
    if np.dtype(dtype).kind == "f":
        values = RNG.standard_normal(shape).astype(dtype)
    else:
        values = RNG.integers(-5, 6, size=shape).astype(dtype)
    return numpy_helper.from_array(values, name)


def scalar(name: str, value: float | int, dtype: Any) -> TensorProto:
    return numpy_helper.from_array(np.array(value, dtype=dtype), name)


def save(
    path: Path,
    nodes: list[onnx.NodeProto],
    inputs: list[onnx.ValueInfoProto],
    outputs: list[onnx.ValueInfoProto],
    weights: list[TensorProto],
    **save_options: Any,
) -> Path:
    graph = helper.make_graph(nodes, "test", inputs, outputs, weights)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)], ir_version=10)
    onnx.checker.check_model(model)
    onnx.save(model, str(path), **save_options)
    return path


def value(name: str, shape: Sequence[int | str], elem: int = TensorProto.FLOAT) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, elem, list(shape))


def mlp(path: Path, w1: TensorProto | None = None, **save_options: Any) -> Path:
    """X[N,16] -MatMul(16x8)-Add-Relu-Gemm(transB, 4x8 + bias)-Softmax -> Y[N,4]."""
    return save(
        path,
        [
            helper.make_node("MatMul", ["X", "W1"], ["h"]),
            helper.make_node("Add", ["h", "b1"], ["hb"]),
            helper.make_node("Relu", ["hb"], ["r"]),
            helper.make_node("Gemm", ["r", "W2", "b2"], ["logits"], transB=1),
            helper.make_node("Softmax", ["logits"], ["Y"], axis=1),
        ],
        [value("X", ["N", 16])],
        [value("Y", ["N", 4])],
        [w1 or weight("W1", [16, 8]), weight("b1", [8]), weight("W2", [4, 8]), weight("b2", [4])],
        **save_options,
    )


MLP_FLOPS = (2 * 16 * 8) + 8 + 8 + (2 * 8 * 4 + 4) + 5 * 4
MLP_PARAMS = 16 * 8 + 8 + 4 * 8 + 4


def test_mlp_counts_exactly(tmp_path: Path) -> None:
    path = mlp(tmp_path / "mlp.onnx")
    stats = read_graph_stats(path)
    assert (stats.flops_per_row, stats.parameters) == (MLP_FLOPS, MLP_PARAMS)
    assert stats.nonzero_parameters == MLP_PARAMS
    assert stats.size_bytes == path.stat().st_size
    assert stats.uncounted_ops == ()
    assert graph_stats(path) == (MLP_FLOPS, MLP_PARAMS)


def test_pruned_weights_count_as_zero(tmp_path: Path) -> None:
    values = RNG.standard_normal((16, 8)).astype(np.float32)
    values[:, :3] = 0.0
    stats = read_graph_stats(mlp(tmp_path / "pruned.onnx", numpy_helper.from_array(values, "W1")))
    assert stats.parameters == MLP_PARAMS
    assert stats.nonzero_parameters == MLP_PARAMS - 16 * 3


def test_external_data_is_sized_and_not_read(tmp_path: Path) -> None:
    path = mlp(
        tmp_path / "external.onnx",
        save_as_external_data=True,
        all_tensors_to_one_file=True,
        location="weights.bin",
        size_threshold=0,
    )
    stats = read_graph_stats(path)
    assert (stats.flops_per_row, stats.parameters, stats.nonzero_parameters) == (MLP_FLOPS, MLP_PARAMS, MLP_PARAMS)
    assert stats.size_bytes == path.stat().st_size + (tmp_path / "weights.bin").stat().st_size
    assert (tmp_path / "weights.bin").stat().st_size >= MLP_PARAMS * 4


def test_convolutions_and_pooling_from_shape_inference(tmp_path: Path) -> None:
    path = save(
        tmp_path / "conv.onnx",
        [
            helper.make_node("Conv", ["X", "W", "B"], ["c"], pads=[1, 1, 1, 1]),  # [N,4,8,8]
            helper.make_node("Conv", ["c", "Wd"], ["d"], pads=[1, 1, 1, 1], group=4),  # depthwise, no bias
            helper.make_node("MaxPool", ["d"], ["p"], kernel_shape=[2, 2], strides=[2, 2]),  # [N,4,4,4]
            helper.make_node("GlobalAveragePool", ["p"], ["g"]),  # [N,4,1,1]
            helper.make_node("Flatten", ["g"], ["Y"]),
        ],
        [value("X", ["N", 3, 8, 8])],
        [value("Y", ["N", 4])],
        [weight("W", [4, 3, 3, 3]), weight("B", [4]), weight("Wd", [4, 1, 3, 3])],
    )
    conv = 2 * (3 * 3 * 3) * (4 * 8 * 8) + 4 * 8 * 8
    depthwise = 2 * (1 * 3 * 3) * (4 * 8 * 8)
    pool = (4 * 4 * 4) * (2 * 2)
    global_pool = 4 * 4 * 4
    assert graph_stats(path) == (conv + depthwise + pool + global_pool, 108 + 4 + 36)


def test_qdq_weights_count_as_parameters_and_folded_dequantization_is_free(tmp_path: Path) -> None:
    wq = weight("Wq", [16, 8], np.int8)
    path = save(
        tmp_path / "qdq.onnx",
        [
            helper.make_node("DequantizeLinear", ["Wq", "w_scale", "w_zero"], ["W"]),  # constant: folded
            helper.make_node("QuantizeLinear", ["X", "x_scale", "x_zero"], ["xq"]),
            helper.make_node("DequantizeLinear", ["xq", "x_scale", "x_zero"], ["xd"]),
            helper.make_node("MatMul", ["xd", "W"], ["Y"]),
        ],
        [value("X", ["N", 16])],
        [value("Y", ["N", 8])],
        [
            wq,
            scalar("w_scale", 0.05, np.float32),
            scalar("w_zero", 0, np.int8),
            scalar("x_scale", 0.1, np.float32),
            scalar("x_zero", 128, np.uint8),
        ],
    )
    stats = read_graph_stats(path)
    assert stats.flops_per_row == 2 * 16 + 2 * 16 + 2 * 16 * 8
    assert stats.parameters == 16 * 8
    assert stats.nonzero_parameters == int(np.count_nonzero(numpy_helper.to_array(wq)))


def test_qlinear_matmul_counts_as_a_matmul_and_zero_points_are_respected(tmp_path: Path) -> None:
    wq = numpy_helper.from_array(RNG.integers(0, 4, size=(16, 8)).astype(np.uint8), "Wq")
    path = save(
        tmp_path / "qlinear.onnx",
        [
            helper.make_node("QuantizeLinear", ["X", "x_scale", "x_zero"], ["xq"]),
            helper.make_node(
                "QLinearMatMul", ["xq", "x_scale", "x_zero", "Wq", "w_scale", "w_zero", "y_scale", "y_zero"], ["yq"]
            ),
            helper.make_node("DequantizeLinear", ["yq", "y_scale", "y_zero"], ["Y"]),
        ],
        [value("X", ["N", 16])],
        [value("Y", ["N", 8])],
        [
            wq,
            scalar("x_scale", 0.1, np.float32),
            scalar("x_zero", 128, np.uint8),
            scalar("w_scale", 0.05, np.float32),
            scalar("w_zero", 2, np.uint8),
            scalar("y_scale", 0.2, np.float32),
            scalar("y_zero", 128, np.uint8),
        ],
    )
    stats = read_graph_stats(path)
    assert stats.flops_per_row == 2 * 16 + 2 * 16 * 8 + 2 * 8
    assert stats.parameters == 16 * 8
    assert stats.nonzero_parameters == int(np.count_nonzero(numpy_helper.to_array(wq) != 2))


def test_dynamic_quantization_graph(tmp_path: Path) -> None:
    """The pattern onnxruntime's quantize_dynamic writes for a MatMul."""
    path = save(
        tmp_path / "dynamic.onnx",
        [
            helper.make_node("DynamicQuantizeLinear", ["X"], ["xq", "x_scale", "x_zero"]),
            helper.make_node("Mul", ["x_scale", "w_scale"], ["scale"]),
            helper.make_node("MatMulInteger", ["xq", "Wq", "x_zero", "w_zero"], ["yi"]),
            helper.make_node("Cast", ["yi"], ["yf"], to=TensorProto.FLOAT),
            helper.make_node("Mul", ["yf", "scale"], ["Y"]),
        ],
        [value("X", ["N", 16])],
        [value("Y", ["N", 8])],
        [weight("Wq", [16, 8], np.int8), scalar("w_scale", 0.05, np.float32), scalar("w_zero", 0, np.int8)],
    )
    assert graph_stats(path) == (4 * 16 + 1 + 2 * 16 * 8 + 8, 16 * 8)


def test_onnxruntime_dynamic_quantization_keeps_the_parameter_count(tmp_path: Path) -> None:
    from onnxruntime.quantization import QuantType, quantize_dynamic

    fp32 = mlp(tmp_path / "fp32.onnx")
    int8 = tmp_path / "int8.onnx"
    quantize_dynamic(str(fp32), str(int8), weight_type=QuantType.QInt8)
    assert {n.op_type for n in onnx.load(str(int8)).graph.node} & {"MatMulInteger", "DynamicQuantizeLinear"}
    fp32_flops, fp32_params = graph_stats(fp32)
    int8_stats = read_graph_stats(int8)
    assert int8_stats.parameters == fp32_params
    # The integer matmul counts as much as the float one; quantizing the activations adds a little.
    assert fp32_flops < int8_stats.flops_per_row < fp32_flops * 1.5
    assert int8_stats.uncounted_ops == ()


def test_shape_tensors_and_constants(tmp_path: Path) -> None:
    """Integer shape tensors are not parameters; Constant-node weights are; unknown ops are listed."""
    path = save(
        tmp_path / "misc.onnx",
        [
            helper.make_node("Constant", [], ["C"], value=weight("c", [4, 6])),
            helper.make_node("Reshape", ["X", "shape"], ["x2"]),  # [N, 4]
            helper.make_node("MatMul", ["x2", "C"], ["m"]),  # [N, 6]
            helper.make_node("Einsum", ["m", "m"], ["Y"], equation="ij,ij->ij"),
        ],
        [value("X", ["N", 2, 2])],
        [value("Y", ["N", 6])],
        [numpy_helper.from_array(np.array([-1, 4], dtype=np.int64), "shape")],
    )
    stats = read_graph_stats(path)
    assert (stats.flops_per_row, stats.parameters) == (2 * 4 * 6, 24)
    assert stats.uncounted_ops == ("Einsum",)


def test_symbolic_dimensions_count_as_one(tmp_path: Path) -> None:
    path = save(
        tmp_path / "seq.onnx",
        [helper.make_node("MatMul", ["X", "W"], ["Y"])],
        [value("X", ["N", "S", 16])],
        [value("Y", ["N", "S", 8])],
        [weight("W", [16, 8])],
    )
    assert graph_stats(path) == (2 * 16 * 8, 128)


@pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")
def test_digits_mlp_parameters_equal_the_sklearn_coefficients(tmp_path: Path) -> None:
    from sklearn.datasets import load_digits
    from sklearn.neural_network import MLPClassifier
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import StandardScaler

    from sloserve.runtime.sklearn_convert import estimator_to_onnx

    x, y = load_digits(return_X_y=True)
    pipeline = Pipeline(
        [("scale", StandardScaler()), ("mlp", MLPClassifier(hidden_layer_sizes=(32,), max_iter=20, random_state=0))]
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        pipeline.fit(x.astype(np.float32), y)
    mlp_step = pipeline.named_steps["mlp"]
    path = tmp_path / "digits.onnx"
    path.write_bytes(estimator_to_onnx(pipeline, n_features=64))
    stats = read_graph_stats(path)
    assert stats.parameters == sum(c.size for c in mlp_step.coefs_) + sum(b.size for b in mlp_step.intercepts_)
    # Scaler (sub, mul), two MatMul+Add, Relu, Softmax, ArgMax: the rest is data movement.
    assert stats.flops_per_row == 2 * 64 + (2 * 64 * 32 + 32) + 32 + (2 * 32 * 10 + 10) + 5 * 10 + 10
    assert stats.uncounted_ops == ()


def test_not_an_onnx_file(tmp_path: Path) -> None:
    path = tmp_path / "bad.onnx"
    path.write_bytes(b"not a model")
    with pytest.raises(InvalidArgumentError, match="not a loadable ONNX model"):
        graph_stats(path)
