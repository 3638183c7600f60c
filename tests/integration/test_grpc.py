"""The gRPC service with tritonclient.grpc, a client nobody here wrote."""

from __future__ import annotations

import queue
from collections.abc import Iterator
from typing import Any

import grpc
import numpy as np
import onnxruntime as ort
import pytest
import tritonclient.grpc as grpcclient
from tritonclient.grpc import service_pb2, service_pb2_grpc
from tritonclient.utils import InferenceServerException

from tests.integration.serverkit import ECHO_TYPES, ServerThread, echo_inputs, reference


@pytest.fixture
def client(server: ServerThread) -> Iterator[grpcclient.InferenceServerClient]:
    c = grpcclient.InferenceServerClient(server.grpc_url)
    yield c
    c.close()


def digits_input(x: np.ndarray[Any, Any]) -> grpcclient.InferInput:
    inp = grpcclient.InferInput("input", list(x.shape), "FP32")
    inp.set_data_from_numpy(x)
    return inp


def test_health_and_metadata(client: grpcclient.InferenceServerClient) -> None:
    assert client.is_server_live()
    assert client.is_server_ready()
    assert client.is_model_ready("digits")
    meta = client.get_server_metadata(as_json=True)
    assert meta["name"] == "sloserve"
    assert "binary_tensor_data" in meta["extensions"]
    model = client.get_model_metadata("digits", as_json=True)
    assert model["platform"] == "onnx_onnxv1"
    assert model["versions"] == ["1"]
    assert model["inputs"] == [{"name": "input", "datatype": "FP32", "shape": ["-1", "64"]}]


