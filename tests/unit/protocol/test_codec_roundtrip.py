"""Every datatype and shape survives JSON, binary and gRPC encode -> decode unchanged."""

from __future__ import annotations

from typing import Any

import numpy as np
import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from sloserve.datatypes import DATATYPES, numpy_dtype
from sloserve.protocol import grpc_codec, http_codec
from sloserve.protocol.generated import inference_pb2 as pb
from sloserve.protocol.json_tensor import json_from_array
from sloserve.protocol.types import InferRequest, InferResponse, RequestedOutput, Tensor

SHAPES = hnp.array_shapes(min_dims=0, max_dims=3, min_side=0, max_side=4)
FLOAT_WIDTHS = {"FP16": 16, "FP32": 32, "FP64": 64}


def arrays(datatype: str, *, json_safe: bool) -> st.SearchStrategy[np.ndarray[Any, Any]]:
    """Arrays of ``datatype``; JSON-safe ones have finite floats and UTF-8 text for BYTES."""
    if datatype == "BYTES":
        text = st.text(st.characters(exclude_categories=["Cs"]), max_size=6)
        elements = text.map(str.encode) if json_safe else st.binary(max_size=6)
        return hnp.arrays(np.object_, SHAPES, elements=elements)
    dtype = numpy_dtype(datatype)
    if datatype in FLOAT_WIDTHS and json_safe:
        finite = st.floats(width=FLOAT_WIDTHS[datatype], allow_nan=False, allow_infinity=False)  # type: ignore[arg-type]
        return hnp.arrays(dtype, SHAPES, elements=finite)
    return hnp.arrays(dtype, SHAPES)


def assert_same(decoded: np.ndarray[Any, Any], original: np.ndarray[Any, Any], datatype: str) -> None:
    assert decoded.shape == original.shape
    if datatype == "BYTES":
        assert decoded.dtype == np.object_
        assert all(type(item) is bytes for item in decoded.reshape(-1))
        assert decoded.reshape(-1).tolist() == original.reshape(-1).tolist()
    else:
        assert decoded.dtype == numpy_dtype(datatype)
        assert decoded.tobytes() == original.tobytes()  # bit-exact, NaN payloads included


def request_body(datatype: str, array: np.ndarray[Any, Any], data: Any) -> bytes:
    tensor = {"name": "x", "shape": list(array.shape), "datatype": datatype, "data": data}
    return orjson.dumps({"inputs": [tensor]}, option=orjson.OPT_SERIALIZE_NUMPY)


def response_as_request(body: bytes, header_length: int | None) -> tuple[bytes, int | None]:
    """A response's outputs have the layout of request inputs: re-label them to decode them."""
    cut = len(body) if header_length is None else header_length
    document = orjson.loads(body[:cut])
    header = orjson.dumps({"inputs": document["outputs"]})
    return header + body[cut:], None if header_length is None else len(header)


def one_output_response(datatype: str, array: np.ndarray[Any, Any]) -> InferResponse:
    return InferResponse(model_name="m", outputs=[Tensor("y", datatype, array.shape, array)])


@pytest.mark.parametrize("datatype", DATATYPES)
@settings(max_examples=25, deadline=None)
@given(data=st.data())
def test_json_data_round_trips_flat_and_nested(datatype: str, data: st.DataObject) -> None:
    array = data.draw(arrays(datatype, json_safe=True))
    flat = json_from_array(array, datatype)
    nested = np.asarray(flat).reshape(array.shape).tolist() if datatype != "BYTES" else flat

    for body in (request_body(datatype, array, flat), request_body(datatype, array, nested)):
        request = http_codec.decode_infer_request(body, None, "m", None)
        assert_same(request.inputs[0].data, array, datatype)


@pytest.mark.parametrize("datatype", DATATYPES)
@settings(max_examples=25, deadline=None)
@given(data=st.data())
def test_json_response_decodes_back(datatype: str, data: st.DataObject) -> None:
    array = data.draw(arrays(datatype, json_safe=True))
    request = InferRequest(model_name="m", inputs=[])
    body, header_length = http_codec.encode_infer_response(one_output_response(datatype, array), request)
    assert header_length is None

    decoded = http_codec.decode_infer_request(*response_as_request(body, header_length), "m", None)
    assert_same(decoded.inputs[0].data, array, datatype)


@pytest.mark.parametrize("datatype", DATATYPES)
@settings(max_examples=25, deadline=None)
@given(data=st.data())
def test_binary_response_decodes_back(datatype: str, data: st.DataObject) -> None:
    array = data.draw(arrays(datatype, json_safe=False))
    request = InferRequest(model_name="m", inputs=[], outputs=[RequestedOutput("y", {"binary_data": True})])
    body, header_length = http_codec.encode_infer_response(one_output_response(datatype, array), request)
    assert header_length is not None

    decoded = http_codec.decode_infer_request(*response_as_request(body, header_length), "m", None)
    assert_same(decoded.inputs[0].data, array, datatype)


@pytest.mark.parametrize("datatype", DATATYPES)
@settings(max_examples=25, deadline=None)
@given(data=st.data())
def test_grpc_request_round_trips(datatype: str, data: st.DataObject) -> None:
    array = data.draw(arrays(datatype, json_safe=False))
    request = InferRequest(
        model_name="m",
        model_version="2",
        id="r1",
        inputs=[Tensor("x", datatype, array.shape, array, {"note": "n"})],
        outputs=[RequestedOutput("y", {"classification": 3})],
        parameters={"latency_slo_ms": 5.5, "priority": 2, "cache": False},
    )
    typed_too = (True, False) if datatype != "FP16" else (True,)  # FP16 has no typed contents
    for raw_contents in typed_too:
        wire = grpc_codec.request_to_proto(request, raw_contents=raw_contents).SerializeToString()
        decoded = grpc_codec.request_from_proto(pb.ModelInferRequest.FromString(wire))

        assert_same(decoded.inputs[0].data, array, datatype)
        assert decoded.inputs[0].parameters == {"note": "n"}
        assert (decoded.model_name, decoded.model_version, decoded.id) == ("m", "2", "r1")
        assert decoded.outputs == request.outputs
        assert decoded.parameters == request.parameters


@pytest.mark.parametrize("datatype", DATATYPES)
@settings(max_examples=25, deadline=None)
@given(data=st.data())
def test_grpc_response_round_trips(datatype: str, data: st.DataObject) -> None:
    array = data.draw(arrays(datatype, json_safe=False))
    response = one_output_response(datatype, array)
    response.parameters = {"variant": "int8"}

    msg = grpc_codec.response_to_proto(response)
    assert len(msg.raw_output_contents) == 1
    decoded = grpc_codec.response_from_proto(pb.ModelInferResponse.FromString(msg.SerializeToString()))

    assert_same(decoded.outputs[0].data, array, datatype)
    assert decoded.parameters == {"variant": "int8"}
    assert decoded.model_version is None
    assert decoded.id is None
