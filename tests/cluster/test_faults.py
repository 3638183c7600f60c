"""A replica actor killed with ray.kill under load: nothing lost, nothing wrong, the replica comes back."""

from __future__ import annotations

import gc
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import pytest
import ray
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient

from sloserve.cluster.ray.head import LocalRayHead
from tests.cluster.kit import ray_server, replicas, repository_with_instances, wait_for
from tests.integration.serverkit import ServerThread, reference


@pytest.fixture(params=[1, 2], ids=["one-replica", "two-replicas"])
def faulty_server(
    request: pytest.FixtureRequest, ray_head: LocalRayHead, repository: Path, tmp_path: Path
) -> Iterator[ServerThread]:
    running = ray_server(repository_with_instances(repository, tmp_path, request.param), ray_head.address)
    yield running
    running.stop()


def test_ray_kill_under_load_loses_nothing(
    faulty_server: ServerThread, digits_reference: ort.InferenceSession, digits_x: np.ndarray[Any, Any]
) -> None:
    victim = replicas(faulty_server)[0]
    old_pid = victim.actor_info["pid"]
    stop = threading.Event()
    failures: list[str] = []
    sent = [0] * 8
    answered = [0] * 8

    def load(worker: int) -> None:
        http = worker % 2 == 0
        client: Any = (
            httpclient.InferenceServerClient(faulty_server.http_url)
            if http
            else grpcclient.InferenceServerClient(faulty_server.grpc_url)
        )
        module: Any = httpclient if http else grpcclient
        i = worker
        while not stop.is_set():
            x = digits_x[i % 400 : i % 400 + 1 + i % 4]
            inp = module.InferInput("input", list(x.shape), "FP32")
            inp.set_data_from_numpy(x)
            sent[worker] += 1
            try:
                got = client.infer("digits", [inp]).as_numpy("probabilities")
                np.testing.assert_allclose(got, reference(digits_reference, x)["probabilities"], rtol=1e-5, atol=1e-6)
                answered[worker] += 1
            except Exception as error:
                failures.append(f"{type(error).__name__}: {error}")
            i += 8
        client.close()
        # tritonclient's HTTP client sits in reference cycles (gevent): collect it here, in the thread that owns
        # its hub; collected later from the main thread, its __del__ raises InvalidThreadUseError, which pytest
        # reports against whichever test happens to be running then
        del client
        gc.collect()

    threads = [threading.Thread(target=load, args=(w,)) for w in range(8)]
    for t in threads:
        t.start()
    time.sleep(0.5)
    before_kill = sum(answered)
    ray.kill(ray.get_actor("digits/1/0", namespace="sloserve"), no_restart=True)
    wait_for(lambda: victim.healthy and victim.actor_info.get("pid") != old_pid, 30, "the replica came back")
    time.sleep(0.5)  # keep the load on the new actor for a moment
    stop.set()
    for t in threads:
        t.join(30)
    assert failures == []
    assert sum(answered) == sum(sent)  # every request answered, once
    assert before_kill > 0 and sum(answered) > before_kill
    assert victim.healthy and victim.restarts == 1
    assert victim.actor_info["pid"] != old_pid and victim.actor_name == "sloserve/digits/1/0"
