"""A front end that loses its Ray cluster answers not-ready (503) and recovers when the cluster comes back."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import tritonclient.http as httpclient

from sloserve.cluster.ray.head import LocalRayHead
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
