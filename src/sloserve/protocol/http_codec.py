"""The v2 HTTP/JSON inference body, with Triton's binary tensor data extension.

A request body is a JSON object, optionally followed by binary tensor data; the
``Inference-Header-Content-Length`` header (``header_length`` here) then gives
the JSON part's length. An input whose parameters hold ``binary_data_size: N``
takes the next N bytes after the JSON, in input order. Outputs requested with
``binary_data: true`` (or all outputs, with the request parameter
``binary_data_output: true``) come back the same way: in the JSON without
``data`` and with ``binary_data_size``, their bytes after it.

Every client mistake raises :class:`~sloserve.errors.InvalidArgumentError`
naming the input at fault.
"""

from __future__ import annotations

from typing import Any, Final

import orjson

from sloserve.datatypes import DATATYPES
from sloserve.errors import InvalidArgumentError
from sloserve.protocol.json_tensor import array_from_json, json_from_array
from sloserve.protocol.raw_tensor import array_from_raw, checked_shape, raw_from_array
from sloserve.protocol.types import Admit, InferRequest, InferResponse, RequestedOutput, Tensor

BINARY_DATA_SIZE: Final = "binary_data_size"
BINARY_DATA: Final = "binary_data"
BINARY_DATA_OUTPUT: Final = "binary_data_output"

_SCALAR_TYPES: Final = frozenset((str, bool, int, float))
"""A parameter's types: JSON decodes to exactly these, so one lookup of its type checks a value."""
_NO_BINARY: Final = memoryview(b"")
_DATATYPES: Final = frozenset(DATATYPES)


def decode_infer_request(
    body: bytes, header_length: int | None, model_name: str, model_version: str | None, admit: Admit | None = None
) -> InferRequest:
    """Decode a v2 inference request body (JSON, or JSON header plus binary tensors); ``admit`` sees the
    request's parameters before any tensor is decoded."""
    header: bytes | memoryview = body
    binary = _NO_BINARY
    if header_length is not None:
        if not 0 <= header_length <= len(body):
            raise InvalidArgumentError(
                f"Inference-Header-Content-Length is {header_length} but the body has {len(body)} bytes"
            )
        view = memoryview(body)
        header, binary = view[:header_length], view[header_length:]
    try:
        document = orjson.loads(header)
    except orjson.JSONDecodeError as exc:
        hint = (
            ""
            if header_length is not None
            else (" (a body carrying binary tensor data needs the Inference-Header-Content-Length header)")
        )
        raise InvalidArgumentError(f"request body is not valid JSON: {exc}{hint}") from None
    if not isinstance(document, dict):
        raise InvalidArgumentError("request body must be a JSON object")
    parameters = _checked_parameters(document.get("parameters"), "request")
    slo = admit(parameters) if admit is not None else None

    raw_inputs = document.get("inputs")
    if not isinstance(raw_inputs, list) or not raw_inputs:
        raise InvalidArgumentError("request must have 'inputs': a non-empty list of input tensors")
    inputs: list[Tensor] = []
    offset = 0
    for position, raw_input in enumerate(raw_inputs):
        tensor, offset = _decode_input(raw_input, position, binary, offset)
        inputs.append(tensor)
    if offset != len(binary):
        raise InvalidArgumentError(
            f"request has {len(binary)} bytes of binary data after the JSON header but its inputs' "
            f"binary_data_size values add up to {offset}"
        )
    if len(inputs) > 1 and len({t.name for t in inputs}) != len(inputs):
        raise InvalidArgumentError("request names the same input more than once")

    request_id = document.get("id")
    if request_id is not None and not isinstance(request_id, str):
        raise InvalidArgumentError(f"request 'id' must be a string, got {request_id!r}")
    return InferRequest(
        model_name=model_name,
        model_version=model_version,
        inputs=inputs,
        id=request_id,
        outputs=_decode_outputs(document.get("outputs")),
        parameters=parameters,
        slo=slo,
    )


