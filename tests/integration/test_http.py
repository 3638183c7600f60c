"""The HTTP/REST endpoints with tritonclient.http, a client nobody here wrote."""

from __future__ import annotations

import concurrent.futures
import gc
import socket
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import onnxruntime as ort
import orjson
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from sloserve.registry.repository import ModelRepository
from sloserve.runtime.demo import build_digits
from tests.integration.serverkit import ECHO_TYPES, ServerThread, echo_inputs, reference


@pytest.fixture
def client(server: ServerThread) -> httpclient.InferenceServerClient:
    return httpclient.InferenceServerClient(server.http_url, concurrency=8)


def digits_input(x: np.ndarray[Any, Any], binary: bool) -> httpclient.InferInput:
    inp = httpclient.InferInput("input", list(x.shape), "FP32")
    inp.set_data_from_numpy(x, binary_data=binary)
    return inp


def test_health_and_server_metadata(client: httpclient.InferenceServerClient) -> None:
    assert client.is_server_live()
    assert client.is_server_ready()
    meta = client.get_server_metadata()
    assert meta["name"] == "sloserve"
    assert set(meta["extensions"]) >= {"binary_tensor_data", "model_repository", "statistics"}


def test_model_metadata_and_ready(client: httpclient.InferenceServerClient) -> None:
    assert client.is_model_ready("digits")
    assert client.is_model_ready("digits", "1")
    meta = client.get_model_metadata("digits")
    assert meta["platform"] == "onnx_onnxv1"
    assert meta["versions"] == ["1"]
    assert meta["inputs"] == [{"name": "input", "datatype": "FP32", "shape": [-1, 64]}]
    outputs = {o["name"]: o for o in meta["outputs"]}
    assert outputs["probabilities"] == {"name": "probabilities", "datatype": "FP32", "shape": [-1, 10]}
    assert client.get_model_metadata("digits", "1")["name"] == "digits"


