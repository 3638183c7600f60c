"""One ONNX Runtime inference session on the CPU, behind sloserve's error codes.

This module runs inside every worker process, so it imports only onnxruntime and
numpy (not ``onnx``). Every onnxruntime failure becomes a :mod:`sloserve.errors`
exception: a file that is not a loadable model or a bad input is
``InvalidArgumentError``, anything else during a run is ``InternalError``.

BYTES tensors follow the :mod:`sloserve.datatypes` convention (object arrays of
``bytes``): they are decoded to ``str`` for onnxruntime and encoded back on the
way out.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Final

import numpy as np
import onnxruntime as ort

from sloserve.datatypes import numpy_dtype
from sloserve.errors import InternalError, InvalidArgumentError, NotFoundError
from sloserve.model_config import TensorSpec

Array = np.ndarray[Any, Any]

# ONNX element type names, lowercased as onnxruntime prints them inside
# "tensor(...)"; ``onnx.TensorProto.DataType.Name(t).lower()`` gives the same key.
DATATYPE_BY_ONNX_TYPE: Final[dict[str, str]] = {
    "float": "FP32",
    "double": "FP64",
    "float16": "FP16",
    "bool": "BOOL",
    "uint8": "UINT8",
    "uint16": "UINT16",
    "uint32": "UINT32",
    "uint64": "UINT64",
    "int8": "INT8",
    "int16": "INT16",
    "int32": "INT32",
    "int64": "INT64",
    "string": "BYTES",
}

_ORT_PREFIX = re.compile(r"^\[ONNXRuntimeError\] : \d+ : [A-Z_]+ : ")
_ORT_INVALID_ARGUMENT = ort.capi.onnxruntime_pybind11_state.InvalidArgument


def protocol_datatype(onnx_type: str, where: str) -> str:
    """Map an onnxruntime type string such as ``tensor(float)`` to a protocol datatype."""
    if onnx_type.startswith("tensor(") and onnx_type.endswith(")"):
        datatype = DATATYPE_BY_ONNX_TYPE.get(onnx_type[len("tensor(") : -1])
        if datatype is not None:
            return datatype
        raise InvalidArgumentError(f"{where} has element type {onnx_type}, which the protocol cannot carry")
    raise InvalidArgumentError(f"{where} has type {onnx_type}; only tensors can be served")


def _dims(shape: Any) -> tuple[int, ...]:
    """onnxruntime reports a dimension as an int, a symbol name or None; symbols become -1."""
    if shape is None:
        return ()
    return tuple(d if isinstance(d, int) and d >= 0 else -1 for d in shape)


def _specs(args: Sequence[Any], kind: str) -> tuple[TensorSpec, ...]:
    return tuple(
        TensorSpec(
            name=a.name,
            datatype=protocol_datatype(a.type, f"{kind} {a.name!r}"),
            shape=_dims(a.shape),
        )
        for a in args
    )


class OnnxSession:
    """A loaded model: its signature and a synchronous ``run``.

    ``run`` keeps no state of its own and onnxruntime sessions are thread-safe;
    onnxruntime's own thread pool is sized by ``intra_op_threads``. ``inputs`` and
    ``outputs`` are what onnxruntime reports; it cannot tell a tensor of unknown
    rank from a scalar (both read ``()``), so registration reads the signature
    with :func:`sloserve.runtime.graph.read_signature` instead.
    """

    def __init__(self, path: Path, intra_op_threads: int = 1) -> None:
        if not path.is_file():
            raise InvalidArgumentError(f"{path} is not a loadable ONNX model: no such file")
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.inter_op_num_threads = 1
        options.intra_op_num_threads = intra_op_threads
        options.log_severity_level = 3  # errors only; warnings would flood worker logs
        try:
            self._session = ort.InferenceSession(str(path), sess_options=options, providers=["CPUExecutionProvider"])
        except Exception as exc:  # onnxruntime raises a zoo of classes not derived from one base
            raise InvalidArgumentError(f"{path} is not a loadable ONNX model: {_ort_message(exc)}") from None
        self.path = path
        self.inputs: tuple[TensorSpec, ...] = _specs(self._session.get_inputs(), "input")
        self.outputs: tuple[TensorSpec, ...] = _specs(self._session.get_outputs(), "output")
        self._input_dtypes = {t.name: numpy_dtype(t.datatype) for t in self.inputs}
        self._bytes_outputs = frozenset(t.name for t in self.outputs if t.datatype == "BYTES")
        self._output_names = frozenset(t.name for t in self.outputs)

    def run(self, inputs: Mapping[str, Array], output_names: Sequence[str]) -> dict[str, Array]:
        """Run the model on a full feed and return the requested outputs by name."""
        feed = self._feed(inputs)
        for name in output_names:
            if name not in self._output_names:
                raise NotFoundError(f"unknown output {name!r}; the model has {sorted(self._output_names)}")
        try:
            results = self._session.run(list(output_names), feed)
        except (_ORT_INVALID_ARGUMENT, ValueError) as exc:
            raise InvalidArgumentError(f"bad input for {self.path.name}: {_ort_message(exc)}") from None
        except Exception as exc:  # a kernel failure on valid-looking input
            raise InternalError(f"model {self.path} failed: {_ort_message(exc)}") from None
        out: dict[str, Array] = {}
        for name, value in zip(output_names, results, strict=True):
            out[name] = _encode_bytes(value) if name in self._bytes_outputs else np.asarray(value)
        return out

    def _feed(self, inputs: Mapping[str, Array]) -> dict[str, Array]:
        expected = self._input_dtypes
        if inputs.keys() != expected.keys():
            missing = sorted(expected.keys() - inputs.keys())
            unknown = sorted(inputs.keys() - expected.keys())
            raise InvalidArgumentError(
                f"inputs do not match the model: missing {missing}, unknown {unknown}; expected {sorted(expected)}"
            )
        feed: dict[str, Array] = {}
        for name, array in inputs.items():
            want = expected[name]
            if want.kind == "O":
                feed[name] = _decode_bytes(name, array)
            elif array.dtype != want:
                raise InvalidArgumentError(f"input {name!r} has dtype {array.dtype}, the model expects {want}")
            else:
                feed[name] = array
        return feed


def _decode_bytes(name: str, array: Array) -> Array:
    """onnxruntime string tensors take ``str``; it would stringify ``bytes`` as "b'...'"."""
    if array.dtype.kind == "U":
        return array.astype(object)
    if array.dtype.kind not in ("O", "S"):
        raise InvalidArgumentError(f"input {name!r} has dtype {array.dtype}, the model expects BYTES")
    try:
        decoded = [v.decode("utf-8") if isinstance(v, bytes) else str(v) for v in array.ravel()]
    except UnicodeDecodeError as exc:
        raise InvalidArgumentError(f"input {name!r} holds bytes that are not UTF-8: {exc}") from None
    return np.array(decoded, dtype=object).reshape(array.shape)


def _encode_bytes(value: Any) -> Array:
    array = np.asarray(value, dtype=object)
    encoded = [v.encode("utf-8") if isinstance(v, str) else v for v in array.ravel()]
    return np.array(encoded, dtype=object).reshape(array.shape)


def _ort_message(exc: Exception) -> str:
    """Drop onnxruntime's "[ONNXRuntimeError] : 2 : INVALID_ARGUMENT : " prefix and fold lines."""
    return " ".join(_ORT_PREFIX.sub("", str(exc).strip()).split())
