"""Our codecs against NVIDIA's tritonclient: bodies and messages it builds, results it parses."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.grpc.service_pb2 as triton_pb
import tritonclient.http as httpclient
from tritonclient.grpc._utils import _get_inference_request

from sloserve.datatypes import DATATYPES, numpy_dtype
from sloserve.protocol import grpc_codec, http_codec
from sloserve.protocol.generated import inference_pb2 as pb
from sloserve.protocol.raw_tensor import INTEGER_RANGES
from sloserve.protocol.types import InferRequest, InferResponse, RequestedOutput, Tensor


def sample(datatype: str, shape: tuple[int, ...], seed: int = 0) -> np.ndarray[Any, Any]:
    """A deterministic array of ``datatype`` spanning the type's range (UTF-8 text for BYTES)."""
    rng = np.random.default_rng(seed)
    count = int(np.prod(shape))
    if datatype == "BYTES":
        words = np.array([f"w{i}-é".encode() for i in range(count)], dtype=np.object_)
        return words.reshape(shape)
    if datatype == "BOOL":
        return rng.integers(0, 2, size=shape).astype(np.bool_)
    dtype = numpy_dtype(datatype)
    if dtype.kind == "f":
        return (rng.standard_normal(shape) * 100).astype(dtype)
    low, high = INTEGER_RANGES[datatype]
    return rng.integers(low, high, size=shape, dtype=dtype, endpoint=True)


def assert_same(decoded: np.ndarray[Any, Any], original: np.ndarray[Any, Any]) -> None:
    assert decoded.shape == original.shape
    if original.dtype == np.object_:
        assert decoded.reshape(-1).tolist() == original.reshape(-1).tolist()
    else:
        assert decoded.dtype == original.dtype
        assert decoded.tobytes() == original.tobytes()


SHAPES = [(2, 3), (0, 4), (1,)]


# ---------------------------------------------------------------------- HTTP


@pytest.mark.parametrize("binary", [True, False])
@pytest.mark.parametrize("datatype", DATATYPES)
def test_http_request_built_by_tritonclient_decodes(datatype: str, binary: bool) -> None:
    inputs, arrays = [], []
    for index, shape in enumerate(SHAPES):
        array = sample(datatype, shape, seed=index)
        inputs.append(httpclient.InferInput(f"in{index}", list(shape), datatype).set_data_from_numpy(array, binary))
        arrays.append(array)
    outputs = [httpclient.InferRequestedOutput("out", binary_data=True)]

    body, json_size = httpclient.InferenceServerClient.generate_request_body(
        inputs, outputs=outputs, request_id="r-7", parameters={"latency_slo_ms": 15}
    )
    request = http_codec.decode_infer_request(body, json_size, "m", None)

    assert request.id == "r-7"
    assert request.parameters["latency_slo_ms"] == 15
    assert [t.name for t in request.inputs] == ["in0", "in1", "in2"]
    for tensor, array in zip(request.inputs, arrays, strict=True):
        assert tensor.datatype == datatype
        assert_same(tensor.data, array)
    assert request.outputs == [RequestedOutput("out", {"binary_data": True})]


@pytest.mark.parametrize("binary", [True, False])
@pytest.mark.parametrize("datatype", DATATYPES)
def test_http_response_parses_in_tritonclient(datatype: str, binary: bool) -> None:
    arrays = {f"out{index}": sample(datatype, shape, seed=index) for index, shape in enumerate(SHAPES)}
    response = InferResponse(
        model_name="m",
        model_version="1",
        id="r-7",
        outputs=[Tensor(name, datatype, array.shape, array) for name, array in arrays.items()],
        parameters={"variant": "fp32"},
    )
    request = InferRequest(
        model_name="m",
        inputs=[],
        outputs=[RequestedOutput(name, {"binary_data": binary}) for name in arrays],
    )

    body, header_length = http_codec.encode_infer_response(response, request)
    result = httpclient.InferResult.from_response_body(body, header_length=header_length)

    assert result.get_response()["id"] == "r-7"
    assert result.get_response()["parameters"] == {"variant": "fp32"}
    for name, array in arrays.items():
        decoded = result.as_numpy(name)
        if array.size == 0:
            assert decoded.shape == array.shape  # tritonclient returns float64 for any empty binary output
            continue
        if datatype == "BYTES" and not binary:
            # tritonclient hands JSON strings back as str; the text is what must match.
            decoded = np.array([s.encode() for s in decoded.reshape(-1)], dtype=np.object_).reshape(array.shape)
        assert_same(decoded, array)


