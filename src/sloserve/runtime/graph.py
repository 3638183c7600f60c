"""Reading an ONNX graph's signature and checking a model config against it.

Uses ``onnx`` only (no inference session), so it is cheap enough for the control
plane to call on every registration and repository scan. Models with external
data are read without loading that data.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import onnx

from sloserve.errors import InvalidArgumentError
from sloserve.model_config import ModelConfig, TensorSpec, validate_model_name
from sloserve.runtime.session import DATATYPE_BY_ONNX_TYPE

TARGET_OPSET: Final = 21
"""The ``ai.onnx`` opset sloserve writes: onnxruntime >= 1.18 (the oldest supported) runs it."""

Signature = tuple[tuple[TensorSpec, ...], tuple[TensorSpec, ...]]


@dataclass(frozen=True, slots=True)
class _GraphTensor:
    name: str
    datatype: str
    shape: tuple[int, ...] | None  # None: the graph does not say its rank


def _describe(source: Path | bytes) -> str:
    return str(source) if isinstance(source, Path) else "the ONNX model"


def load_model(source: Path | bytes) -> onnx.ModelProto:
    """Parse an ONNX model (without external data) or raise a clear InvalidArgumentError."""
    where = _describe(source)
    try:
        if isinstance(source, bytes):
            model = onnx.load_model_from_string(source)
        else:
            model = onnx.load(str(source), load_external_data=False)
    except FileNotFoundError:
        raise InvalidArgumentError(f"{where} is not a loadable ONNX model: no such file") from None
    except Exception as exc:  # protobuf DecodeError, RuntimeWarning, OSError, ...
        raise InvalidArgumentError(f"{where} is not a loadable ONNX model: {exc}") from None
    if model.ir_version <= 0 or not model.HasField("graph") or not model.graph.output:
        raise InvalidArgumentError(f"{where} is not a loadable ONNX model: it holds no graph")
    return model


def is_onnx(path: Path) -> bool:
    """True when ``path`` parses as an ONNX model with a graph (its contents are not checked)."""
    try:
        load_model(path)
    except InvalidArgumentError:
        return False
    return True


def _tensor(value: Any, kind: str, where: str) -> _GraphTensor:
    label = f"graph {kind} {value.name!r} of {where}"
    if value.type.WhichOneof("value") != "tensor_type":
        raise InvalidArgumentError(f"{label} is not a tensor; only tensors can be served")
    tensor_type = value.type.tensor_type
    onnx_type = onnx.TensorProto.DataType.Name(tensor_type.elem_type).lower()
    datatype = DATATYPE_BY_ONNX_TYPE.get(onnx_type)
    if datatype is None:
        raise InvalidArgumentError(f"{label} has element type {onnx_type}, which the protocol cannot carry")
    shape = None
    if tensor_type.HasField("shape"):
        shape = tuple(d.dim_value if d.HasField("dim_value") else -1 for d in tensor_type.shape.dim)
    return _GraphTensor(value.name, datatype, shape)


def _graph_tensors(model: onnx.ModelProto, where: str) -> tuple[tuple[_GraphTensor, ...], tuple[_GraphTensor, ...]]:
    graph = model.graph
    # Before IR 4 initializers were also listed as inputs; they are weights, not inputs.
    weights = {init.name for init in graph.initializer}
    inputs = tuple(_tensor(v, "input", where) for v in graph.input if v.name not in weights)
    outputs = tuple(_tensor(v, "output", where) for v in graph.output)
    return inputs, outputs


def read_signature(source: Path | bytes) -> Signature:
    """The graph's inputs and outputs as protocol tensors; -1 marks a symbolic or unknown dim.

    When the graph does not declare an output's rank, ONNX shape inference is asked;
    if that cannot tell either, the model cannot be described and is refused.
    """
    where = _describe(source)
    model = load_model(source)
    inputs, outputs = _graph_tensors(model, where)
    if any(t.shape is None for t in (*inputs, *outputs)):
        try:
            inferred = onnx.shape_inference.infer_shapes(model)
        except Exception as exc:
            raise InvalidArgumentError(f"shape inference failed on {where}: {exc}") from None
        inputs, outputs = _graph_tensors(inferred, where)
    specs: list[list[TensorSpec]] = [[], []]
    for group, tensors, kind in ((specs[0], inputs, "input"), (specs[1], outputs, "output")):
        for t in tensors:
            if t.shape is None:
                raise InvalidArgumentError(
                    f"graph {kind} {t.name!r} of {where} has no known rank; "
                    "declare its shape in the graph before registering"
                )
            group.append(TensorSpec(t.name, t.datatype, t.shape))
    return tuple(specs[0]), tuple(specs[1])


def config_from_signature(
    name: str, inputs: tuple[TensorSpec, ...], outputs: tuple[TensorSpec, ...], max_batch_size: int = 64
) -> ModelConfig:
    """A config for a graph: batched when every tensor's first dimension is symbolic.

    A graph with any fixed (or missing) first dimension cannot be batched by the
    server: it gets ``max_batch_size`` 0 and its shapes as they are.
    """
    batchable = all(len(t.shape) >= 1 and t.shape[0] == -1 for t in (*inputs, *outputs))
    return ModelConfig(
        name=validate_model_name(name),
        inputs=inputs,
        outputs=outputs,
        max_batch_size=max_batch_size if batchable else 0,
    )


def _compare(kind: str, spec: TensorSpec, graph: _GraphTensor) -> list[str]:
    label = f"{kind} {spec.name!r}"
    problems = []
    if spec.datatype != graph.datatype:
        problems.append(f"{label}: datatype is {spec.datatype} in the config, {graph.datatype} in the graph")
    if graph.shape is None:
        return problems
    if len(spec.shape) != len(graph.shape):
        problems.append(
            f"{label}: shape {list(spec.shape)} in the config has rank {len(spec.shape)}, "
            f"the graph's {list(graph.shape)} has rank {len(graph.shape)}"
        )
        return problems
    for axis, (want, have) in enumerate(zip(spec.shape, graph.shape, strict=True)):
        if want != -1 and have != -1 and want != have:
            problems.append(
                f"{label}: dimension {axis} is {want} in the config, {have} in the graph "
                f"(config {list(spec.shape)}, graph {list(graph.shape)})"
            )
    return problems


def check_config(config: ModelConfig, source: Path | bytes) -> None:
    """Raise one InvalidArgumentError listing every way ``config`` disagrees with the graph.

    Every graph input must be in the config and vice versa; config outputs must
    exist in the graph (a config may expose a subset of the outputs). Datatypes
    and ranks must be equal; a -1 on either side matches any size. With
    ``max_batch_size`` > 0 the graph's first dimension of every input and of every
    configured output must be symbolic.
    """
    where = _describe(source)
    graph_inputs, graph_outputs = _graph_tensors(load_model(source), where)
    problems: list[str] = []
    for kind, specs, tensors in (
        ("input", config.inputs, graph_inputs),
        ("output", config.outputs, graph_outputs),
    ):
        by_name = {t.name: t for t in tensors}
        for spec in specs:
            graph = by_name.get(spec.name)
            if graph is None:
                problems.append(
                    f"{kind} {spec.name!r} is in the config but not in the graph (graph {kind}s: {sorted(by_name)})"
                )
            else:
                problems.extend(_compare(kind, spec, graph))
    configured = {t.name for t in config.inputs}
    for t in graph_inputs:
        if t.name not in configured:
            shape = "unknown rank" if t.shape is None else list(t.shape)
            problems.append(f"graph input {t.name!r} ({t.datatype} {shape}) is missing from the config")
    if config.max_batch_size > 0:
        exposed = {t.name for t in config.outputs}
        for kind, tensors in (("input", graph_inputs), ("output", graph_outputs)):
            for t in tensors:
                checked = kind == "input" or t.name in exposed
                if checked and t.shape is not None and (not t.shape or t.shape[0] != -1):
                    problems.append(
                        f"max_batch_size is {config.max_batch_size} but graph {kind} {t.name!r} has "
                        f"shape {list(t.shape)} with no symbolic batch dimension first; "
                        "set max_batch_size to 0 or export the graph with a dynamic batch axis"
                    )
    if problems:
        listing = "\n".join(f"  - {p}" for p in problems)
        raise InvalidArgumentError(
            f"config of model {config.name!r} does not match {where} "
            f"({len(problems)} problem{'s' if len(problems) > 1 else ''}):\n{listing}"
        )
