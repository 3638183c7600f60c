"""Local worker replicas against Ray actor replicas of ``digits`` on the same machine: what Ray adds per batch.

    .venv/bin/python benchmarks/ray.py [--rows 1 16 64] [--seconds 2] [--parts replica,server]

Starts a one-node Ray cluster on 127.0.0.1 (2 CPUs, 100 MB object store, no
dashboard; stopped at the end) and builds the demo ``digits`` MLP.

replica  ``Replica.run`` called directly in a closed loop, 1 or 2 batches in flight (a
         replica's capacity is 2), for a LocalReplica (a worker process; tensors in
         shared memory, a small message on a pipe) and a RayReplica (a Ray actor; the
         batch pickled into a Ray task, the answer back through Ray's core worker).
         No HTTP, no batcher: the per-batch cost of the replica transport itself. The
         floor: a bare Ray actor call that returns the batch (``await actor.f.remote(x)``).
server   The whole server (``sloserve serve`` as built by Server, one replica, the
         autoscaler off), with local replicas and then with ``--ray-address``:
         4 tritonclient gRPC threads in a closed loop, each request ``rows`` rows.

Everything shares the machine's two cores: the client threads, the server's
event loop, the worker or actor, and Ray's own processes (GCS, raylet).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Awaitable, Callable, Coroutine
from concurrent.futures import Future
from pathlib import Path
from typing import Any, TypeVar

# This file is named ray.py: keep its folder off the path, or `import ray` would import it.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]

from sloserve.cluster.ray.head import LOOPBACK_ENV, LocalRayHead  # noqa: E402

os.environ.update(LOOPBACK_ENV)  # before ray is imported: the local head listens on loopback only

import numpy as np  # noqa: E402
import uvloop  # noqa: E402
from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402

from sloserve.app import Server  # noqa: E402
from sloserve.cluster.local import LocalReplica  # noqa: E402
from sloserve.cluster.ray.cluster import RayCluster  # noqa: E402
from sloserve.registry.repository import ModelRepository  # noqa: E402
from sloserve.replica import Replica  # noqa: E402
from sloserve.runtime.demo import build_digits  # noqa: E402
from sloserve.settings import Settings  # noqa: E402
from sloserve.types import ModelName, ReplicaId  # noqa: E402

T = TypeVar("T")
Array = np.ndarray[Any, Any]
console = Console(width=140)


def summarize(latencies_s: list[float], elapsed_s: float, rows: int) -> dict[str, float]:
    ordered = sorted(latencies_s)
    count = len(ordered)
    return {
        "per_s": count / elapsed_s,
        "rows_per_s": count * rows / elapsed_s,
        "p50_ms": statistics.median(ordered) * 1e3,
        "p99_ms": ordered[min(count - 1, int(count * 0.99))] * 1e3,
    }


# ---------------------------------------------------------------- replica level


async def closed_loop(run: Callable[[], Awaitable[Any]], in_flight: int, seconds: float) -> tuple[list[float], float]:
    latencies: list[float] = []
    stop_at = time.perf_counter() + seconds

    async def caller() -> None:
        while time.perf_counter() < stop_at:
            started = time.perf_counter()
            await run()
            latencies.append(time.perf_counter() - started)

    begun = time.perf_counter()
    await asyncio.gather(*(caller() for _ in range(in_flight)))
    return latencies, time.perf_counter() - begun


async def replica_part(repository: Path, address: str, rows_list: list[int], seconds: float) -> Table:
    artifact = repository / "digits" / "1" / "model.onnx"
    x_all = np.load(repository / "digits" / "validation.npz")["X"].astype(np.float32)
    local = LocalReplica(ReplicaId("local"), artifact, max_batch_rows=max(rows_list), capacity=2)
    cluster = RayCluster(address)
    await cluster.start()
    config = ModelRepository(repository).load(ModelName("digits")).config
    actor = cluster.replica(config, artifact, 0)
    replicas: list[tuple[str, Replica]] = [("local worker", local), ("Ray actor", actor)]
    echo = _echo_actor()
    table = Table(title=f"Replica.run, closed loop, {seconds:g} s per cell (digits MLP, 1 intra-op thread)")
    for column in ("replica", "rows/batch", "in flight", "batches/s", "rows/s", "p50 ms", "p99 ms"):
        table.add_column(column, justify="left" if column == "replica" else "right")
    try:
        for _, replica in replicas:
            await replica.start()
        for rows in rows_list:
            x = {"input": x_all[:rows]}
            for in_flight in (1, 2):
                runs: list[tuple[str, Callable[[], Awaitable[Any]]]] = [
                    (name, lambda r=replica, x=x: r.run(x, ["label", "probabilities"])) for name, replica in replicas
                ]
                runs.append(("bare Ray call (floor)", lambda x=x: echo.f.remote(x)))
                for name, run in runs:
                    await closed_loop(run, in_flight, min(0.3, seconds))  # warm up
                    latencies, elapsed = await closed_loop(run, in_flight, seconds)
                    s = summarize(latencies, elapsed, rows)
                    table.add_row(
                        name,
                        str(rows),
                        str(in_flight),
                        f"{s['per_s']:,.0f}",
                        f"{s['rows_per_s']:,.0f}",
                        f"{s['p50_ms']:.3f}",
                        f"{s['p99_ms']:.3f}",
                    )
            table.add_section()
    finally:
        for _, replica in replicas:
            await replica.stop()
        await cluster.stop()
    return table


def _echo_actor() -> Any:
    """An actor whose method returns its argument: Ray's own round trip, the floor under a RayReplica's."""
    import ray

    class Echo:
        def f(self, x: Any) -> Any:
            return x

    return ray.remote(num_cpus=0)(Echo).remote()


# ---------------------------------------------------------------- whole server


class ServerInThread:
    def __init__(self, repository: Path, home: Path, ray_address: str) -> None:
        self.settings = Settings(
            repository=repository,
            home=home,
            http_port=0,
            grpc_port=0,
            metrics_port=0,
            autoscale_interval_s=0.0,
            ray_address=ray_address,
        )
        self.loop = uvloop.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.server = Server(self.settings, repository)

    def call(self, coro: Coroutine[Any, Any, T]) -> T:
        future: Future[T] = asyncio.run_coroutine_threadsafe(coro, self.loop)
        return future.result(120)

    def __enter__(self) -> ServerInThread:
        self.thread.start()
        self.call(self.server.start())
        return self

    def __exit__(self, *exc: object) -> None:
        self.call(self.server.stop())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)


def grpc_load(url: str, x: Array, threads: int, seconds: float) -> tuple[list[float], float]:
    import tritonclient.grpc as grpcclient

    latencies: list[float] = []
    stop_at = time.perf_counter() + seconds
    errors: list[str] = []

    def worker() -> None:
        client = grpcclient.InferenceServerClient(url)
        inp = grpcclient.InferInput("input", list(x.shape), "FP32")
        inp.set_data_from_numpy(x)
        mine: list[float] = []
        while time.perf_counter() < stop_at:
            started = time.perf_counter()
            try:
                client.infer("digits", [inp])
            except Exception as error:
                errors.append(str(error))
                continue
            mine.append(time.perf_counter() - started)
        latencies.extend(mine)
        client.close()

    begun = time.perf_counter()
    pool = [threading.Thread(target=worker) for _ in range(threads)]
    for t in pool:
        t.start()
    for t in pool:
        t.join()
    if errors:
        raise RuntimeError(f"{len(errors)} requests failed, e.g. {errors[0]}")
    return latencies, time.perf_counter() - begun


def server_part(repository: Path, address: str, rows_list: list[int], seconds: float, threads: int) -> Table:
    x_all = np.load(repository / "digits" / "validation.npz")["X"].astype(np.float32)
    table = Table(title=f"Whole server, gRPC, {threads} client threads in a closed loop, {seconds:g} s per cell")
    for column in ("replicas", "rows/request", "requests/s", "rows/s", "p50 ms", "p99 ms"):
        table.add_column(column, justify="left" if column == "replicas" else "right")
    results: dict[tuple[str, int], dict[str, float]] = {}
    with tempfile.TemporaryDirectory(prefix="slo-bench-") as home:
        for name, ray_address in (("local worker", ""), ("Ray actor", address)):
            with ServerInThread(repository, Path(home) / name.replace(" ", "-"), ray_address) as running:
                url = f"127.0.0.1:{running.server.ports.grpc}"
                for rows in rows_list:
                    x = x_all[:rows]
                    grpc_load(url, x, threads, min(0.5, seconds))  # warm up
                    latencies, elapsed = grpc_load(url, x, threads, seconds)
                    results[(name, rows)] = summarize(latencies, elapsed, rows)
    for rows in rows_list:
        for name in ("local worker", "Ray actor"):
            s = results[(name, rows)]
            table.add_row(
                name,
                str(rows),
                f"{s['per_s']:,.0f}",
                f"{s['rows_per_s']:,.0f}",
                f"{s['p50_ms']:.2f}",
                f"{s['p99_ms']:.2f}",
            )
        table.add_section()
    return table


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, nargs="+", default=[1, 16, 64])
    parser.add_argument("--seconds", type=float, default=2.0)
    parser.add_argument("--threads", type=int, default=4, help="client threads in the server part")
    parser.add_argument("--parts", default="replica,server")
    args = parser.parse_args()
    parts = set(args.parts.split(","))

    temp = Path(tempfile.mkdtemp(prefix="sloray-bench-"))
    head = LocalRayHead(temp / "ray", num_cpus=2, object_store_bytes=100_000_000)
    started = time.perf_counter()
    head.start()
    console.print(f"Ray head at {head.address} up in {time.perf_counter() - started:.1f} s")
    try:
        repository = temp / "repository"
        build_digits(ModelRepository(repository))
        if "replica" in parts:
            console.print(asyncio.run(replica_part(repository, head.address, args.rows, args.seconds)))
        if "server" in parts:
            console.print(server_part(repository, head.address, args.rows, args.seconds, args.threads))
    finally:
        head.stop()
        shutil.rmtree(temp, ignore_errors=True)


if __name__ == "__main__":
    main()
