"""int8-dynamic and int8-static: weights (and activations) in 8-bit integers, FP32 at the edges.

Both use ``onnxruntime.quantization`` on the compute-heavy operators only
(MatMul, Gemm, Conv, ...): the rest of the graph (scalers, softmax, argmax,
label lookups) stays FP32, so probabilities keep their precision and the I/O
is the reference's.

- ``int8-dynamic``: weights quantized ahead of time, activations quantized on
  the fly per batch (``DynamicQuantizeLinear`` + ``MatMulInteger``). Needs no
  data. onnxruntime's dynamic quantizer does not cover Gemm, so Gemm layers with
  constant weights are first rewritten as MatMul + Add (same numbers).
- ``int8-static``: QDQ format (QuantizeLinear/DequantizeLinear pairs that
  onnxruntime fuses into integer kernels), activation ranges calibrated (MinMax)
  on the validation inputs. uint8 activations with int8 weights, onnxruntime's
  advice for x86 CPUs. Only the inputs of the heavy operators are quantized,
  their outputs stay FP32 (measured faster on CPU, and exact final outputs).

Per-channel weight scales cost a little speed and usually buy accuracy; when
calibration data exists both are built and per-channel is kept only when it
is measurably closer to the reference (``calibration_error`` in the details:
the worst, over outputs, relative L2 error of float outputs or mismatch rate of
integer outputs).
"""

from __future__ import annotations

import contextlib
import logging
import tempfile
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any, Final

import numpy as np
import onnx
from onnx import helper, numpy_helper
from onnxruntime.quantization import (
    CalibrationDataReader,
    CalibrationMethod,
    QuantFormat,
    QuantType,
    quantize_dynamic,
    quantize_static,
)

from sloserve.variants.base import (
    Array,
    Built,
    RecipeInput,
    RecipeSkipped,
    calibration_rows,
    load_reference,
    run_model,
    verify,
)

DYNAMIC_OPS: Final = ("MatMul", "Conv", "Attention", "LSTM")
"""What onnxruntime's dynamic quantizer turns into integer kernels (Gemm after rewriting)."""
STATIC_OPS: Final = ("MatMul", "Gemm", "Conv", "ConvTranspose")
"""Operators given QDQ pairs: the heavy ones. Elementwise ops stay FP32 between them."""
_INTEGER_OPS: Final = frozenset(
    {"MatMulInteger", "ConvInteger", "DynamicQuantizeMatMul", "DynamicQuantizeLSTM", "QAttention", "QuantizeLinear"}
)
PER_CHANNEL_GAIN: Final = 0.9
"""Per-channel is kept when its calibration error is below this fraction of per-tensor's."""
CALIBRATION_BATCH: Final = 128


def build_int8_dynamic(source: RecipeInput, path: Path) -> Built:
    model = _gemm_as_matmul(load_reference(source))
    _require_weights(model, DYNAMIC_OPS, "dynamic")

    def quantize(per_channel: bool, out: Path) -> None:
        quantize_dynamic(
            _copy(model),  # the quantizer rewrites the proto it is given
            str(out),
            op_types_to_quantize=list(DYNAMIC_OPS),
            per_channel=per_channel,
            weight_type=QuantType.QInt8,
        )

    details = _quantize(source, quantize, path)
    return Built(details={"weights": "int8", "activations": "uint8, per batch", **details})


def build_int8_static(source: RecipeInput, path: Path) -> Built:
    rows = calibration_rows(source)
    if rows == 0:
        raise RecipeSkipped("static quantization needs calibration data and the model has none")
    model = load_reference(source)
    _require_weights(model, STATIC_OPS, "static")

    def quantize(per_channel: bool, out: Path) -> None:
        quantize_static(
            _copy(model),
            str(out),
            _Calibration(source.calibration, rows),
            quant_format=QuantFormat.QDQ,
            op_types_to_quantize=list(STATIC_OPS),
            per_channel=per_channel,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
            calibrate_method=CalibrationMethod.MinMax,
            # Their results stay FP32: onnxruntime fuses DQ -> MatMul into MatMulIntegerToFloat (bias
            # included), cheaper than QLinearMatMul -> DQ -> Add -> Q, and graph outputs keep full precision.
            extra_options={"OpTypesToExcludeOutputQuantization": list(STATIC_OPS)},
        )

    details = _quantize(source, quantize, path)
    return Built(
        details={"format": "QDQ", "weights": "int8", "activations": "uint8", "calibration_rows": rows, **details}
    )


class _Calibration(CalibrationDataReader):  # type: ignore[misc]  # onnxruntime ships no type hints
    def __init__(self, calibration: Mapping[str, Array], rows: int) -> None:
        self._batches: Iterator[dict[str, Array]] = iter(
            [
                {
                    name: np.ascontiguousarray(array[start : start + CALIBRATION_BATCH])
                    for name, array in calibration.items()
                }
                for start in range(0, rows, CALIBRATION_BATCH)
            ]
        )

    def get_next(self) -> dict[str, Array] | None:
        return next(self._batches, None)