# ---------------------------------------------------------------------- gRPC


def triton_grpc_request(arrays: dict[str, np.ndarray[Any, Any]], datatype: str) -> triton_pb.ModelInferRequest:
    inputs = [
        grpcclient.InferInput(name, list(array.shape), datatype).set_data_from_numpy(array)
        for name, array in arrays.items()
    ]
    return _get_inference_request(
        model_name="m",
        inputs=inputs,
        model_version="2",
        request_id="r-9",
        outputs=[grpcclient.InferRequestedOutput("out")],
        sequence_id=0,
        sequence_start=False,
        sequence_end=False,
        priority=0,
        timeout=None,
        # tritonclient 2.41's gRPC client refuses float parameters; str, int and bool go through.
        parameters={"latency_slo_ms": 15, "min_accuracy": "0.9", "fast": True},
    )


@pytest.mark.parametrize("datatype", DATATYPES)
def test_grpc_request_built_by_tritonclient_decodes(datatype: str) -> None:
    arrays = {f"in{index}": sample(datatype, shape, seed=index) for index, shape in enumerate(SHAPES)}
    wire = triton_grpc_request(arrays, datatype).SerializeToString()

    request = grpc_codec.request_from_proto(pb.ModelInferRequest.FromString(wire))

    assert (request.model_name, request.model_version, request.id) == ("m", "2", "r-9")
    assert request.parameters == {"latency_slo_ms": 15, "min_accuracy": "0.9", "fast": True}
    assert [o.name for o in request.outputs] == ["out"]
    for tensor, (name, array) in zip(request.inputs, arrays.items(), strict=True):
        assert (tensor.name, tensor.datatype) == (name, datatype)
        assert_same(tensor.data, array)


@pytest.mark.parametrize("datatype", DATATYPES)
def test_grpc_response_parses_in_tritonclient(datatype: str) -> None:
    arrays = {f"out{index}": sample(datatype, shape, seed=index) for index, shape in enumerate(SHAPES)}
    response = InferResponse(
        model_name="m",
        model_version="1",
        id="r-9",
        outputs=[Tensor(name, datatype, array.shape, array) for name, array in arrays.items()],
        parameters={"variant": "int8", "queue_us": 40},
    )

    wire = grpc_codec.response_to_proto(response).SerializeToString()
    result = grpcclient.InferResult(triton_pb.ModelInferResponse.FromString(wire))

    message = result.get_response()
    assert (message.model_name, message.model_version, message.id) == ("m", "1", "r-9")
    assert message.parameters["variant"].string_param == "int8"
    assert message.parameters["queue_us"].int64_param == 40
    for name, array in arrays.items():
        assert_same(result.as_numpy(name), array)


def test_stream_response_parses_in_tritonclient() -> None:
    array = sample("FP32", (1, 10))
    inner = grpc_codec.response_to_proto(
        InferResponse(model_name="m", outputs=[Tensor("y", "FP32", array.shape, array)])
    )
    wire = pb.ModelStreamInferResponse(infer_response=inner).SerializeToString()

    parsed = triton_pb.ModelStreamInferResponse.FromString(wire)

    assert parsed.error_message == ""
    assert_same(grpcclient.InferResult(parsed.infer_response).as_numpy("y"), array)
