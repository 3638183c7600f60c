"""Static statistics of an ONNX graph: FLOPs per row, parameters, artifact size.

Read from the graph alone (no session), so they are the same on every machine.

**FLOPs per row** are counted with every symbolic dimension of the graph inputs
set to 1 (one row; a symbolic sequence length also counts as 1). Shapes come
from ONNX shape inference, completed by a small propagation of our own where it
stops (``ai.onnx.ml`` operators such as ``Scaler`` have no shape inference).
The rules, per node:

- matrix products (``MatMul``, ``Gemm``, ``MatMulInteger``, ``QLinearMatMul``,
  ``QGemm``, ``MatMulIntegerToFloat``, ``DynamicQuantizeMatMul``, ``FusedMatMul``,
  ``FusedGemm``): ``2 * K`` per output element, plus one per output element for a
  bias. Integer matmuls count the same as float ones: the work is the same
  multiply-adds, on narrower numbers.
- convolutions (``Conv``, ``ConvInteger``, ``QLinearConv``, ``FusedConv``):
  ``2 * C_in/group * prod(kernel)`` per output element (plus bias);
  ``ConvTranspose`` the same per *input* element.
- element-wise operators and activations: :data:`ELEMENTWISE_COST` per output
  element (1 for most; a few, like ``Softmax``, cost more).
- reductions and ``ArgMax``/``ArgMin``: one per input element; pooling: the
  kernel size per output element.
- data movement (``Reshape``, ``Cast``, ``Gather``, ...) costs nothing.
- nodes whose inputs are all constants cost nothing: ONNX Runtime folds them
  at load time (a ``DequantizeLinear`` of a weight, for instance).

An operator with no rule counts as 0 and is listed in ``uncounted_ops``;
subgraphs (``If``, ``Loop``, ``Scan``) are not entered.

**Parameters** are the elements of the graph's weights (initializers and
``Constant`` nodes) that nodes use: every float tensor (FP32, FP16, BF16, ...)
except quantization scales, and integer tensors that hold quantized weights
(the data inputs of ``DequantizeLinear``, ``MatMulInteger``, ``QLinearMatMul``,
...). Shape tensors, axes, class lists and zero points are not parameters, so an
INT8 variant has the same parameter count as its FP32 parent.
``nonzero_parameters`` counts the elements different from zero (from the
per-tensor zero point for quantized weights); weights stored as external data
are not read and count as non-zero.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import numpy as np
import onnx
from onnx import TensorProto, numpy_helper

from sloserve.runtime.graph import load_model

Shape = tuple[int, ...]

_FLOAT_TYPES: Final = frozenset(
    {
        TensorProto.FLOAT,
        TensorProto.FLOAT16,
        TensorProto.DOUBLE,
        TensorProto.BFLOAT16,
        *(getattr(TensorProto, n) for n in ("FLOAT8E4M3FN", "FLOAT8E4M3FNUZ", "FLOAT8E5M2", "FLOAT8E5M2FNUZ")),
    }
)

# op -> (input indices that are scales or zero points, {quantized data input: its zero point input})
_QUANTIZED_OPS: Final[dict[str, tuple[frozenset[int], dict[int, int]]]] = {
    "QuantizeLinear": (frozenset({1, 2}), {}),
    "DequantizeLinear": (frozenset({1, 2}), {0: 2}),
    "DynamicQuantizeLinear": (frozenset(), {}),
    "MatMulInteger": (frozenset({2, 3}), {0: 2, 1: 3}),
    "ConvInteger": (frozenset({2, 3}), {0: 2, 1: 3}),
    "QLinearMatMul": (frozenset({1, 2, 4, 5, 6, 7}), {0: 2, 3: 5}),
    "QLinearConv": (frozenset({1, 2, 4, 5, 6, 7}), {0: 2, 3: 5}),
    "QLinearAdd": (frozenset({1, 2, 4, 5, 6, 7}), {0: 2, 3: 5}),
    "QLinearMul": (frozenset({1, 2, 4, 5, 6, 7}), {0: 2, 3: 5}),
    "QGemm": (frozenset({1, 2, 4, 5, 7, 8}), {0: 2, 3: 5}),
    "MatMulIntegerToFloat": (frozenset({2, 3, 4, 5}), {0: 4, 1: 5}),
    "DynamicQuantizeMatMul": (frozenset({2, 3}), {1: 3}),
}

# op -> (A input, B input, bias input or None)
_MATMUL_OPS: Final[dict[str, tuple[int, int, int | None]]] = {
    "MatMul": (0, 1, None),
    "FusedMatMul": (0, 1, None),
    "MatMulInteger": (0, 1, None),
    "QLinearMatMul": (0, 3, None),
    "MatMulIntegerToFloat": (0, 1, 6),
    "DynamicQuantizeMatMul": (0, 1, 4),
    "Gemm": (0, 1, 2),
    "FusedGemm": (0, 1, 2),
    "QGemm": (0, 3, 6),
}
_GEMM_OPS: Final = frozenset({"Gemm", "FusedGemm", "QGemm"})

# op -> (X input, W input, bias input)
_CONV_OPS: Final[dict[str, tuple[int, int, int | None]]] = {
    "Conv": (0, 1, 2),
    "FusedConv": (0, 1, 2),
    "ConvInteger": (0, 1, None),
    "QLinearConv": (0, 3, 8),
}


def _ops(names: str) -> frozenset[str]:
    return frozenset(names.split())


_UNARY_OPS: Final = _ops(
    "Abs Acos Acosh Asin Asinh Atan Atanh BitwiseNot Ceil Celu Clip Cos Cosh Elu Erf Exp Floor Gelu HardSigmoid "
    "HardSwish IsInf IsNaN LeakyRelu Log Mish Neg Not Reciprocal Relu Round Selu Shrink Sigmoid Sign Sin Sinh "
    "Softplus Softsign Sqrt Tan Tanh ThresholdedRelu QuickGelu FastGelu Scaler Normalizer Binarizer "
    "QuantizeLinear DequantizeLinear DynamicQuantizeLinear BatchNormalization LayerNormalization "
    "InstanceNormalization GroupNormalization SimplifiedLayerNormalization SkipLayerNormalization "
    "Softmax LogSoftmax Hardmax"
)
_BINARY_OPS: Final = _ops(
    "Add Sub Mul Div Pow Max Min Mean Sum Mod PRelu Where Equal Greater GreaterOrEqual Less LessOrEqual "
    "And Or Xor BitShift BitwiseAnd BitwiseOr BitwiseXor BiasGelu QLinearAdd QLinearMul"
)

ELEMENTWISE_COST: Final[dict[str, int]] = {
    **dict.fromkeys(sorted(_UNARY_OPS | _BINARY_OPS), 1),
    "Scaler": 2,
    "QuantizeLinear": 2,
    "DequantizeLinear": 2,
    "DynamicQuantizeLinear": 4,  # min/max scan, scale, round
    "BatchNormalization": 2,  # folded into a scale and a shift
    "Softmax": 5,  # max, subtract, exp, sum, divide
    "LogSoftmax": 5,
    "Hardmax": 2,
    "LayerNormalization": 8,
    "SimplifiedLayerNormalization": 6,
    "SkipLayerNormalization": 9,
    "InstanceNormalization": 8,
    "GroupNormalization": 8,
    "Gelu": 8,
    "FastGelu": 8,
    "BiasGelu": 9,
    "QuickGelu": 4,
    "Mish": 4,
    "Sigmoid": 4,
    "Tanh": 4,
    "Softplus": 3,
}
"""FLOPs per output element of element-wise operators (rough, as FLOP counts are)."""

_REDUCE_OPS: Final = _ops(
    "ReduceSum ReduceMean ReduceMax ReduceMin ReduceProd ReduceL1 ReduceL2 ReduceLogSum ReduceLogSumExp "
    "ReduceSumSquare ArgMax ArgMin GlobalAveragePool GlobalMaxPool GlobalLpPool TopK CumSum"
)
_POOL_OPS: Final = _ops("MaxPool AveragePool LpPool")
_FREE_OPS: Final = _ops(
    "Identity Cast CastLike Reshape Flatten Squeeze Unsqueeze Transpose Concat Split Slice Gather GatherElements "
    "GatherND Shape Size Expand Tile Pad ConstantOfShape Constant Dropout ArrayFeatureExtractor ZipMap "
    "DepthToSpace SpaceToDepth ScatterND ScatterElements Range NonZero Compress OneHot EyeLike Trilu "
    "OptionalHasElement OptionalGetElement SequenceAt SequenceConstruct SplitToSequence ConcatFromSequence "
    "LabelEncoder Imputer FeatureVectorizer"
)
_SHAPE_PRESERVING: Final = _UNARY_OPS | {"Identity", "Cast", "CastLike", "Dropout"}


@dataclass(frozen=True, slots=True)
class GraphStats:
    flops_per_row: int
    parameters: int
    nonzero_parameters: int
    size_bytes: int
    """The ONNX file plus the external data files it names."""
    uncounted_ops: tuple[str, ...]
    """Operator types whose FLOPs were not counted (no rule, or shapes unknown): counted as 0."""


def graph_stats(path: Path) -> tuple[int, int]:
    """``(FLOPs per row, parameter count)`` of the ONNX model at ``path``."""
    stats = read_graph_stats(path)
    return stats.flops_per_row, stats.parameters


def read_graph_stats(path: Path) -> GraphStats:
    """Every statistic of the ONNX model at ``path``; raises InvalidArgumentError if it does not parse."""
    model = load_model(path)
    weights = _weights(model.graph)
    parameters, nonzero = _count_parameters(model.graph, weights)
    flops, uncounted = _count_flops(model, weights)
    return GraphStats(
        flops_per_row=flops,
        parameters=parameters,
        nonzero_parameters=nonzero,
        size_bytes=_artifact_bytes(path, model),
        uncounted_ops=uncounted,
    )


# ---------------------------------------------------------------- weights


def _weights(graph: onnx.GraphProto) -> dict[str, TensorProto]:
    weights = {t.name: t for t in graph.initializer}
    for node in graph.node:
        if node.op_type == "Constant" and node.domain in ("", "ai.onnx"):
            for attr in node.attribute:
                if attr.name == "value" and attr.type == onnx.AttributeProto.TENSOR:
                    weights[node.output[0]] = attr.t
    return weights


def _is_external(tensor: TensorProto) -> bool:
    return tensor.data_location == TensorProto.EXTERNAL


def _count_parameters(graph: onnx.GraphProto, weights: Mapping[str, TensorProto]) -> tuple[int, int]:
    """Elements (and non-zero elements) of the weights used as parameters; see the module docstring."""
    scales = _quantization_scales(graph, weights)
    as_data: set[str] = set()  # used by some node other than as a scale or a zero point
    quantized: set[str] = set()  # used as the data of a quantized operator
    zero_point_of: dict[str, str] = {}
    for node in graph.node:
        quant_params, zero_points = _QUANTIZED_OPS.get(node.op_type, (frozenset(), {}))
        for index, name in enumerate(node.input):
            if name not in weights or index in quant_params or name in scales:
                continue
            as_data.add(name)
            if node.op_type in _QUANTIZED_OPS:
                quantized.add(name)
                zp_index = zero_points.get(index)
                if zp_index is not None and zp_index < len(node.input) and node.input[zp_index] in weights:
                    zero_point_of[name] = node.input[zp_index]
    total = nonzero = 0
    for name in sorted(as_data):
        tensor = weights[name]
        if tensor.data_type not in _FLOAT_TYPES and name not in quantized:
            continue  # shape tensors, axes, class lists, indices
        size = math.prod(tensor.dims)
        total += size
        nonzero += size if _is_external(tensor) else _nonzero(tensor, weights.get(zero_point_of.get(name, "")))
    return total, nonzero


def _quantization_scales(graph: onnx.GraphProto, weights: Mapping[str, TensorProto]) -> set[str]:
    """Tensors that are quantization scales: the scale inputs of quantized operators, the
    scales ``DynamicQuantizeLinear`` computes, and the products of scales (``Mul``) that
    dynamic quantization writes to combine an activation's scale with a weight's."""
    scales: set[str] = set()
    for node in graph.node:
        quant_params, _ = _QUANTIZED_OPS.get(node.op_type, (frozenset(), {}))
        scales.update(name for index, name in enumerate(node.input) if index in quant_params)
        if node.op_type == "DynamicQuantizeLinear" and len(node.output) > 1:
            scales.add(node.output[1])
        elif node.op_type == "Mul" and any(name in scales for name in node.input):
            others = [name for name in node.input if name not in scales]
            if all(name in weights for name in others):  # a scale times a weight's scale
                scales.update(others)
                scales.update(node.output)
    return scales


def _nonzero(tensor: TensorProto, zero_point: TensorProto | None) -> int:
    values = numpy_helper.to_array(tensor)
    zero: Any = 0
    if zero_point is not None and not _is_external(zero_point) and math.prod(zero_point.dims) == 1:
        zero = numpy_helper.to_array(zero_point).reshape(()).item()
    return int(np.count_nonzero(values != zero))


def _artifact_bytes(path: Path, model: onnx.ModelProto) -> int:
    files = {path}
    for tensor in model.graph.initializer:
        if _is_external(tensor):
            location = next((e.value for e in tensor.external_data if e.key == "location"), None)
            if location:
                files.add(path.parent / location)
    return sum(f.stat().st_size for f in files if f.is_file())


# ---------------------------------------------------------------- FLOPs


def _count_flops(model: onnx.ModelProto, weights: Mapping[str, TensorProto]) -> tuple[int, tuple[str, ...]]:
    shapes = _shapes(model, weights)
    constant = set(weights)
    total = 0
    uncounted: set[str] = set()
    for node in model.graph.node:
        inputs = [name for name in node.input if name]
        if all(name in constant for name in inputs):
            constant.update(node.output)  # folded by ONNX Runtime at load time
            continue
        flops = _node_flops(node, shapes)
        if flops is None:
            if node.op_type not in _FREE_OPS:
                uncounted.add(node.op_type)
            continue
        total += flops
    return total, tuple(sorted(uncounted))


def _node_flops(node: onnx.NodeProto, shapes: Mapping[str, Shape]) -> int | None:
    """FLOPs of one node, or None when it has no rule (or its shapes are unknown)."""
    op = node.op_type

    def shape(index: int) -> Shape | None:
        return shapes.get(node.input[index]) if index < len(node.input) and node.input[index] else None

    def has(index: int) -> bool:
        return index < len(node.input) and bool(node.input[index])

    out = shapes.get(node.output[0]) if node.output else None
    if op in _MATMUL_OPS:
        a_index, _, bias_index = _MATMUL_OPS[op]
        a = shape(a_index)
        if a is None or out is None or not a:
            return None
        trans_a = _attr_int(node, "transA", 0)
        k = a[0] if op in _GEMM_OPS and trans_a else (a[-2] if trans_a and len(a) >= 2 else a[-1])
        bias = math.prod(out) if bias_index is not None and has(bias_index) else 0
        return 2 * k * math.prod(out) + bias
    if op in _CONV_OPS:
        _, w_index, bias_index = _CONV_OPS[op]
        w = shape(w_index)
        if w is None or out is None or len(w) < 2:
            return None
        bias = math.prod(out) if bias_index is not None and has(bias_index) else 0
        return 2 * math.prod(w[1:]) * math.prod(out) + bias
    if op == "ConvTranspose":
        x, w = shape(0), shape(1)
        if x is None or w is None or out is None or len(w) < 2:
            return None
        return 2 * math.prod(w[1:]) * math.prod(x) + (math.prod(out) if has(2) else 0)
    if op in ELEMENTWISE_COST:
        return None if out is None else ELEMENTWISE_COST[op] * math.prod(out)
    if op in _REDUCE_OPS:
        x = shape(0)
        return None if x is None else math.prod(x)
    if op in _POOL_OPS:
        kernel = _attr_ints(node, "kernel_shape")
        return None if out is None or kernel is None else math.prod(out) * math.prod(kernel)
    return None


def _attr_int(node: onnx.NodeProto, name: str, default: int) -> int:
    for attr in node.attribute:
        if attr.name == name:
            return int(attr.i)
    return default


def _attr_ints(node: onnx.NodeProto, name: str) -> tuple[int, ...] | None:
    for attr in node.attribute:
        if attr.name == name:
            return tuple(int(i) for i in attr.ints)
    return None


# ---------------------------------------------------------------- shapes


def _concrete(value: onnx.ValueInfoProto) -> Shape | None:
    if value.type.WhichOneof("value") != "tensor_type" or not value.type.tensor_type.HasField("shape"):
        return None
    dims = value.type.tensor_type.shape.dim
    if not all(d.HasField("dim_value") for d in dims):
        return None
    return tuple(int(d.dim_value) for d in dims)


def _one_row(model: onnx.ModelProto) -> onnx.ModelProto:
    """A copy whose graph inputs have every symbolic dimension set to 1, without stale value_info."""
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    del copy.graph.value_info[:]
    for value in copy.graph.input:
        if value.type.WhichOneof("value") == "tensor_type" and value.type.tensor_type.HasField("shape"):
            for dim in value.type.tensor_type.shape.dim:
                if not dim.HasField("dim_value"):
                    dim.Clear()
                    dim.dim_value = 1
    return copy


def _shapes(model: onnx.ModelProto, weights: Mapping[str, TensorProto]) -> dict[str, Shape]:
    """Concrete shapes at one row: ONNX shape inference, then our propagation where it stopped."""
    one_row = _one_row(model)
    shapes: dict[str, Shape] = {name: tuple(int(d) for d in t.dims) for name, t in weights.items()}
    for value in one_row.graph.input:
        if (known := _concrete(value)) is not None:
            shapes.setdefault(value.name, known)
    try:
        inferred = onnx.shape_inference.infer_shapes(one_row, data_prop=True)
    except Exception:  # inference is a help, not a requirement; it raises many classes
        inferred = one_row
    for value in (*inferred.graph.value_info, *inferred.graph.output):
        if (known := _concrete(value)) is not None:
            shapes.setdefault(value.name, known)
    for node in model.graph.node:
        if node.output and node.output[0] and node.output[0] not in shapes:
            guessed = _propagate(node, [shapes.get(n) if n else None for n in node.input])
            if guessed is not None:
                shapes[node.output[0]] = guessed
    return shapes


def _propagate(node: onnx.NodeProto, inputs: Sequence[Shape | None]) -> Shape | None:
    """The output shape of the common operators ONNX could not infer (e.g. after an ai.onnx.ml node)."""
    op = node.op_type
    if op in _SHAPE_PRESERVING:
        return inputs[0] if inputs else None
    if op in _BINARY_OPS and op not in ("QLinearAdd", "QLinearMul"):
        return _broadcast(inputs)
    if op in ("QLinearAdd", "QLinearMul"):
        return _broadcast([inputs[i] if i < len(inputs) else None for i in (0, 3)])
    if op in _MATMUL_OPS:
        a_index, b_index, _ = _MATMUL_OPS[op]
        a = inputs[a_index] if a_index < len(inputs) else None
        b = inputs[b_index] if b_index < len(inputs) else None
        if a is None or b is None:
            return None
        if op in _GEMM_OPS:
            m = a[1] if _attr_int(node, "transA", 0) else a[0]
            n = b[0] if _attr_int(node, "transB", 0) else b[1]
            return (m, n)
        return _matmul_shape(a, b)
    return None


def _broadcast(shapes: Iterable[Shape | None]) -> Shape | None:
    known = list(shapes)
    if not known or any(s is None for s in known):
        return None
    try:
        return tuple(int(d) for d in np.broadcast_shapes(*known))  # type: ignore[arg-type]
    except ValueError:
        return None


def _matmul_shape(a: Shape, b: Shape) -> Shape | None:
    if not a or not b:
        return None
    a2 = (1, *a) if len(a) == 1 else a
    b2 = (*b, 1) if len(b) == 1 else b
    batch = _broadcast([a2[:-2], b2[:-2]])
    if batch is None:
        return None
    out = (*batch, a2[-2], b2[-1])
    if len(a) == 1:
        out = out[:-2] + out[-1:]
    if len(b) == 1:
        out = out[:-1]
    return out