def encode_infer_response(response: InferResponse, request: InferRequest) -> tuple[bytes, int | None]:
    """Encode a response; returns ``(body, json_header_length)``.

    ``json_header_length`` is None when every output went as JSON; otherwise the
    transport sends it as the ``Inference-Header-Content-Length`` header.
    """
    binary_default = request.parameters.get(BINARY_DATA_OUTPUT) is True
    binary_by_name = {out.name: out.parameters.get(BINARY_DATA, binary_default) is True for out in request.outputs}
    outputs: list[dict[str, Any]] = []
    chunks: list[bytes] = []
    for tensor in response.outputs:
        encoded: dict[str, Any] = {
            "name": tensor.name,
            "datatype": tensor.datatype,
            "shape": tensor.shape,
        }
        if binary_by_name.get(tensor.name, binary_default):
            raw = raw_from_array(tensor.data, tensor.datatype)
            chunks.append(raw)
            encoded["parameters"] = {**tensor.parameters, BINARY_DATA_SIZE: len(raw)}
        else:
            if tensor.parameters:
                encoded["parameters"] = tensor.parameters
            encoded["data"] = _json_data(tensor)
        outputs.append(encoded)

    document: dict[str, Any] = {"model_name": response.model_name}
    if response.model_version is not None:
        document["model_version"] = response.model_version
    if response.id is not None:
        document["id"] = response.id
    if response.parameters:
        document["parameters"] = response.parameters
    document["outputs"] = outputs
    header = orjson.dumps(document, option=orjson.OPT_SERIALIZE_NUMPY)
    if not chunks:
        return header, None
    return b"".join([header, *chunks]), len(header)


def encode_error(message: str) -> bytes:
    """The v2 error body: ``{"error": message}``."""
    return orjson.dumps({"error": message})


def _decode_input(raw_input: Any, position: int, binary: memoryview, offset: int) -> tuple[Tensor, int]:
    """One input tensor; returns it and the offset of the next binary tensor."""
    if not isinstance(raw_input, dict):
        raise InvalidArgumentError(f"inputs[{position}] must be a JSON object")
    name = raw_input.get("name")
    if not isinstance(name, str):
        raise InvalidArgumentError(f"inputs[{position}] must have a string 'name'")
    label = f"input {name!r}"
    if "shape" not in raw_input:
        raise InvalidArgumentError(f"{label}: missing 'shape'")
    shape = checked_shape(raw_input["shape"], label)
    datatype = raw_input.get("datatype")
    if type(datatype) is not str or datatype not in _DATATYPES:
        if datatype is None:
            raise InvalidArgumentError(f"{label}: missing 'datatype'")
        raise InvalidArgumentError(f"{label}: unknown datatype {datatype!r}; expected one of {', '.join(DATATYPES)}")
    parameters = _checked_parameters(raw_input.get("parameters"), label)

    size = parameters.pop(BINARY_DATA_SIZE, None)
    if size is None:
        if "data" not in raw_input:
            raise InvalidArgumentError(f"{label}: missing 'data' (or a binary_data_size parameter)")
        data = array_from_json(raw_input["data"], datatype, shape, label)
    else:
        if "data" in raw_input:
            raise InvalidArgumentError(f"{label}: has both 'data' and a binary_data_size parameter")
        if type(size) is not int or size < 0:
            raise InvalidArgumentError(f"{label}: binary_data_size must be a non-negative integer")
        end = offset + size
        if end > len(binary):
            raise InvalidArgumentError(
                f"{label}: binary_data_size is {size} but only {len(binary) - offset} bytes of binary "
                "data remain in the body (truncated request?)"
            )
        data = array_from_raw(binary[offset:end], datatype, shape, label)
        offset = end
    return Tensor(name=name, datatype=datatype, shape=shape, data=data, parameters=parameters), offset


def _decode_outputs(raw_outputs: Any) -> list[RequestedOutput]:
    if raw_outputs is None:
        return []
    if not isinstance(raw_outputs, list):
        raise InvalidArgumentError("request 'outputs' must be a list of {'name': ...} objects")
    outputs = []
    for position, raw_output in enumerate(raw_outputs):
        if not isinstance(raw_output, dict) or not isinstance(raw_output.get("name"), str):
            raise InvalidArgumentError(f"outputs[{position}] must be an object with a string 'name'")
        name = raw_output["name"]
        label = f"output {name!r}"
        parameters = _checked_parameters(raw_output.get("parameters"), label)
        if not isinstance(parameters.get(BINARY_DATA, False), bool):
            raise InvalidArgumentError(f"{label}: parameter binary_data must be true or false")
        outputs.append(RequestedOutput(name=name, parameters=parameters))
    return outputs


def _checked_parameters(raw: Any, label: str) -> dict[str, Any]:
    """A parameters object: string keys, string/number/boolean values."""
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise InvalidArgumentError(f"{label}: 'parameters' must be a JSON object")
    for key, value in raw.items():
        if value.__class__ not in _SCALAR_TYPES:
            raise InvalidArgumentError(f"{label}: parameter {key!r} must be a string, number or boolean, got {value!r}")
    return raw


def _json_data(tensor: Tensor) -> Any:
    try:
        return json_from_array(tensor.data, tensor.datatype)
    except UnicodeDecodeError:
        raise InvalidArgumentError(
            f"output {tensor.name!r} holds bytes that are not UTF-8 and cannot be sent as JSON; "
            "request it with the parameter binary_data: true"
        ) from None
