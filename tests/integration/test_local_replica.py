"""LocalReplica with real worker processes and real ONNX Runtime."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import pytest_asyncio
from onnx import TensorProto, helper, numpy_helper

from sloserve.cluster import shm
from sloserve.cluster.local import LocalReplica
from sloserve.errors import InvalidArgumentError, NotFoundError, ReplicaDiedError, UnavailableError
from sloserve.types import ReplicaId

pytestmark = pytest.mark.integration
# Async tests share the module fixture's event loop (its worker is watched from that loop).
shared_loop = pytest.mark.asyncio(loop_scope="module")

Array = np.ndarray[Any, Any]
OUTPUTS = ("Y", "Z")
MAX_BATCH_ROWS = 16


def build_linear_model(path: Path) -> Path:
    """Y = X @ W + b (FP32 [-1, 8] -> [-1, 4]) and Z = argmax(Y) (INT64 [-1])."""
    rng = np.random.default_rng(0)
    weights = numpy_helper.from_array(rng.standard_normal((8, 4)).astype(np.float32), "W")
    bias = numpy_helper.from_array(rng.standard_normal(4).astype(np.float32), "b")
    graph = helper.make_graph(
        [
            helper.make_node("MatMul", ["X", "W"], ["XW"]),
            helper.make_node("Add", ["XW", "b"], ["Y"]),
            helper.make_node("ArgMax", ["Y"], ["Z"], axis=1, keepdims=0),
        ],
        "linear",
        [helper.make_tensor_value_info("X", TensorProto.FLOAT, ["N", 8])],
        [
            helper.make_tensor_value_info("Y", TensorProto.FLOAT, ["N", 4]),
            helper.make_tensor_value_info("Z", TensorProto.INT64, ["N"]),
        ],
        [weights, bias],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, path)
    return path


def build_wide_model(path: Path) -> Path:
    """W = concat(X, X, X) with an undeclared width (FP32 [-1, ?]), T = S (BYTES [-1])."""
    graph = helper.make_graph(
        [
            helper.make_node("Concat", ["X", "X", "X"], ["W"], axis=1),
            helper.make_node("Identity", ["S"], ["T"]),
        ],
        "wide",
        [
            helper.make_tensor_value_info("X", TensorProto.FLOAT, ["N", 8]),
            helper.make_tensor_value_info("S", TensorProto.STRING, ["N"]),
        ],
        [
            helper.make_tensor_value_info("W", TensorProto.FLOAT, ["N", "K"]),
            helper.make_tensor_value_info("T", TensorProto.STRING, ["N"]),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, path)
    return path


def reference(path: Path, x: Array) -> dict[str, Array]:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return dict(zip(OUTPUTS, session.run(list(OUTPUTS), {"X": x}), strict=True))


def batch(rows: int, seed: int) -> Array:
    return np.random.default_rng(seed).standard_normal((rows, 8)).astype(np.float32)


def assert_matches(got: dict[str, Array], want: dict[str, Array]) -> None:
    assert set(got) == set(want)
    for name in want:
        assert got[name].dtype == want[name].dtype
        np.testing.assert_allclose(got[name], want[name], rtol=1e-6, atol=1e-6)


def our_segments() -> set[str]:
    return {n for n in os.listdir("/dev/shm") if n.startswith(shm.segment_prefix())}


async def wait_until(predicate: Any, timeout_s: float = 20.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached in time"
        await asyncio.sleep(0.02)


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_linear_model(tmp_path_factory.mktemp("models") / "linear.onnx")


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def replica(model: Path) -> AsyncIterator[LocalReplica]:
    """Shared by the tests that leave the worker as they found it."""
    r = LocalReplica(ReplicaId("shared"), model, max_batch_rows=MAX_BATCH_ROWS, capacity=2)
    await r.start()
    yield r
    await r.stop()


@pytest.fixture
def model_copy(model: Path, tmp_path: Path) -> Path:
    path = tmp_path / "copy.onnx"
    path.write_bytes(model.read_bytes())
    return path


@pytest.fixture
def garbage_model(tmp_path: Path) -> Path:
    path = tmp_path / "garbage.onnx"
    path.write_bytes(b"this is not an ONNX model")
    return path


def new_replica(model: Path, name: str, **kwargs: Any) -> LocalReplica:
    return LocalReplica(ReplicaId(name), model, max_batch_rows=MAX_BATCH_ROWS, capacity=2, **kwargs)


@shared_loop
async def test_results_equal_onnxruntime_for_several_batch_sizes(replica: LocalReplica, model: Path) -> None:
    assert replica.healthy and replica.pid is not None
    results = []
    for rows in (1, 7, MAX_BATCH_ROWS, 100, 3000):  # the last two outgrow the slots
        x = batch(rows, seed=rows)
        got = await replica.run({"X": x}, OUTPUTS)
        assert_matches(got, reference(model, x))
        results.append((got, reference(model, x)))
    # Outputs were copied out: later batches reusing the slots changed none of them.
    for got, want in results:
        assert_matches(got, want)
        assert got["Y"].flags.owndata and got["Y"].flags.writeable
    assert replica.outstanding == 0


@shared_loop
async def test_output_subset_and_all_outputs(replica: LocalReplica, model: Path) -> None:
    x = batch(5, seed=1)
    want = reference(model, x)
    only_z = await replica.run({"X": x}, ["Z"])
    assert list(only_z) == ["Z"]
    np.testing.assert_array_equal(only_z["Z"], want["Z"])
    assert_matches(await replica.run({"X": x}, []), want)  # no names: every output


@shared_loop
async def test_outputs_of_unknown_size_and_bytes_tensors(tmp_path: Path) -> None:
    # The slots are sized from the declared shapes; W's width is unknown, so a big
    # batch's outputs first overflow the slot (sent inline), then the slot grows.
    r = new_replica(build_wide_model(tmp_path / "wide.onnx"), "wide")
    await r.start()
    try:
        for rows in (3, 2000, 2000, 5000):
            x = batch(rows, seed=rows)
            s = np.array([f"row {i} \u00e9".encode() for i in range(rows)], dtype=object)
            got = await r.run({"X": x, "S": s}, ["W", "T"])
            np.testing.assert_array_equal(got["W"], np.concatenate([x, x, x], axis=1))
            assert got["T"].dtype == object
            assert list(got["T"]) == list(s)
    finally:
        await r.stop()


@shared_loop
async def test_pipelined_concurrent_runs_each_get_their_own_answer(replica: LocalReplica, model: Path) -> None:
    inputs = [batch(rows, seed=100 + i) for i, rows in enumerate((1, 3, 16, 2, 9, 40, 5, 12))]
    tasks = [asyncio.create_task(replica.run({"X": x}, OUTPUTS)) for x in inputs]
    await asyncio.sleep(0)
    assert 0 < replica.outstanding <= replica.capacity
    results = await asyncio.gather(*tasks)
    for x, got in zip(inputs, results, strict=True):
        assert_matches(got, reference(model, x))
    assert replica.outstanding == 0


@shared_loop
async def test_cancelled_callers_do_not_leak_slots(replica: LocalReplica, model: Path) -> None:
    pid = replica.pid
    assert pid is not None
    inputs = [batch(2, seed=200 + i) for i in range(4)]
    os.kill(pid, signal.SIGSTOP)
    try:
        tasks = [asyncio.create_task(replica.run({"X": x}, OUTPUTS)) for x in inputs]
        await wait_until(lambda: replica.outstanding == 2)  # two sent, two waiting for a slot
        tasks[0].cancel()  # sent: its slot stays taken until the worker answers
        tasks[2].cancel()  # waiting: gives up its place
        await asyncio.sleep(0.05)
        assert replica.outstanding == 2
    finally:
        os.kill(pid, signal.SIGCONT)
    for i in (1, 3):
        assert_matches(await tasks[i], reference(model, inputs[i]))
    for i in (0, 2):
        assert tasks[i].cancelled()
    await wait_until(lambda: replica.outstanding == 0)
    results = await asyncio.gather(*(replica.run({"X": x}, OUTPUTS) for x in inputs))
    for x, got in zip(inputs, results, strict=True):
        assert_matches(got, reference(model, x))


@shared_loop
async def test_model_errors_come_back_as_codes_and_the_worker_keeps_serving(replica: LocalReplica, model: Path) -> None:
    pid = replica.pid
    with pytest.raises(InvalidArgumentError, match="missing \\['X'\\]"):
        await replica.run({"wrong": batch(2, seed=0)}, OUTPUTS)
    with pytest.raises(InvalidArgumentError):
        await replica.run({"X": np.ones((2, 5), np.float32)}, OUTPUTS)
    with pytest.raises(InvalidArgumentError, match="dtype"):
        await replica.run({"X": np.ones((2, 8), np.float64)}, OUTPUTS)
    with pytest.raises(NotFoundError):
        await replica.run({"X": batch(2, seed=0)}, ["nope"])
    x = batch(4, seed=4)
    assert_matches(await replica.run({"X": x}, OUTPUTS), reference(model, x))
    assert replica.pid == pid and replica.healthy and replica.restarts == 0


@shared_loop
async def test_worker_ignores_sigint(replica: LocalReplica, model: Path) -> None:
    pid = replica.pid
    assert pid is not None
    os.kill(pid, signal.SIGINT)
    await asyncio.sleep(0.1)
    x = batch(3, seed=3)
    assert_matches(await replica.run({"X": x}, OUTPUTS), reference(model, x))
    assert replica.pid == pid and replica.restarts == 0


@shared_loop
async def test_killed_worker_fails_in_flight_batches_and_restarts(model: Path) -> None:
    r = new_replica(model, "killed", restart_backoff_s=0.05)
    await r.start()
    try:
        old_pid = r.pid
        assert old_pid is not None
        old_segments = our_segments()
        os.kill(old_pid, signal.SIGSTOP)  # hold the batches in flight
        tasks = [asyncio.create_task(r.run({"X": batch(4, seed=i)}, OUTPUTS)) for i in range(2)]
        await wait_until(lambda: r.outstanding == 2)
        os.kill(old_pid, signal.SIGKILL)
        for task in tasks:
            with pytest.raises(ReplicaDiedError, match="died"):
                await task
        assert not r.healthy
        with pytest.raises(UnavailableError):
            await r.run({"X": batch(1, seed=0)}, OUTPUTS)

        await wait_until(lambda: r.healthy)
        assert r.pid not in (None, old_pid)
        assert r.restarts == 1
        x = batch(6, seed=6)
        assert_matches(await r.run({"X": x}, OUTPUTS), reference(model, x))
        # The dead worker's slots are gone; the new worker has its own.
        assert len(our_segments() - old_segments) == r.capacity
        assert len(old_segments - our_segments()) == r.capacity
    finally:
        await r.stop()


@shared_loop
async def test_restarts_are_bounded(model_copy: Path) -> None:
    path = model_copy
    r = new_replica(path, "vanishing", max_restart_attempts=2, restart_backoff_s=0.01)
    await r.start()
    try:
        path.unlink()  # every restart now fails to load the model
        pid = r.pid
        assert pid is not None
        os.kill(pid, signal.SIGKILL)
        await wait_until(lambda: r.state == "failed")
        assert r.restarts == 2 and not r.healthy and r.pid is None
        with pytest.raises(UnavailableError, match="failed"):
            await r.run({"X": batch(1, seed=0)}, OUTPUTS)
    finally:
        await r.stop()
    assert r.state == "stopped"


@shared_loop
async def test_garbage_model_fails_start_quickly(garbage_model: Path) -> None:
    path = garbage_model
    before = our_segments()
    r = new_replica(path, "garbage")
    started = time.monotonic()
    with pytest.raises(InvalidArgumentError, match="not a loadable ONNX model"):
        await r.start()
    assert time.monotonic() - started < 10
    assert r.pid is None and not r.healthy
    assert our_segments() == before
    await r.stop()


@shared_loop
async def test_stop_fails_in_flight_work_and_leaves_no_segments(model: Path) -> None:
    before = our_segments()
    r = new_replica(model, "stopped", stop_timeout_s=0.3)
    await r.start()
    pid = r.pid
    assert pid is not None
    await r.run({"X": batch(200, seed=0)}, OUTPUTS)  # grows a slot
    assert len(our_segments() - before) == r.capacity
    os.kill(pid, signal.SIGSTOP)  # it cannot answer, nor exit gracefully
    tasks = [asyncio.create_task(r.run({"X": batch(2, seed=i)}, OUTPUTS)) for i in range(3)]
    await wait_until(lambda: r.outstanding == 2)  # the third waits for a slot
    await r.stop()
    for task in tasks:
        with pytest.raises(UnavailableError, match="stopped") as info:
            await task
        assert type(info.value) is UnavailableError
    assert our_segments() == before
    assert not r.healthy and r.pid is None
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)
    await r.stop()  # idempotent
    with pytest.raises(UnavailableError):
        await r.run({"X": batch(1, seed=0)}, OUTPUTS)


def test_on_uvloop_the_server_loop(model: Path) -> None:
    # The server runs on uvloop: add_reader on the pipe and the sentinel must work there too.
    import uvloop

    async def scenario() -> None:
        before = our_segments()
        r = new_replica(model, "uvloop", restart_backoff_s=0.01)
        await r.start()
        try:
            x = batch(5, seed=5)
            assert_matches(await r.run({"X": x}, OUTPUTS), reference(model, x))
            pid = r.pid
            assert pid is not None
            os.kill(pid, signal.SIGSTOP)
            task = asyncio.create_task(r.run({"X": x}, OUTPUTS))
            await wait_until(lambda: r.outstanding == 1)
            os.kill(pid, signal.SIGKILL)
            with pytest.raises(ReplicaDiedError):
                await task
            await wait_until(lambda: r.healthy)
            assert_matches(await r.run({"X": x}, OUTPUTS), reference(model, x))
        finally:
            await r.stop()
        assert our_segments() == before

    uvloop.run(scenario())
