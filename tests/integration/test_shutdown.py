"""Graceful shutdown: stop accepting, answer every request already in flight, stop the workers."""

from __future__ import annotations

import concurrent.futures
import http.client
import re
import time
from pathlib import Path

import numpy as np
import orjson
import pytest

from sloserve.registry.repository import ModelRepository
from sloserve.runtime.demo import build_wide_mlp, wide_mlp_config
from tests.integration.serverkit import ServerThread


def metric(server: ServerThread, name: str) -> float:
    assert server.server is not None
    text = server.server.metrics.exposition().decode()
    match = re.search(name + r'\{model="slow"\} ([\d.]+)', text)
    return float(match.group(1)) if match else 0.0


def pending(server: ServerThread) -> float:
    return metric(server, "sloserve_pending_requests")


def received(server: ServerThread) -> float:
    """Requests that reached the data plane: still pending or answered."""
    return pending(server) + metric(server, "sloserve_request_success_total")


def test_in_flight_requests_finish_and_new_ones_are_refused(tmp_path: Path) -> None:
    onnx_path = tmp_path / "slow.onnx"
    build_wide_mlp(onnx_path, in_features=64, width=2048, layers=6, out_features=4)
    # One row per batch, so 24 concurrent requests form a queue that takes a while to drain. Six layers: with
    # three, 6 of them were still queued once all had arrived in one full CI run (15-19 on an idle machine).
    ModelRepository(tmp_path / "repo").write_model(
        wide_mlp_config("slow", in_features=64, out_features=4, max_batch_size=1), onnx_path
    )
    server = ServerThread(tmp_path / "repo").start()
    host, port = server.http_url.split(":")
    body = orjson.dumps(
        {"inputs": [{"name": "input", "shape": [1, 64], "datatype": "FP32", "data": np.ones(64).tolist()}]}
    )

    def infer(_: int) -> int:
        connection = http.client.HTTPConnection(host, int(port), timeout=30)
        connection.request("POST", "/v2/models/slow/infer", body=body)
        status = connection.getresponse().status
        connection.close()
        return status

    with concurrent.futures.ThreadPoolExecutor(24) as pool:
        futures = [pool.submit(infer, i) for i in range(24)]
        # Stop once every request has reached the server: a connection still in the listen backlog when the
        # listener closes is reset by the kernel, as with any server (nginx, Go's Shutdown).
        deadline = time.monotonic() + 20
        while received(server) < 24 and time.monotonic() < deadline:
            time.sleep(0.001)
        assert pending(server) >= 8, "the requests never queued up"
        server.stop()
        statuses = [f.result() for f in futures]
    assert statuses == [200] * 24
    with pytest.raises(ConnectionRefusedError):
        http.client.HTTPConnection(host, int(port), timeout=5).request("GET", "/v2/health/live")
