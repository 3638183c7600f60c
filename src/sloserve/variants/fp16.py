"""fp16: weights and arithmetic in half precision, FP32 inputs and outputs (meant for GPUs).

onnxconverter-common's ``convert_float_to_float16`` does the conversion with
``keep_io_types=True`` (Casts at the graph's edges). It needs to know every
tensor's element type, and ONNX shape inference stops at operators without an
inference function (scikit-learn's ``Scaler``, for one), so three steps
surround it:

1. onnxruntime's basic (hardware-independent) optimizations drop no-op Casts
   and fold constants;
2. every intermediate tensor's type is read from onnxruntime (which types
   every node when it loads a graph) and written as ``value_info``;
3. after conversion, a Cast to FP32 whose result the converter declared FP16
   is made a Cast to FP16, and any node onnxruntime's CPU provider cannot run
   in FP16 is kept in FP32 (retried node by node), so the variant loads and is
   profiled here even though it is meant for a GPU.
"""

from __future__ import annotations

import re
import tempfile
import warnings
from pathlib import Path
from typing import Final

import onnx
import onnxruntime as ort
from onnx import TensorProto, helper

from sloserve.variants.base import Built, RecipeInput, RecipeSkipped, load_reference, save_model, verify

MAX_BLOCKED_NODES: Final = 64
_NOT_IMPLEMENTED = re.compile(r"Could not find an implementation for (\w+)\(\d+\) node with name '([^']*)'")


def build_fp16(source: RecipeInput, path: Path) -> Built:
    from onnxconverter_common import float16

    reference = load_reference(source)
    if not any(init.data_type == TensorProto.FLOAT for init in reference.graph.initializer):
        raise RecipeSkipped("the graph has no FP32 weights to convert to FP16")
    with tempfile.TemporaryDirectory(prefix="sloserve-fp16-") as scratch:
        model = _typed(_basic_optimized(source.reference, Path(scratch) / "basic.onnx"), Path(scratch))
    blocked: list[str] = []
    kept_ops: set[str] = set()
    while True:
        with warnings.catch_warnings():  # one warning per weight clipped to the FP16 range
            warnings.simplefilter("ignore")
            converted = float16.convert_float_to_float16(
                _copy(model),
                keep_io_types=True,
                op_block_list=float16.DEFAULT_OP_BLOCK_LIST,
                node_block_list=blocked,
                disable_shape_infer=True,
            )
        _fix_casts(converted)
        save_model(converted, path)
        failure = _cpu_load_failure(path)
        if failure is None:
            break
        op_type, node_name = failure
        if not node_name or node_name in blocked or len(blocked) >= MAX_BLOCKED_NODES:
            raise RuntimeError(f"onnxruntime cannot run the FP16 graph: no CPU kernel for {op_type} ({node_name!r})")
        blocked.append(node_name)
        kept_ops.add(op_type)
    verify(source, path)
    return Built(meant_for="gpu", details={"weights": "fp16", "io": "fp32", "fp32_ops_for_cpu": sorted(kept_ops)})


def _copy(model: onnx.ModelProto) -> onnx.ModelProto:
    clone = onnx.ModelProto()
    clone.CopyFrom(model)
    return clone


def _basic_optimized(reference: Path, out: Path) -> onnx.ModelProto:
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    options.optimized_model_filepath = str(out)
    options.log_severity_level = 3
    ort.InferenceSession(str(reference), sess_options=options, providers=["CPUExecutionProvider"])
    model = onnx.load(str(out))
    for index, node in enumerate(model.graph.node):  # the converter names its Casts after nodes
        if not node.name:
            node.name = f"{node.op_type}_{index}"
    return model


def _typed(model: onnx.ModelProto, scratch: Path) -> onnx.ModelProto:
    """``model`` with a ``value_info`` (element type) for every intermediate tensor."""
    probe = _copy(model)
    declared = {v.name for v in (*probe.graph.input, *probe.graph.output)}
    weights = {init.name for init in probe.graph.initializer}
    intermediate = [
        name for node in probe.graph.node for name in node.output if name and name not in declared | weights
    ]
    del probe.graph.value_info[:]
    probe.graph.output.extend(helper.make_empty_tensor_value_info(name) for name in intermediate)
    probe_path = scratch / "probe.onnx"
    save_model(probe, probe_path)
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    options.log_severity_level = 3
    session = ort.InferenceSession(str(probe_path), sess_options=options, providers=["CPUExecutionProvider"])
    # onnxruntime reports the element types; shapes of undeclared outputs read as [] (rank 0), so
    # only types are written: a wrong rank would be worse than none.
    types = {o.name: o.type for o in session.get_outputs()}
    del model.graph.value_info[:]
    for name in intermediate:
        onnx_type = types[name]
        elem_type = _ELEM_TYPES.get(onnx_type.removeprefix("tensor(").removesuffix(")"))
        if onnx_type.startswith("tensor(") and elem_type is not None:
            model.graph.value_info.append(helper.make_tensor_value_info(name, elem_type, None))
    return model


_ELEM_TYPES: Final = {
    "float": TensorProto.FLOAT,
    "float16": TensorProto.FLOAT16,
    "double": TensorProto.DOUBLE,
    "bool": TensorProto.BOOL,
    "int8": TensorProto.INT8,
    "uint8": TensorProto.UINT8,
    "int16": TensorProto.INT16,
    "uint16": TensorProto.UINT16,
    "int32": TensorProto.INT32,
    "uint32": TensorProto.UINT32,
    "int64": TensorProto.INT64,
    "uint64": TensorProto.UINT64,
    "string": TensorProto.STRING,
}


def _fix_casts(model: onnx.ModelProto) -> None:
    """The converter retypes a Cast's output to FP16 but leaves ``to=FLOAT``: make them agree."""
    fp16 = {v.name for v in model.graph.value_info if v.type.tensor_type.elem_type == TensorProto.FLOAT16}
    for node in model.graph.node:
        if node.op_type != "Cast" or node.output[0] not in fp16:
            continue
        for attr in node.attribute:
            if attr.name == "to" and attr.i == TensorProto.FLOAT:
                attr.i = TensorProto.FLOAT16


def _cpu_load_failure(path: Path) -> tuple[str, str] | None:
    """None when onnxruntime's CPU provider loads ``path``, else the (op type, node) it lacks a kernel for."""
    options = ort.SessionOptions()
    options.log_severity_level = 3
    try:
        ort.InferenceSession(str(path), sess_options=options, providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime's exception classes share no base
        match = _NOT_IMPLEMENTED.search(str(exc))
        if match is None:
            raise
        return match.group(1), match.group(2)
    return None
