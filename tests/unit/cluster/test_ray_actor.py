"""ReplicaActor, the code that runs inside each Ray actor, called directly (no Ray)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

from sloserve.cluster.ray.actor import ActorInit, ReplicaActor


def affine_model() -> bytes:
    rng = np.random.default_rng(0)
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["X", "W"], ["XW"]), helper.make_node("Add", ["XW", "b"], ["Y"])],
        "affine",
        [helper.make_tensor_value_info("X", TensorProto.FLOAT, ["N", 4])],
        [helper.make_tensor_value_info("Y", TensorProto.FLOAT, ["N", 2])],
        [
            numpy_helper.from_array(rng.standard_normal((4, 2)).astype(np.float32), "W"),
            numpy_helper.from_array(rng.standard_normal(2).astype(np.float32), "b"),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    data: bytes = model.SerializeToString()
    return data


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def actor(model: bytes, clock: Clock, exits: list[str], ttl_s: float = 10.0) -> ReplicaActor:
    init = ActorInit("m", "1", 0, "digest-1", 1, "fe-a", lease_ttl_s=ttl_s)
    return ReplicaActor(
        model, init, clock=clock, node_id=lambda: "node-1", exit_actor=lambda: exits.append("exit"), reap=False
    )


def test_it_serves_the_model_shipped_as_bytes(tmp_path: Path) -> None:
    model = affine_model()
    replica = actor(model, Clock(), [])
    x = np.random.default_rng(1).standard_normal((5, 4)).astype(np.float32)
    status, outputs = replica.run({"X": x}, ["Y"])
    reference = ort.InferenceSession(model, providers=["CPUExecutionProvider"]).run(["Y"], {"X": x})[0]
    assert status == "ok"
    np.testing.assert_allclose(outputs["Y"], reference, rtol=1e-6)
    info = replica.describe()
    assert (info["batches"], info["rows"], info["node_id"], info["load_error"]) == (1, 5, "node-1", None)


def test_errors_cross_as_code_and_message() -> None:
    replica = actor(affine_model(), Clock(), [])
    reply: tuple[Any, ...] = replica.run({"X": np.zeros((2, 3), np.float32)}, ["Y"])
    assert reply[:2] == ("error", "invalid_argument") and "bad input" in reply[2]


def test_a_model_that_does_not_load_is_reported_at_attach() -> None:
    replica = actor(b"not an onnx model", Clock(), [])
    reply = replica.attach("fe-b", "digest-1")
    assert reply["status"] == "load_failed" and reply["error"][0] == "invalid_argument"
    assert replica.run({"X": np.zeros((1, 4), np.float32)}, ["Y"])[:2] == ("error", "invalid_argument")


def test_leases_attach_renew_detach_and_close() -> None:
    clock = Clock()
    exits: list[str] = []
    replica = actor(affine_model(), clock, exits)
    assert replica.attach("fe-b", "other digest")["status"] == "mismatch"
    assert replica.attach("fe-b", "digest-1")["status"] == "ok"
    assert replica.describe()["frontends"] == ["fe-a", "fe-b"]
    clock.now += 8
    assert replica.heartbeat("fe-a")  # fe-a renews; fe-b does not
    clock.now += 8
    assert not replica.reap_once()
    assert replica.describe()["frontends"] == ["fe-a"]  # fe-b's lease expired
    assert not replica.heartbeat("fe-b")
    assert replica.detach("fe-a") == 0
    assert replica.attach("fe-c", "digest-1")["status"] == "closing"  # its last front end left
    assert replica.reap_once() and exits == ["exit"]


def test_an_actor_nobody_renews_ends_itself() -> None:
    clock = Clock()
    exits: list[str] = []
    replica = actor(affine_model(), clock, exits, ttl_s=5.0)
    clock.now += 4
    assert not replica.reap_once()
    clock.now += 2
    assert replica.reap_once() and exits == ["exit"]
