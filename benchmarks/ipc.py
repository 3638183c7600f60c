"""Round-trip time per batch between the server process and a model worker process.

Compares three ways of moving tensors to a worker running the same ONNX Runtime
session (X: FP32 [rows, 64] -> Y: FP32 [rows, 10], one intra-op thread):

  shm       LocalReplica: tensors in shared memory slots, a ~100-byte control message on the pipe
  pickle    conn.send({name: ndarray}) both ways (multiprocessing pickles the arrays)
  tolist    conn.send({name: array.tolist()}) both ways, np.asarray on arrival

All three wait for replies the same way (asyncio ``add_reader`` on the pipe), one
batch at a time. Two floors: "echo" is a 120-byte message sent to a worker and
back with no model (the process hand-off alone), "model" the session called
in-process (the compute alone). "shm x2" keeps two batches in flight (LocalReplica capacity 2) and
reports time per batch.

    .venv/bin/python benchmarks/ipc.py [--rows 1 64 1024] [--seconds 1.0]
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import os
import statistics
import tempfile
import time
from collections.abc import Awaitable, Callable
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import numpy as np

ROUNDS = 10
ECHO_MESSAGE = b"x" * 120  # about the size of a LocalReplica control message
FEATURES = 64
CLASSES = 10
Array = np.ndarray[Any, Any]


def build_model(path: Path) -> Path:
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["X", "W"], ["XW"]), helper.make_node("Add", ["XW", "b"], ["Y"])],
        "ipc",
        [helper.make_tensor_value_info("X", TensorProto.FLOAT, ["N", FEATURES])],
        [helper.make_tensor_value_info("Y", TensorProto.FLOAT, ["N", CLASSES])],
        [
            numpy_helper.from_array(rng.standard_normal((FEATURES, CLASSES)).astype(np.float32), "W"),
            numpy_helper.from_array(rng.standard_normal(CLASSES).astype(np.float32), "b"),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, path)
    return path


def baseline_worker(conn: Connection, model_path: str, mode: str) -> None:
    """The comparison workers: whole arrays (or lists) pickled over the pipe, or
    ("echo") no model at all: the message comes straight back."""
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[var] = "1"
    from sloserve.runtime.session import OnnxSession

    session = OnnxSession(Path(model_path), intra_op_threads=1)
    while True:
        try:
            inputs = conn.recv()
        except EOFError:
            return
        if inputs is None:
            return
        if mode == "echo":
            conn.send(inputs)
        elif mode == "tolist":
            arrays = {k: np.asarray(v, dtype=np.float32) for k, v in inputs.items()}
            conn.send({k: v.tolist() for k, v in session.run(arrays, ["Y"]).items()})
        else:
            conn.send(session.run(inputs, ["Y"]))


class PipeWorker:
    """Parent side of a baseline worker, replies awaited with add_reader like LocalReplica."""

    def __init__(self, model: Path, mode: str) -> None:
        ctx = multiprocessing.get_context("spawn")
        self._conn, child = ctx.Pipe()
        self._proc = ctx.Process(target=baseline_worker, args=(child, str(model), mode), daemon=True)
        self._proc.start()
        child.close()
        self._as_lists = mode == "tolist"
        self._loop = asyncio.get_running_loop()
        self._future: asyncio.Future[Any] | None = None
        self._loop.add_reader(self._conn.fileno(), self._on_readable)

    def _on_readable(self) -> None:
        while self._conn.poll():
            reply = self._conn.recv()
            assert self._future is not None
            self._future.set_result(reply)

    async def echo(self, message: object) -> object:
        self._future = self._loop.create_future()
        self._conn.send(message)
        return await self._future

    async def run(self, x: Array) -> Array:
        self._future = self._loop.create_future()
        self._conn.send({"X": x.tolist()} if self._as_lists else {"X": x})
        reply = await self._future
        return np.asarray(reply["Y"], dtype=np.float32)

    def close(self) -> None:
        self._loop.remove_reader(self._conn.fileno())
        self._conn.send(None)
        self._proc.join(5)
        self._conn.close()


Call = Callable[[], Awaitable[object]]


async def burst(call: Call, seconds: float, samples: list[float]) -> None:
    """Append the seconds each call takes, for about ``seconds`` (at least 3 calls)."""
    end = time.perf_counter() + seconds
    while time.perf_counter() < end or len(samples) % 3:
        start = time.perf_counter()
        await call()
        samples.append(time.perf_counter() - start)


async def pipelined_burst(replica: Any, x: Array, seconds: float, samples: list[float]) -> None:
    """Append the mean seconds per batch with ``capacity`` batches kept in flight."""
    done = [0]

    async def feed(stop: float) -> None:
        while time.perf_counter() < stop:
            await replica.run({"X": x}, ["Y"])
            done[0] += 1

    start = time.perf_counter()
    await asyncio.gather(*(feed(start + seconds) for _ in range(replica.capacity)))
    samples.append((time.perf_counter() - start) / done[0])


def us(samples: list[float]) -> str:
    q = statistics.quantiles(samples, n=10)
    return f"{statistics.median(samples) * 1e6:8.1f} ({q[8] * 1e6:7.1f})"


async def main(rows_list: list[int], seconds: float) -> None:
    from sloserve.cluster.local import LocalReplica
    from sloserve.runtime.session import OnnxSession
    from sloserve.types import ReplicaId

    with tempfile.TemporaryDirectory() as tmp:
        model = build_model(Path(tmp) / "ipc.onnx")
        session = OnnxSession(model, intra_op_threads=1)
        replica = LocalReplica(ReplicaId("ipc"), model, max_batch_rows=max(rows_list), capacity=2)
        await replica.start()
        pickled = PipeWorker(model, "pickle")
        listed = PipeWorker(model, "tolist")
        echo = PipeWorker(model, "echo")
        try:
            print(f"{os.cpu_count()} CPUs; microseconds per batch round trip, median (p90)")
            print(
                f"X: FP32 [rows, {FEATURES}] -> Y: FP32 [rows, {CLASSES}]; {seconds:g} s per cell "
                f"in {ROUNDS} interleaved bursts; shm x2: median of the bursts' mean per batch\n"
            )
            header = ("rows", "echo", "model", "shm", "pickle", "tolist", "shm x2")
            print(f"{header[0]:>5} | " + " | ".join(f"{h:>18}" for h in header[1:6]) + f" | {header[6]:>8}")
            print("-" * 115)
            for rows in rows_list:
                x = np.random.default_rng(rows).standard_normal((rows, FEATURES)).astype(np.float32)
                want = session.run({"X": x}, ["Y"])["Y"]
                for got in (
                    (await replica.run({"X": x}, ["Y"]))["Y"],
                    await pickled.run(x),
                    await listed.run(x),
                ):
                    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)

                async def pipe_echo() -> object:
                    return await echo.echo(ECHO_MESSAGE)

                async def in_process(x: Array = x) -> object:
                    return session.run({"X": x}, ["Y"])

                async def via_shm(x: Array = x) -> object:
                    return await replica.run({"X": x}, ["Y"])

                async def via_pickle(x: Array = x) -> object:
                    return await pickled.run(x)

                async def via_tolist(x: Array = x) -> object:
                    return await listed.run(x)

                calls: list[Call] = [pipe_echo, in_process, via_shm, via_pickle, via_tolist]
                # Interleave short bursts so that noise from other processes on
                # this machine falls on every transport alike.
                samples: list[list[float]] = [[] for _ in calls]
                piped: list[float] = []
                for round_ in range(ROUNDS + 1):
                    for call, into in zip(calls, samples, strict=True):
                        await burst(call, seconds / ROUNDS, into if round_ else [])  # round 0 warms up
                    await pipelined_burst(replica, x, seconds / ROUNDS, piped if round_ else [])
                cells = [us(s) for s in samples]
                piped_us = statistics.median(piped) * 1e6
                print(f"{rows:>5} | " + " | ".join(f"{c:>18}" for c in cells) + f" | {piped_us:8.1f}")
        finally:
            pickled.close()
            listed.close()
            echo.close()
            await replica.stop()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, nargs="+", default=[1, 64, 1024])
    parser.add_argument("--seconds", type=float, default=1.0, help="measuring time per cell")
    args = parser.parse_args()
    asyncio.run(main(args.rows, args.seconds))