def _quantize(source: RecipeInput, quantize: Callable[[bool, Path], None], path: Path) -> dict[str, Any]:
    """Quantize per-tensor (and per-channel when it can be judged); write the better one at ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="sloserve-quant-") as scratch:
        per_tensor = Path(scratch) / "per_tensor.onnx"
        with _quiet_quantizer():
            quantize(False, per_tensor)
        quantized = onnx.load(str(per_tensor))
        count = sum(1 for node in quantized.graph.node if node.op_type in _INTEGER_OPS)
        if count == 0:
            raise RecipeSkipped("onnxruntime's quantizer found no operator to quantize in this graph")
        chosen = per_tensor
        details: dict[str, Any] = {"per_channel": False, "quantized_nodes": count}
        if calibration_rows(source) > 0:
            reference = run_model(source.reference, source.calibration)
            tensor_error = _error(reference, run_model(per_tensor, source.calibration))
            per_channel = Path(scratch) / "per_channel.onnx"
            with _quiet_quantizer():
                quantize(True, per_channel)
            channel_error = _error(reference, run_model(per_channel, source.calibration))
            use_channel = channel_error < PER_CHANNEL_GAIN * tensor_error
            if use_channel:
                chosen = per_channel
            details |= {
                "per_channel": use_channel,
                "calibration_error": round(channel_error if use_channel else tensor_error, 6),
                "calibration_error_per_tensor": round(tensor_error, 6),
                "calibration_error_per_channel": round(channel_error, 6),
            }
        path.write_bytes(chosen.read_bytes())
    verify(source, path)
    return details


class _PreprocessingAdvice(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith("Please consider")


@contextlib.contextmanager
def _quiet_quantizer() -> Iterator[None]:
    """onnxruntime's quantizer advises pre-processing on the root logger at every call; drop that line."""
    advice = _PreprocessingAdvice()
    root = logging.getLogger()
    root.addFilter(advice)
    try:
        yield
    finally:
        root.removeFilter(advice)


def _error(reference: Mapping[str, Array], variant: Mapping[str, Array]) -> float:
    """Worst output error: relative L2 for floating outputs, mismatch rate for the others."""
    worst = 0.0
    for name, want in reference.items():
        have = variant[name]
        if want.dtype.kind == "f":
            scale = float(np.linalg.norm(want.astype(np.float64))) or 1.0
            error = float(np.linalg.norm(have.astype(np.float64) - want.astype(np.float64))) / scale
        else:
            error = float(np.mean(have != want)) if want.size else 0.0
        worst = max(worst, error)
    return worst


def _copy(model: onnx.ModelProto) -> onnx.ModelProto:
    clone = onnx.ModelProto()
    clone.CopyFrom(model)
    return clone


def _require_weights(model: onnx.ModelProto, op_types: tuple[str, ...], mode: str) -> None:
    weights = {init.name for init in model.graph.initializer}
    if not any(node.op_type in op_types and any(i in weights for i in node.input[1:]) for node in model.graph.node):
        present = sorted({node.op_type for node in model.graph.node})
        raise RecipeSkipped(
            f"{mode} int8 quantization has nothing to quantize: no {'/'.join(op_types)} with constant weights "
            f"(the graph has {', '.join(present)})"
        )


def _gemm_as_matmul(model: onnx.ModelProto) -> onnx.ModelProto:
    """Rewrite ``Gemm(A, B, C)`` with constant B (and C) as ``MatMul(A, alpha*op(B)) + beta*C``."""
    graph = model.graph
    weights = {init.name: init for init in graph.initializer}
    nodes: list[onnx.NodeProto] = []
    changed = False
    for index, node in enumerate(graph.node):
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        constant_c = len(node.input) < 3 or not node.input[2] or node.input[2] in weights
        if (
            node.op_type != "Gemm"
            or node.domain not in ("", "ai.onnx")
            or attrs.get("transA", 0)
            or node.input[1] not in weights
            or not constant_c
        ):
            nodes.append(node)
            continue
        w = numpy_helper.to_array(weights[node.input[1]]).astype(np.float32)
        w = (w.T if attrs.get("transB", 0) else w) * np.float32(attrs.get("alpha", 1.0))
        base = node.name or f"gemm{index}"
        w_name = f"{base}_matmul_weight"
        graph.initializer.append(numpy_helper.from_array(np.ascontiguousarray(w), w_name))
        if len(node.input) < 3 or not node.input[2]:
            nodes.append(helper.make_node("MatMul", [node.input[0], w_name], list(node.output), name=base))
        else:
            c = numpy_helper.to_array(weights[node.input[2]]).astype(np.float32) * np.float32(attrs.get("beta", 1.0))
            c_name, product = f"{base}_add_bias", f"{base}_matmul_out"
            graph.initializer.append(numpy_helper.from_array(c, c_name))
            nodes.append(helper.make_node("MatMul", [node.input[0], w_name], [product], name=f"{base}_matmul"))
            nodes.append(helper.make_node("Add", [product, c_name], list(node.output), name=base))
        changed = True
    if changed:
        del graph.node[:]
        graph.node.extend(nodes)
        used = {name for node in graph.node for name in node.input}
        kept = [init for init in graph.initializer if init.name in used]
        del graph.initializer[:]
        graph.initializer.extend(kept)
    return model
