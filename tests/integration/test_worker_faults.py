"""A worker killed with SIGKILL under load: nothing lost, nothing wrong, the worker comes back."""

from __future__ import annotations

import gc
import json
import os
import shutil
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient

from tests.integration.serverkit import ServerThread, reference


def _repository_with_instances(source: Path, target: Path, instances: int) -> Path:
    shutil.copytree(source / "digits", target / "digits")
    config_path = target / "digits" / "config.json"
    config = json.loads(config_path.read_text())
    config["instance_count"] = instances
    config["replica_kind"] = "process"  # worker processes, to kill (the default runs a model this small inline)
    config_path.write_text(json.dumps(config))
    return target


@pytest.fixture(params=[1, 2], ids=["one-instance", "two-instances"])
def faulty_server(request: pytest.FixtureRequest, repository: Path, tmp_path: Path) -> Iterator[ServerThread]:
    root = _repository_with_instances(repository, tmp_path, request.param)
    running = ServerThread(root).start()
    yield running
    running.stop()


def replicas(server: ServerThread) -> tuple[Any, ...]:
    assert server.server is not None
    loaded = server.server.lifecycle.loaded["digits"]  # type: ignore[index]
    return loaded.running[loaded.default].replicas


def test_sigkill_under_load_loses_nothing(
    faulty_server: ServerThread, digits_reference: ort.InferenceSession, digits_x: np.ndarray[Any, Any]
) -> None:
    victim = replicas(faulty_server)[0]
    old_pid = victim.pid
    stop = threading.Event()
    failures: list[str] = []
    answered = [0]

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
            try:
                got = client.infer("digits", [inp]).as_numpy("probabilities")
                np.testing.assert_allclose(got, reference(digits_reference, x)["probabilities"], rtol=1e-5, atol=1e-6)
                answered[0] += 1
            except Exception as error:
                failures.append(f"{type(error).__name__}: {error}")
            i += 8
        client.close()
        # tritonclient's HTTP client sits in reference cycles (gevent): collect it here, in the thread that owns
        # its hub; collected later from the main thread, its __del__ raises InvalidThreadUseError, which pytest
        # reports against whichever test happens to be running then
        del client
        gc.collect()

    assert old_pid is not None, "the replica runs no worker process"
    threads = [threading.Thread(target=load, args=(w,)) for w in range(8)]
    for t in threads:
        t.start()
    try:
        time.sleep(0.5)
        before_kill = answered[0]
        os.kill(old_pid, signal.SIGKILL)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and not (victim.healthy and victim.pid != old_pid):
            time.sleep(0.05)
        time.sleep(0.5)  # keep the load on the restarted worker for a moment
    finally:  # a failure above must not leave the load running (the test run would never end)
        stop.set()
        for t in threads:
            t.join(30)
    assert failures == []
    assert before_kill > 0 and answered[0] > before_kill
    assert victim.healthy and victim.pid != old_pid and victim.restarts == 1
