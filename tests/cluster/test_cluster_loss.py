"""A front end that loses its Ray cluster answers not-ready (503) and recovers when the cluster comes back; one
that loses this machine's raylet stays alive."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import onnxruntime as ort
import tritonclient.http as httpclient

from sloserve.cluster.ray.head import LOOPBACK_ENV, LocalRayHead, _cmdline, free_port
from tests.cluster.kit import ray_server, ready_status, replicas, repository_with_instances, wait_for
from tests.integration.serverkit import reference


def test_losing_the_cluster_is_not_ready_until_it_comes_back(
    ray_head: LocalRayHead,
    repository: Path,
    tmp_path: Path,
    digits_reference: ort.InferenceSession,
    digits_x: np.ndarray[Any, Any],
) -> None:
    server = ray_server(repository_with_instances(repository, tmp_path, 1), ray_head.address)
    try:
        x = digits_x[:4]
        assert ready_status(server.http_url) == 200
        [replica] = replicas(server)

        ray_head.stop()  # the whole cluster goes: head, raylet, the replica's actor
        wait_for(lambda: ready_status(server.http_url) == 503, 20, "not ready once the cluster is gone")
        assert not replica.healthy

        ray_head.start()  # a new cluster at the same address
        wait_for(lambda: ready_status(server.http_url) == 200, 90, "ready again once the cluster is back")
        assert replica.healthy and replica.restarts == 1
        client = httpclient.InferenceServerClient(server.http_url)
        inp = httpclient.InferInput("input", list(x.shape), "FP32")
        inp.set_data_from_numpy(x)
        np.testing.assert_array_equal(
            client.infer("digits", [inp]).as_numpy("label"), reference(digits_reference, x)["label"]
        )
        client.close()
    finally:
        server.stop()


def test_a_front_end_outlives_its_machines_raylet(repository: Path, tmp_path: Path) -> None:
    """Ray ends a driver that touches its object store after this machine's raylet died (the GCS still up, so
    the dead actor is noticed and a new one would be created with the model ``ray.put``): the front end must
    stop calling Ray instead, report not ready, keep answering, and shut down cleanly."""
    head = LocalRayHead(Path(tempfile.mkdtemp(prefix="sloray-")), num_cpus=2).start()
    server: subprocess.Popen[bytes] | None = None
    try:
        root = repository_with_instances(repository, tmp_path / "repository", 1)
        ports = [free_port() for _ in range(3)]
        env = {
            **os.environ,
            **LOOPBACK_ENV,
            "SLOSERVE_RAY_ADDRESS": head.address,
            "SLOSERVE_HOME": str(tmp_path / "home"),
            "SLOSERVE_AUTOSCALE_INTERVAL_S": "0",
        }
        command = [sys.executable, "-m", "sloserve.cli", "serve", "--repository", str(root)]
        command += ["--http-port", str(ports[0]), "--grpc-port", str(ports[1]), "--metrics-port", str(ports[2])]
        with open(tmp_path / "server.log", "wb") as log:
            server = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT)
        url = f"127.0.0.1:{ports[0]}"
        wait_for(lambda: ready_status(url) == 200, 90, "the front end is ready")

        raylets = [pid for pid in head.processes() if b"/raylet" in _cmdline(pid)]
        assert raylets, "no raylet found"
        for pid in raylets:
            os.kill(pid, signal.SIGKILL)  # this machine's node goes; the GCS stays
        wait_for(lambda: server.poll() is not None or ready_status(url) == 503, 20, "not ready once the raylet is gone")
        assert server.poll() is None, "the front end died: " + (tmp_path / "server.log").read_text()[-3000:]
        x = np.zeros((2, 64), np.float32)
        body = {
            "inputs": [{"name": "input", "shape": list(x.shape), "datatype": "FP32", "data": x.ravel().tolist()}],
            "parameters": {"latency_slo_ms": 100},  # without a deadline a request waits for the cluster to return
        }
        for _ in range(10):  # across several health ticks and restart attempts
            answer = httpx.post(f"http://{url}/v2/models/digits/infer", json=body, timeout=10.0)
            assert answer.status_code in (429, 500, 503, 504), answer.text
            time.sleep(0.5)
        assert server.poll() is None, "the front end died: " + (tmp_path / "server.log").read_text()[-3000:]

        server.send_signal(signal.SIGTERM)
        assert server.wait(60) == 0, (tmp_path / "server.log").read_text()[-3000:]
    finally:
        if server is not None and server.poll() is None:
            server.kill()
            server.wait(30)
        head.stop()
        shutil.rmtree(head.temp_dir, ignore_errors=True)
