"""Conversions between the gRPC inference messages and the wire-neutral types.

Inputs arrive either as typed ``contents`` (one repeated field per datatype
family; narrow integers travel widened) or, as ``tritonclient`` sends them, as
``raw_input_contents``: one entry per input, in input order, in the layout of
:mod:`sloserve.protocol.raw_tensor`. Responses always use
``raw_output_contents``, as Triton does.

Parameters travel as ``InferParameter`` maps and become plain dicts of
``bool | int | float | str``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Final

import numpy as np
from google.protobuf.internal.containers import MessageMap

from sloserve.datatypes import DATATYPES, numpy_dtype
from sloserve.errors import InvalidArgumentError
from sloserve.protocol.generated import inference_pb2 as pb
from sloserve.protocol.raw_tensor import (
    INTEGER_RANGES,
    array_from_raw,
    checked_shape,
    element_count,
    raw_from_array,
)
from sloserve.protocol.types import Admit, InferRequest, InferResponse, RequestedOutput, Tensor

ParameterValue = bool | int | float | str
RepositoryParameterValue = bool | int | str | bytes

# datatype -> (InferTensorContents field, numpy dtype of that field's elements)
_CONTENTS: Final[dict[str, tuple[str, np.dtype[Any]]]] = {
    "BOOL": ("bool_contents", np.dtype(np.bool_)),
    "INT8": ("int_contents", np.dtype(np.int32)),
    "INT16": ("int_contents", np.dtype(np.int32)),
    "INT32": ("int_contents", np.dtype(np.int32)),
    "INT64": ("int64_contents", np.dtype(np.int64)),
    "UINT8": ("uint_contents", np.dtype(np.uint32)),
    "UINT16": ("uint_contents", np.dtype(np.uint32)),
    "UINT32": ("uint_contents", np.dtype(np.uint32)),
    "UINT64": ("uint64_contents", np.dtype(np.uint64)),
    "FP32": ("fp32_contents", np.dtype(np.float32)),
    "FP64": ("fp64_contents", np.dtype(np.float64)),
    "BYTES": ("bytes_contents", np.dtype(np.object_)),
}
_CONTENTS_FIELDS: Final = tuple(sorted({field for field, _ in _CONTENTS.values()}))

_DATATYPES: Final = frozenset(DATATYPES)
_INT64_MIN: Final = -(2**63)
_INT64_MAX: Final = 2**63 - 1
_UINT64_MAX: Final = 2**64 - 1


# ------------------------------------------------------------------ requests


def request_from_proto(msg: pb.ModelInferRequest, admit: Admit | None = None) -> InferRequest:
    """Decode a ``ModelInferRequest``; client mistakes raise InvalidArgumentError. ``admit`` sees the request's
    parameters before any tensor is decoded."""
    parameters = parameters_from_proto(msg.parameters, "request")
    slo = admit(parameters) if admit is not None else None
    entries = msg.inputs
    raw = list(msg.raw_input_contents)
    if raw and len(raw) != len(entries):
        raise InvalidArgumentError(
            f"request has {len(raw)} raw_input_contents entries but {len(entries)} inputs; "
            "raw contents need exactly one entry per input, in input order"
        )
    if not entries:
        raise InvalidArgumentError("request must have at least one input tensor")
    inputs = [_decode_input(entry, raw[position] if raw else None, position) for position, entry in enumerate(entries)]
    if len(inputs) > 1 and len({t.name for t in inputs}) != len(inputs):
        raise InvalidArgumentError("request names the same input more than once")
    outputs = []
    for out in msg.outputs:
        name = out.name
        outputs.append(RequestedOutput(name, parameters_from_proto(out.parameters, f"output {name!r}")))
    return InferRequest(
        model_name=msg.model_name,
        model_version=msg.model_version or None,
        id=msg.id or None,
        inputs=inputs,
        outputs=outputs,
        parameters=parameters,
        slo=slo,
    )


def request_to_proto(request: InferRequest, *, raw_contents: bool = True) -> pb.ModelInferRequest:
    """Encode a request, as a client would: raw contents by default, typed contents on demand."""
    msg = pb.ModelInferRequest(
        model_name=request.model_name,
        model_version=request.model_version or "",
        id=request.id or "",
    )
    parameters_to_proto(request.parameters, msg.parameters)
    for tensor in request.inputs:
        entry = msg.inputs.add(name=tensor.name, datatype=tensor.datatype, shape=tensor.shape)
        parameters_to_proto(tensor.parameters, entry.parameters)
        if raw_contents:
            msg.raw_input_contents.append(raw_from_array(tensor.data, tensor.datatype))
        else:
            _fill_contents(entry.contents, tensor, f"input {tensor.name!r}")
    for out in request.outputs:
        parameters_to_proto(out.parameters, msg.outputs.add(name=out.name).parameters)
    return msg


def _decode_input(entry: pb.ModelInferRequest.InferInputTensor, raw: bytes | None, position: int) -> Tensor:
    name = entry.name
    if not name:
        raise InvalidArgumentError(f"inputs[{position}] must have a name")
    label = f"input {name!r}"
    datatype = entry.datatype
    if datatype not in _DATATYPES:
        raise InvalidArgumentError(f"{label}: unknown datatype {datatype!r}; expected one of {', '.join(DATATYPES)}")
    shape = checked_shape(list(entry.shape), label)
    if raw is not None:
        if entry.HasField("contents") and entry.contents.ByteSize():
            raise InvalidArgumentError(
                f"{label}: has typed contents but the request uses raw_input_contents; use one or the other"
            )
        data = array_from_raw(raw, datatype, shape, label)
    else:
        data = _array_from_contents(entry.contents, datatype, shape, label)
    return Tensor(name, datatype, shape, data, parameters_from_proto(entry.parameters, label))


# ----------------------------------------------------------------- responses


def response_to_proto(response: InferResponse) -> pb.ModelInferResponse:
    """Encode a response with ``raw_output_contents``, one entry per output."""
    msg = pb.ModelInferResponse(
        model_name=response.model_name,
        model_version=response.model_version or "",
        id=response.id or "",
    )
    parameters_to_proto(response.parameters, msg.parameters)
    raws = []
    for tensor in response.outputs:
        entry = msg.outputs.add(name=tensor.name, datatype=tensor.datatype, shape=tensor.shape)
        parameters_to_proto(tensor.parameters, entry.parameters)
        raws.append(raw_from_array(tensor.data, tensor.datatype))
    msg.raw_output_contents.extend(raws)
    return msg


def response_from_proto(msg: pb.ModelInferResponse) -> InferResponse:
    """Decode a ``ModelInferResponse`` (raw or typed contents), as a client would."""
    raw = msg.raw_output_contents
    if raw and len(raw) != len(msg.outputs):
        raise InvalidArgumentError(
            f"response has {len(raw)} raw_output_contents entries but {len(msg.outputs)} outputs"
        )
    outputs = []
    for position, out in enumerate(msg.outputs):
        label = f"output {out.name!r}"
        shape = checked_shape(tuple(out.shape), label)
        if raw:
            data = array_from_raw(raw[position], out.datatype, shape, label)
        else:
            data = _array_from_contents(out.contents, out.datatype, shape, label)
        outputs.append(
            Tensor(
                name=out.name,
                datatype=out.datatype,
                shape=shape,
                data=data,
                parameters=parameters_from_proto(out.parameters, label),
            )
        )
    return InferResponse(
        model_name=msg.model_name,
        model_version=msg.model_version or None,
        id=msg.id or None,
        outputs=outputs,
        parameters=parameters_from_proto(msg.parameters, "response"),
    )


# ------------------------------------------------------------ typed contents


def _array_from_contents(
    contents: pb.InferTensorContents, datatype: str, shape: tuple[int, ...], label: str
) -> np.ndarray[Any, Any]:
    if datatype not in _CONTENTS:  # FP16: no typed field exists
        numpy_dtype(datatype)  # unknown datatypes get their own message
        raise InvalidArgumentError(f"{label}: {datatype} has no typed contents; send it in raw_input_contents")
    field, wire = _CONTENTS[datatype]
    values = getattr(contents, field)
    count = element_count(shape)
    if len(values) != count:
        used = [name for name in _CONTENTS_FIELDS if len(getattr(contents, name))]
        hint = (
            f"; {datatype} data goes in {field}, the request filled {', '.join(used)}"
            if used and used != [field]
            else ""
        )
        raise InvalidArgumentError(
            f"{label}: shape {list(shape)} holds {count} elements but {field} has {len(values)}{hint}"
        )
    target = numpy_dtype(datatype)
    if datatype == "BYTES":
        out = np.empty(count, dtype=np.object_)
        out[:] = list(values)
        return out.reshape(shape)
    array = np.array(values, dtype=wire)
    if target != wire and count:
        low, high = INTEGER_RANGES[datatype]
        smallest, largest = array.min(), array.max()
        if smallest < low or largest > high:
            bad = smallest if smallest < low else largest
            raise InvalidArgumentError(
                f"{label}: value {bad} in {field} is out of range for {datatype} [{low}, {high}]"
            )
    return array.astype(target, copy=False).reshape(shape)


def _fill_contents(contents: pb.InferTensorContents, tensor: Tensor, label: str) -> None:
    if tensor.datatype not in _CONTENTS:
        raise InvalidArgumentError(f"{label}: {tensor.datatype} has no typed contents; use raw contents")
    field, wire = _CONTENTS[tensor.datatype]
    flat = tensor.data.reshape(-1)
    if tensor.datatype == "BYTES":
        values: list[Any] = [item if isinstance(item, bytes) else str(item).encode("utf-8") for item in flat]
    else:
        values = flat.astype(wire, copy=False).tolist()
    getattr(contents, field).extend(values)


# ---------------------------------------------------------------- parameters


def parameters_from_proto(params: Mapping[str, pb.InferParameter], label: str = "request") -> dict[str, ParameterValue]:
    """An ``InferParameter`` map as a plain dict; a parameter with no value is an error."""
    out: dict[str, ParameterValue] = {}
    if not params:
        return out
    for key, param in params.items():
        kind = param.WhichOneof("parameter_choice")
        if kind is None:
            raise InvalidArgumentError(f"{label}: parameter {key!r} has no value")
        out[key] = getattr(param, kind)
    return out


def parameters_to_proto(values: Mapping[str, Any], target: MessageMap[str, pb.InferParameter]) -> None:
    """Write a dict of bool/int/float/str (numpy scalars too) into an ``InferParameter`` map."""
    for key, value in values.items():
        if isinstance(value, np.generic):
            value = value.item()
        param = target[key]
        if isinstance(value, bool):
            param.bool_param = value
        elif isinstance(value, int):
            if _INT64_MIN <= value <= _INT64_MAX:
                param.int64_param = value
            elif _INT64_MAX < value <= _UINT64_MAX:
                param.uint64_param = value
            else:
                raise InvalidArgumentError(f"parameter {key!r}: integer {value} does not fit 64 bits")
        elif isinstance(value, float):
            param.double_param = value
        elif isinstance(value, str):
            param.string_param = value
        else:
            raise InvalidArgumentError(
                f"parameter {key!r} must be a bool, int, float or str, got {type(value).__name__}"
            )


def repository_parameters_from_proto(
    params: Mapping[str, pb.ModelRepositoryParameter],
) -> dict[str, RepositoryParameterValue]:
    """The parameters of a repository load/unload request as a plain dict."""
    out: dict[str, RepositoryParameterValue] = {}
    for key, param in params.items():
        kind = param.WhichOneof("parameter_choice")
        if kind is None:
            raise InvalidArgumentError(f"repository parameter {key!r} has no value")
        out[key] = getattr(param, kind)
    return out
