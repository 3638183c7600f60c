"""Two front ends on one cluster: the second (a real `sloserve serve` process) finds the first one's replica by
name and shares it; the actor outlives the first front end to leave and goes with the last."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import pytest
import tritonclient.http as httpclient

from sloserve.cli import main
from sloserve.cluster.ray.head import LOOPBACK_ENV, LocalRayHead, free_port
from tests.cluster.kit import ray_server, ready_status, replicas, repository_with_instances, wait_for
from tests.integration.serverkit import reference


def status_of(address: str, capsys: pytest.CaptureFixture[str]) -> dict[str, Any]:
    capsys.readouterr()
    assert main(["cluster", "status", "--ray-address", address, "--json"]) == 0
    status: dict[str, Any] = json.loads(capsys.readouterr().out)
    return status


def labels(http_url: str, x: np.ndarray[Any, Any]) -> np.ndarray[Any, Any]:
    client = httpclient.InferenceServerClient(http_url)
    inp = httpclient.InferInput("input", list(x.shape), "FP32")
    inp.set_data_from_numpy(x)
    try:
        return client.infer("digits", [inp]).as_numpy("label")  # type: ignore[no-any-return]
    finally:
        client.close()


def test_two_front_ends_share_a_replica_by_name(
    ray_head: LocalRayHead,
    repository: Path,
    tmp_path: Path,
    digits_reference: ort.InferenceSession,
    digits_x: np.ndarray[Any, Any],
    capsys: pytest.CaptureFixture[str],
) -> None:
    root = repository_with_instances(repository, tmp_path / "repository", 1)
    expected = reference(digits_reference, digits_x[:5])["label"]
    first = ray_server(root, ray_head.address)
    second: subprocess.Popen[bytes] | None = None
    try:
        [replica] = replicas(first)
        ports = [free_port() for _ in range(3)]
        env = {
            **os.environ,
            **LOOPBACK_ENV,
            "SLOSERVE_RAY_ADDRESS": ray_head.address,
            "SLOSERVE_HOME": str(tmp_path / "second-home"),
            "SLOSERVE_AUTOSCALE_INTERVAL_S": "0",
        }
        command = [sys.executable, "-m", "sloserve.cli", "serve", "--repository", str(root)]
        command += ["--http-port", str(ports[0]), "--grpc-port", str(ports[1]), "--metrics-port", str(ports[2])]
        with open(tmp_path / "second.log", "wb") as log:
            second = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT)
        second_url = f"127.0.0.1:{ports[0]}"
        wait_for(lambda: ready_status(second_url) == 200, 90, "the second front end is ready")

        [shared] = [r for r in status_of(ray_head.address, capsys)["replicas"] if r["name"] == "digits/1/0"]
        assert len(shared["frontends"]) == 2 and first.server.cluster.frontend in shared["frontends"]  # type: ignore[union-attr]
        assert shared["pid"] == replica.actor_info["pid"]  # one actor, not two
        np.testing.assert_array_equal(labels(first.http_url, digits_x[:5]), expected)
        np.testing.assert_array_equal(labels(second_url, digits_x[:5]), expected)

        second.send_signal(signal.SIGTERM)
        assert second.wait(60) == 0
        [kept] = [r for r in status_of(ray_head.address, capsys)["replicas"] if r["name"] == "digits/1/0"]
        assert kept["frontends"] == [first.server.cluster.frontend]  # type: ignore[union-attr]
        assert kept["pid"] == replica.actor_info["pid"] and replica.healthy
        np.testing.assert_array_equal(labels(first.http_url, digits_x[:5]), expected)
    finally:
        if second is not None and second.poll() is None:
            second.kill()
            second.wait(30)
        first.stop()

    def gone() -> bool:
        return all(r["name"] != "digits/1/0" for r in status_of(ray_head.address, capsys)["replicas"])

    wait_for(gone, 15, "the last front end out took the actor with it")