@pytest.mark.parametrize("binary", [False, True])
def test_infer_matches_onnxruntime(
    client: httpclient.InferenceServerClient,
    digits_reference: ort.InferenceSession,
    digits_x: np.ndarray[Any, Any],
    binary: bool,
) -> None:
    x = digits_x[:5]
    outputs = [httpclient.InferRequestedOutput(n, binary_data=binary) for n in ("probabilities", "label")]
    result = client.infer("digits", [digits_input(x, binary)], outputs=outputs, request_id="req-7")
    want = reference(digits_reference, x)
    np.testing.assert_allclose(result.as_numpy("probabilities"), want["probabilities"], rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(result.as_numpy("label"), want["label"])
    assert result.get_response()["id"] == "req-7"


def test_requested_output_subset(client: httpclient.InferenceServerClient, digits_x: np.ndarray[Any, Any]) -> None:
    result = client.infer(
        "digits", [digits_input(digits_x[:2], True)], outputs=[httpclient.InferRequestedOutput("label")]
    )
    names = [o["name"] for o in result.get_response()["outputs"]]
    assert names == ["label"]
    assert result.as_numpy("probabilities") is None


def test_pinned_version_and_unknown_version(
    client: httpclient.InferenceServerClient, digits_x: np.ndarray[Any, Any]
) -> None:
    assert client.infer("digits", [digits_input(digits_x[:1], True)], model_version="1").as_numpy("label").shape == (1,)
    with pytest.raises(InferenceServerException, match="no version '9'") as info:
        client.infer("digits", [digits_input(digits_x[:1], True)], model_version="9")
    assert info.value.status() == "404"


def test_every_datatype_round_trips_through_the_worker(client: httpclient.InferenceServerClient) -> None:
    arrays = echo_inputs(rows=4, seed=3)
    for binary in (False, True):
        inputs = []
        for name, array in arrays.items():
            datatype = name.removeprefix("in_").upper()
            inp = httpclient.InferInput(name, list(array.shape), datatype)
            inp.set_data_from_numpy(array, binary_data=binary)
            inputs.append(inp)
        result = client.infer("echo", inputs)
        for datatype in ECHO_TYPES:
            got = result.as_numpy(f"out_{datatype.lower()}")
            want = arrays[f"in_{datatype.lower()}"]
            assert got is not None and got.shape == want.shape, datatype
            np.testing.assert_array_equal(got, want)


def test_many_concurrent_clients_each_get_their_own_answer(
    server: ServerThread, digits_reference: ort.InferenceSession, digits_x: np.ndarray[Any, Any]
) -> None:
    def load(w: int) -> list[tuple[int, np.ndarray[Any, Any]]]:
        client = httpclient.InferenceServerClient(server.http_url)
        out = []
        for i in range(w, 200, 32):
            x = digits_x[i : i + 1 + i % 3]
            result = client.infer("digits", [digits_input(x, i % 2 == 0)])
            out.append((i, result.as_numpy("probabilities")))
            del result
        client.close()
        # tritonclient's HTTP client sits in reference cycles (gevent): collect it in the thread that owns its
        # hub; collected later from another thread, its __del__ raises, failing whichever test runs then
        del client
        gc.collect()
        return out

    with concurrent.futures.ThreadPoolExecutor(32) as pool:
        results = [r for chunk in pool.map(load, range(32)) for r in chunk]
    assert sorted(i for i, _ in results) == list(range(200))
    for i, got in results:
        want = reference(digits_reference, digits_x[i : i + 1 + i % 3])["probabilities"]
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


def test_statistics(client: httpclient.InferenceServerClient, digits_x: np.ndarray[Any, Any]) -> None:
    before = client.get_inference_statistics("digits")["model_stats"][0]
    client.infer("digits", [digits_input(digits_x[:3], True)])
    after = client.get_inference_statistics("digits")["model_stats"][0]
    assert after["name"] == "digits" and after["version"] == "1"
    assert after["inference_count"] == before["inference_count"] + 3
    assert after["inference_stats"]["success"]["count"] == before["inference_stats"]["success"]["count"] + 1
    assert after["execution_count"] >= before["execution_count"] + 1
    assert any(b["batch_size"] >= 3 for b in after["batch_stats"])


def test_repository_index_load_and_unload(
    client: httpclient.InferenceServerClient, digits_x: np.ndarray[Any, Any]
) -> None:
    index = {m["name"]: m for m in client.get_model_repository_index()}
    assert index["digits"]["state"] == "READY" and index["echo"]["state"] == "READY"
    client.unload_model("echo")
    try:
        assert not client.is_model_ready("echo")
        index = {m["name"]: m for m in client.get_model_repository_index()}
        assert index["echo"]["state"] == "UNAVAILABLE"
        unloaded = httpclient.InferInput("in_fp32", [1, 3], "FP32")
        unloaded.set_data_from_numpy(np.zeros((1, 3), dtype=np.float32))
        with pytest.raises(InferenceServerException) as info:
            client.infer("echo", [unloaded])
        assert info.value.status() == "503"
        assert client.infer("digits", [digits_input(digits_x[:1], True)]).as_numpy("label") is not None
    finally:
        client.load_model("echo")
    assert client.is_model_ready("echo")


def test_metrics_are_scraped(server: ServerThread, client: httpclient.InferenceServerClient, digits_x: Any) -> None:
    client.infer("digits", [digits_input(digits_x[:2], True)])
    text = httpx.get(server.metrics_url).text
    for name in (
        'sloserve_request_success_total{model="digits"}',
        'sloserve_inference_count_total{model="digits"}',
        'sloserve_execution_count_total{model="digits"}',
        "sloserve_request_duration_seconds_bucket",
        "sloserve_queue_duration_seconds_bucket",
        "sloserve_compute_duration_seconds_bucket",
        "sloserve_batch_size_bucket",
        'sloserve_pending_requests{model="digits"}',
    ):
        assert name in text, name


# ---- bad input: a clear 4xx, and the server keeps answering correctly ----------------------------------


def post(server: ServerThread, path: str, body: bytes, headers: dict[str, str] | None = None) -> httpx.Response:
    return httpx.post(f"http://{server.http_url}{path}", content=body, headers=headers or {}, timeout=10)


GOOD = {"inputs": [{"name": "input", "shape": [1, 64], "datatype": "FP32", "data": [1.0] * 64}]}


def with_input(**change: Any) -> bytes:
    tensor = {**GOOD["inputs"][0], **change}
    return orjson.dumps({"inputs": [tensor]})


BAD_BODIES = {
    "malformed json": (b'{"inputs": [', 400, "JSON"),
    "wrong datatype": (with_input(datatype="INT32", data=[1] * 64), 400, "datatype"),
    "unknown datatype": (with_input(datatype="FLOAT"), 400, "datatype"),
    "wrong shape": (with_input(shape=[1, 63], data=[1.0] * 63), 400, "shape"),
    "count mismatch": (with_input(shape=[2, 64]), 400, "64"),
    "missing input": (orjson.dumps({"inputs": []}), 400, "input"),
    "unknown input": (with_input(name="pixels"), 400, "pixels"),
    "strings for floats": (with_input(data=["a"] * 64), 400, "input"),
    "unknown output": (orjson.dumps({**GOOD, "outputs": [{"name": "nope"}]}), 400, "nope"),
    "too many rows": (with_input(shape=[4097, 64], data=[1] * 64 * 4097), 400, "max_batch_size"),
}


@pytest.mark.parametrize("case", sorted(BAD_BODIES))
def test_bad_request_gets_a_clear_error_and_the_server_keeps_serving(
    server: ServerThread, client: httpclient.InferenceServerClient, digits_x: Any, case: str
) -> None:
    body, status, words = BAD_BODIES[case]
    response = post(server, "/v2/models/digits/infer", body)
    assert response.status_code == status, response.text
    message = response.json()["error"]
    assert words.lower() in message.lower(), message
    assert client.infer("digits", [digits_input(digits_x[:1], True)]).as_numpy("label").shape == (1,)


def test_an_accuracy_floor_on_a_model_never_measured_is_refused_unless_best_effort(server: ServerThread) -> None:
    """`digits` here was added without variants or a validation set: no accuracy to hold a floor against."""
    floor = post(server, "/v2/models/digits/infer", orjson.dumps({**GOOD, "parameters": {"min_accuracy": 0.9}}))
    assert floor.status_code == 400 and "accuracy was never measured" in floor.json()["error"]
    anyway = {**GOOD, "parameters": {"min_accuracy": 0.9, "best_effort": True}}
    served = post(server, "/v2/models/digits/infer", orjson.dumps(anyway))
    assert served.status_code == 200 and served.json()["parameters"]["slo_met"] is False  # not shown to meet it
    timed = post(server, "/v2/models/digits/infer", orjson.dumps({**GOOD, "parameters": {"latency_slo_ms": 10_000}}))
    assert timed.status_code == 200 and timed.json()["parameters"]["slo_met"] is True


def test_unknown_model_and_endpoint_are_404(server: ServerThread) -> None:
    assert post(server, "/v2/models/nope/infer", orjson.dumps(GOOD)).status_code == 404
    assert httpx.get(f"http://{server.http_url}/v2/models/nope").status_code == 404
    assert httpx.get(f"http://{server.http_url}/v2/models/nope/ready").status_code == 404
    assert httpx.get(f"http://{server.http_url}/v3").status_code == 404
    assert httpx.get(f"http://{server.http_url}/v2/models/digits/infer").status_code == 405


def test_oversized_body_is_413(server: ServerThread) -> None:
    big = b"{" + b" " * (2 * 1024 * 1024) + b"}"
    response = post(server, "/v2/models/digits/infer", big)
    assert response.status_code == 413
    assert "limit" in response.json()["error"]


def test_truncated_binary_body_and_lying_header_length(server: ServerThread, client: Any, digits_x: Any) -> None:
    header = orjson.dumps(
        {"inputs": [{"name": "input", "shape": [1, 64], "datatype": "FP32", "parameters": {"binary_data_size": 256}}]}
    )
    data = np.ones((1, 64), dtype=np.float32).tobytes()
    ok = post(server, "/v2/models/digits/infer", header + data, {"Inference-Header-Content-Length": str(len(header))})
    assert ok.status_code == 200, ok.text
    truncated = post(
        server, "/v2/models/digits/infer", header + data[:100], {"Inference-Header-Content-Length": str(len(header))}
    )
    assert truncated.status_code == 400
    lying = post(
        server, "/v2/models/digits/infer", header + data, {"Inference-Header-Content-Length": str(len(header) + 10_000)}
    )
    assert lying.status_code == 400
    assert "header" in lying.json()["error"].lower()
    not_a_number = post(server, "/v2/models/digits/infer", header + data, {"Inference-Header-Content-Length": "x"})
    assert not_a_number.status_code == 400
    assert client.infer("digits", [digits_input(digits_x[:1], True)]).as_numpy("label").shape == (1,)


def test_a_query_whose_client_goes_away_while_it_waits_is_not_computed(
    tmp_path: Path, digits_x: np.ndarray[Any, Any]
) -> None:
    repository = tmp_path / "repository"
    build_digits(ModelRepository(repository))
    config = orjson.loads((repository / "digits" / "config.json").read_bytes())
    config["dynamic_batching"]["max_queue_delay_us"] = 400_000  # queries wait 0.4 s for their batch
    (repository / "digits" / "config.json").write_bytes(orjson.dumps(config))
    running = ServerThread(repository).start()
    try:
        host, port = running.http_url.split(":")
        body = orjson.dumps(
            {"inputs": [{"name": "input", "shape": [1, 64], "datatype": "FP32", "data": digits_x[0].tolist()}]}
        )
        with socket.create_connection((host, int(port))) as gone:  # sends its query, gives up before the answer
            gone.sendall(
                b"POST /v2/models/digits/infer HTTP/1.1\r\nHost: x\r\ncontent-type: application/json\r\n"
                b"content-length: %d\r\n\r\n%s" % (len(body), body)
            )
            time.sleep(0.1)
        grpc_client = grpcclient.InferenceServerClient(running.grpc_url)
        try:  # over gRPC, the client's own timeout cancels the call
            grpc_input = grpcclient.InferInput("input", [1, 64], "FP32")
            grpc_input.set_data_from_numpy(digits_x[:1])
            with pytest.raises(InferenceServerException, match="Deadline"):
                grpc_client.infer("digits", [grpc_input], client_timeout=0.1)
        finally:
            grpc_client.close()
        time.sleep(0.6)  # past their batches' windows
        answer = httpx.post(f"http://{running.http_url}/v2/models/digits/infer", content=body, timeout=10)
        assert answer.status_code == 200
        stats = httpx.get(f"http://{running.http_url}/v2/models/digits/stats").json()["model_stats"][0]
        assert stats["execution_count"] == 1 and stats["inference_count"] == 1  # only the query still wanted
        metrics = httpx.get(running.metrics_url).text
        assert 'sloserve_request_failure_total{model="digits",reason="cancelled"} 2.0' in metrics
    finally:
        running.stop()
