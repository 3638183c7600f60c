"""Run a real sloserve Server in a background thread on free 127.0.0.1 ports."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Coroutine
from concurrent.futures import Future
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import onnx
import uvloop
from onnx import TensorProto, helper

from sloserve.app import Server
from sloserve.settings import Settings

T = TypeVar("T")


class ServerThread:
    """A Server on its own event loop in a thread; stopped by the test that started it."""

    def __init__(self, repository: Path, **settings: Any) -> None:
        defaults: dict[str, Any] = {
            "http_port": 0,
            "grpc_port": 0,
            "metrics_port": 0,
            "shutdown_grace_s": 5.0,
            "home": repository.parent / f"{repository.name}-home",
        }
        defaults.update(settings)
        self.settings = Settings(repository=repository, **defaults)
        self.loop = uvloop.new_event_loop()  # as `sloserve serve` runs
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.server: Server | None = None

    def call(self, coro: Coroutine[Any, Any, T], timeout: float = 60.0) -> T:
        future: Future[T] = asyncio.run_coroutine_threadsafe(coro, self.loop)
        return future.result(timeout)

    def start(self) -> ServerThread:
        self.thread.start()

        async def make() -> Server:
            server = Server(self.settings, self.settings.repository)  # type: ignore[arg-type]
            await server.start()
            return server

        self.server = self.call(make(), timeout=120)
        return self

    def stop(self) -> None:
        if self.server is not None:
            self.call(self.server.stop(), timeout=60)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)

    @property
    def http_url(self) -> str:
        assert self.server is not None
        return f"127.0.0.1:{self.server.ports.http}"

    @property
    def grpc_url(self) -> str:
        assert self.server is not None
        return f"127.0.0.1:{self.server.ports.grpc}"

    @property
    def metrics_url(self) -> str:
        assert self.server is not None
        return f"http://127.0.0.1:{self.server.ports.metrics}/metrics"


# Every datatype an ONNX Identity passes through, with its ONNX element type.
ECHO_TYPES: dict[str, int] = {
    "BOOL": TensorProto.BOOL,
    "UINT8": TensorProto.UINT8,
    "UINT16": TensorProto.UINT16,
    "UINT32": TensorProto.UINT32,
    "UINT64": TensorProto.UINT64,
    "INT8": TensorProto.INT8,
    "INT16": TensorProto.INT16,
    "INT32": TensorProto.INT32,
    "INT64": TensorProto.INT64,
    "FP16": TensorProto.FLOAT16,
    "FP32": TensorProto.FLOAT,
    "FP64": TensorProto.DOUBLE,
    "BYTES": TensorProto.STRING,
}


def write_echo_model(repository: Path, name: str = "echo") -> None:
    """A model with one input per datatype, each echoed to an output: [-1, 3] -> [-1, 3]."""
    inputs, outputs, nodes = [], [], []
    config_inputs, config_outputs = [], []
    for datatype, elem in ECHO_TYPES.items():
        i, o = f"in_{datatype.lower()}", f"out_{datatype.lower()}"
        inputs.append(helper.make_tensor_value_info(i, elem, ["batch", 3]))
        outputs.append(helper.make_tensor_value_info(o, elem, ["batch", 3]))
        nodes.append(helper.make_node("Identity", [i], [o]))
        config_inputs.append({"name": i, "datatype": datatype, "shape": [-1, 3]})
        config_outputs.append({"name": o, "datatype": datatype, "shape": [-1, 3]})
    graph = helper.make_graph(nodes, name, inputs, outputs)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 9
    folder = repository / name
    (folder / "1").mkdir(parents=True)
    onnx.save(model, folder / "1" / "model.onnx")
    import json

    config = {
        "name": name,
        "platform": "onnx_onnxv1",
        "max_batch_size": 8,
        "inputs": config_inputs,
        "outputs": config_outputs,
    }
    (folder / "config.json").write_text(json.dumps(config, indent=2))


def echo_inputs(rows: int, seed: int) -> dict[str, np.ndarray[Any, Any]]:
    rng = np.random.default_rng(seed)
    from sloserve.datatypes import numpy_dtype

    arrays: dict[str, np.ndarray[Any, Any]] = {}
    for datatype in ECHO_TYPES:
        name = f"in_{datatype.lower()}"
        if datatype == "BYTES":
            arrays[name] = np.array(
                [[f"r{seed}-{r}-{c}".encode() for c in range(3)] for r in range(rows)], dtype=np.object_
            )
        elif datatype == "BOOL":
            arrays[name] = rng.integers(0, 2, (rows, 3)).astype(bool)
        else:
            dtype = numpy_dtype(datatype)
            arrays[name] = (rng.random((rows, 3)) * 100).astype(dtype)
    return arrays


def reference(session: Any, x: np.ndarray[Any, Any]) -> dict[str, np.ndarray[Any, Any]]:
    """Run the digits ONNX file directly with onnxruntime: the answer a served request must equal."""
    names = [o.name for o in session.get_outputs()]
    return dict(zip(names, session.run(names, {"input": x}), strict=True))