def test_infer_matches_onnxruntime_with_id_and_output_subset(
    client: grpcclient.InferenceServerClient, digits_reference: ort.InferenceSession, digits_x: Any
) -> None:
    x = digits_x[10:17]
    result = client.infer("digits", [digits_input(x)], request_id="g-1")
    want = reference(digits_reference, x)
    np.testing.assert_allclose(result.as_numpy("probabilities"), want["probabilities"], rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(result.as_numpy("label"), want["label"])
    assert result.get_response().id == "g-1"
    only = client.infer("digits", [digits_input(x)], outputs=[grpcclient.InferRequestedOutput("label")])
    assert [o.name for o in only.get_response().outputs] == ["label"]


def test_every_datatype_round_trips(client: grpcclient.InferenceServerClient) -> None:
    arrays = echo_inputs(rows=5, seed=11)
    inputs = []
    for name, array in arrays.items():
        inp = grpcclient.InferInput(name, list(array.shape), name.removeprefix("in_").upper())
        inp.set_data_from_numpy(array)
        inputs.append(inp)
    result = client.infer("echo", inputs)
    for datatype in ECHO_TYPES:
        np.testing.assert_array_equal(result.as_numpy(f"out_{datatype.lower()}"), arrays[f"in_{datatype.lower()}"])


def test_typed_contents_are_accepted(
    server: ServerThread, digits_reference: ort.InferenceSession, digits_x: Any
) -> None:
    x = digits_x[:2]
    request = service_pb2.ModelInferRequest(model_name="digits")
    tensor = request.inputs.add(name="input", datatype="FP32", shape=[2, 64])
    tensor.contents.fp32_contents.extend(x.ravel().tolist())
    with grpc.insecure_channel(server.grpc_url) as channel:
        reply = service_pb2_grpc.GRPCInferenceServiceStub(channel).ModelInfer(request)
    names = [o.name for o in reply.outputs]
    probs = np.frombuffer(reply.raw_output_contents[names.index("probabilities")], dtype=np.float32).reshape(2, 10)
    np.testing.assert_allclose(probs, reference(digits_reference, x)["probabilities"], rtol=1e-5, atol=1e-6)


def test_stream_infer(client: grpcclient.InferenceServerClient, digits_reference: Any, digits_x: Any) -> None:
    answers: queue.Queue[tuple[Any, Any]] = queue.Queue()
    client.start_stream(callback=lambda result, error: answers.put((result, error)))
    try:
        for i in range(6):
            client.async_stream_infer("digits", [digits_input(digits_x[i : i + 1])], request_id=str(i))
        client.async_stream_infer("nope", [digits_input(digits_x[:1])], request_id="bad")
        got = [answers.get(timeout=20) for _ in range(7)]
    finally:
        client.stop_stream()
    errors = [e for _, e in got if e is not None]
    assert len(errors) == 1 and "nope" in str(errors[0])
    for result, error in got:
        if error is None:
            i = int(result.get_response().id)
            want = reference(digits_reference, digits_x[i : i + 1])["label"]
            np.testing.assert_array_equal(result.as_numpy("label"), want)


def test_statistics_and_repository(client: grpcclient.InferenceServerClient, digits_x: Any) -> None:
    client.infer("digits", [digits_input(digits_x[:4])])
    stats = client.get_inference_statistics("digits", as_json=True)["model_stats"][0]
    assert stats["name"] == "digits" and int(stats["inference_count"]) >= 4
    index = {m["name"]: m for m in client.get_model_repository_index(as_json=True)["models"]}
    assert index["digits"]["state"] == "READY"
    client.unload_model("echo")
    try:
        assert not client.is_model_ready("echo")
    finally:
        client.load_model("echo")
    assert client.is_model_ready("echo")


def status_of(call: Any) -> str:
    with pytest.raises(InferenceServerException) as info:
        call()
    return str(info.value.status())


def test_bad_input_maps_to_status_codes(
    server: ServerThread, client: grpcclient.InferenceServerClient, digits_x: Any
) -> None:
    x = digits_x[:1]
    assert status_of(lambda: client.infer("nope", [digits_input(x)])) == "StatusCode.NOT_FOUND"
    assert status_of(lambda: client.infer("digits", [digits_input(x)], model_version="3")) == "StatusCode.NOT_FOUND"
    wrong_type = grpcclient.InferInput("input", [1, 64], "FP64")
    wrong_type.set_data_from_numpy(x.astype(np.float64))
    assert status_of(lambda: client.infer("digits", [wrong_type])) == "StatusCode.INVALID_ARGUMENT"
    wrong_shape = grpcclient.InferInput("input", [1, 32], "FP32")
    wrong_shape.set_data_from_numpy(x[:, :32].copy())
    assert status_of(lambda: client.infer("digits", [wrong_shape])) == "StatusCode.INVALID_ARGUMENT"
    wrong_name = grpcclient.InferInput("pixels", [1, 64], "FP32")
    wrong_name.set_data_from_numpy(x)
    assert status_of(lambda: client.infer("digits", [wrong_name])) == "StatusCode.INVALID_ARGUMENT"
    assert status_of(lambda: client.get_model_metadata("nope")) == "StatusCode.NOT_FOUND"
    # a raw content whose size disagrees with the shape
    request = service_pb2.ModelInferRequest(model_name="digits")
    request.inputs.add(name="input", datatype="FP32", shape=[1, 64])
    request.raw_input_contents.append(b"\0" * 100)
    with grpc.insecure_channel(server.grpc_url) as channel, pytest.raises(grpc.RpcError) as info:
        service_pb2_grpc.GRPCInferenceServiceStub(channel).ModelInfer(request)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    # and the server still answers correctly
    assert client.infer("digits", [digits_input(x)]).as_numpy("label").shape == (1,)


def test_oversized_message_is_refused(client: grpcclient.InferenceServerClient) -> None:
    big = np.zeros((8, 3), dtype=np.object_)
    big[:] = b"x" * 100_000  # 2.4 MB, over the 1 MiB limit of the test server
    inp = grpcclient.InferInput("in_bytes", [8, 3], "BYTES")
    inp.set_data_from_numpy(big)
    assert status_of(lambda: client.infer("echo", [inp])) == "StatusCode.RESOURCE_EXHAUSTED"
    assert client.is_server_ready()
