"""digits served through a real Ray cluster: replicas are named actors, answers equal onnxruntime's,
a full cluster is reported, and `sloserve cluster status` shows it all."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import pytest
import ray
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient

from sloserve.cli import main
from sloserve.cluster.ray.head import LOOPBACK_ENV, LocalRayHead
from sloserve.errors import ResourceExhaustedError
from tests.cluster.kit import ray_server, replicas, repository_with_instances
from tests.integration.serverkit import ServerThread, reference


@pytest.fixture(scope="module")
def server(
    ray_head: LocalRayHead, repository: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServerThread]:
    root = repository_with_instances(repository, tmp_path_factory.mktemp("two-replicas"), 2)
    running = ray_server(root, ray_head.address)
    yield running
    running.stop()


def test_replicas_are_named_actors_on_the_cluster(server: ServerThread) -> None:
    found = replicas(server)
    assert [r.actor_name for r in found] == ["sloserve/digits/1/0", "sloserve/digits/1/1"]
    assert all(r.healthy for r in found)
    named = {(a["namespace"], a["name"]) for a in ray.util.list_named_actors(all_namespaces=True)}
    assert {("sloserve", "digits/1/0"), ("sloserve", "digits/1/1")} <= named
    pids = {r.actor_info["pid"] for r in found}
    assert len(pids) == 2 and os.getpid() not in pids  # each in its own Ray worker process


@pytest.mark.parametrize("rows", [1, 7, 64])
def test_answers_equal_onnxruntime_over_http_and_grpc(
    server: ServerThread, digits_reference: ort.InferenceSession, digits_x: np.ndarray[Any, Any], rows: int
) -> None:
    x = digits_x[rows : rows * 2]
    expected = reference(digits_reference, x)
    http = httpclient.InferenceServerClient(server.http_url)
    grpc = grpcclient.InferenceServerClient(server.grpc_url)
    for client, module in ((http, httpclient), (grpc, grpcclient)):
        inp = module.InferInput("input", list(x.shape), "FP32")
        inp.set_data_from_numpy(x)
        result = client.infer("digits", [inp])
        np.testing.assert_array_equal(result.as_numpy("label"), expected["label"])
        np.testing.assert_allclose(result.as_numpy("probabilities"), expected["probabilities"], rtol=1e-5, atol=1e-6)
    http.close()
    grpc.close()


def test_a_full_cluster_is_reported_and_serving_goes_on(
    server: ServerThread, digits_reference: ort.InferenceSession, digits_x: np.ndarray[Any, Any]
) -> None:
    assert server.server is not None and server.server.cluster is not None
    server.server.cluster.start_timeout_s = 3.0
    # Two replicas of one CPU each fill the two-CPU cluster: a third cannot be placed.
    with pytest.raises(ResourceExhaustedError, match=r"needs 1 CPU; the cluster has 0 of 2 CPU free"):
        server.call(server.server.lifecycle.scale("digits", "1", 3))
    assert len(replicas(server)) == 2
    named = {a["name"] for a in ray.util.list_named_actors(all_namespaces=True)}
    assert "digits/1/2" not in named  # the actor that waited for resources was withdrawn
    client = httpclient.InferenceServerClient(server.http_url)
    x = digits_x[:3]
    inp = httpclient.InferInput("input", list(x.shape), "FP32")
    inp.set_data_from_numpy(x)
    np.testing.assert_array_equal(
        client.infer("digits", [inp]).as_numpy("label"), reference(digits_reference, x)["label"]
    )
    client.close()


def test_cluster_status_json(server: ServerThread, ray_head: LocalRayHead) -> None:
    """The real command, in its own process: any machine that reaches the cluster can ask."""
    done = subprocess.run(
        [sys.executable, "-m", "sloserve.cli", "cluster", "status", "--ray-address", ray_head.address, "--json"],
        capture_output=True,
        text=True,
        timeout=90,
        env={**os.environ, **LOOPBACK_ENV, "COLUMNS": "200"},
        check=False,
    )
    assert done.returncode == 0, done.stderr
    status = json.loads(done.stdout)
    assert status["address"] == ray_head.address and status["namespace"] == "sloserve"
    [node] = status["nodes"]
    assert node["alive"] and node["resources"]["CPU"] == 2.0
    assert node["replicas"] == 2 and node["replica_cpus"] == 2.0
    mine = {r["name"]: r for r in status["replicas"]}
    assert set(mine) == {"digits/1/0", "digits/1/1"}
    frontend = server.server.cluster.frontend  # type: ignore[union-attr]
    for name, replica in mine.items():
        assert replica["state"] == "alive" and replica["node_id"] == node["node_id"]
        assert replica["frontends"] == [frontend] and replica["num_cpus"] == 1.0
        assert replica["pid"] == next(r.actor_info["pid"] for r in replicas(server) if r.actor_name.endswith(name))
    assert status["per_variant"] == [{"model": "digits", "version": "1", "nodes": {node["node_id"]: 2}}]
    assert status["total"]["CPU"] == 2.0 and status["available"]["CPU"] == 0.0


def test_cluster_status_table(server: ServerThread, ray_head: LocalRayHead, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["cluster", "status", "--ray-address", ray_head.address]) == 0
    out = capsys.readouterr().out
    assert "sloserve replicas per variant and node" in out
    assert "digits/1/0" in out and "digits/1/1" in out
    assert "CPU 2 of 2 in use" in out
