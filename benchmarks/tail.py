"""Tail latency: routing, hedging with a straggler, scatter-gather, the prediction cache.

    python benchmarks/tail.py [--requests 20000] [--rate 3000] [--parts hedge,split,cache]

Everything runs in this process on the data plane's request path (batcher,
replica set, hedger, real worker processes over shared memory); no HTTP, so the
numbers are the server's own, not the transport's.

hedge   Three replicas of the demo ``digits`` MLP (capacity 2 each). In the
        straggler runs one replica delays 10% of its batches by 50 ms
        (``FaultSpec(slow_fraction=0.1, slow_ms=50)``, injected in its worker).
        Open loop: Poisson arrivals at ``--rate``, one row per request. p50, p99,
        p99.9 per configuration, with the extra work hedging spent (backup runs /
        batches), for least-loaded and power-of-two-choices routing.
split   A 4,096-row request to a compute-heavy MLP (``build_wide_mlp``) on one
        replica, against scatter-gather over three.
cache   Latency of a cache hit against a miss through ``DataPlane.infer``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import statistics
import tempfile
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import replace
from pathlib import Path
from types import MappingProxyType
from typing import Any

import numpy as np
import uvloop
from rich.console import Console
from rich.table import Table

from sloserve.catalog import CatalogSnapshot, LoadedModel, RunningVersion
from sloserve.clock import SystemClock
from sloserve.cluster.faults import FaultSpec
from sloserve.cluster.local import LocalReplica
from sloserve.dataplane.dataplane import DataPlane
from sloserve.dataplane.host import VersionHost
from sloserve.dataplane.splitter import scatter_gather
from sloserve.metrics import ServingMetrics
from sloserve.model_config import CacheConfig, HedgingConfig, ModelConfig
from sloserve.policy.routing import Routing
from sloserve.protocol.types import InferRequest, Tensor
from sloserve.registry.repository import ModelRepository
from sloserve.runtime.demo import build_digits, build_wide_mlp, wide_mlp_config
from sloserve.types import ModelName, ReplicaId, VersionId

console = Console(width=150)
V1 = VersionId("1")
Array = np.ndarray[Any, Any]


def percentiles(latencies: Sequence[float]) -> tuple[float, float, float]:
    ms = np.asarray(latencies) * 1e3
    p50, p99, p999 = np.percentile(ms, [50, 99, 99.9])
    return float(p50), float(p99), float(p999)


async def open_loop(call: Callable[[int], Awaitable[Any]], requests: int, rate: float, seed: int) -> list[float]:
    """Poisson arrivals at ``rate`` per second (a closed loop would let the clients synchronise into
    one batch per round); each latency runs from the request's start."""
    gaps = np.random.default_rng(seed).exponential(1.0 / rate, requests)
    latencies = [0.0] * requests
    tasks = []

    async def one(i: int) -> None:
        t0 = time.perf_counter()
        await call(i)
        latencies[i] = time.perf_counter() - t0

    due = time.perf_counter()
    for i in range(requests):
        due += gaps[i]
        wait = due - time.perf_counter()
        if wait > 0:
            await asyncio.sleep(wait)
        tasks.append(asyncio.create_task(one(i)))
    await asyncio.gather(*tasks)
    return latencies


def replica(name: str, artifact: Path, rows: int, faults: FaultSpec | None = None, threads: int = 1) -> LocalReplica:
    return LocalReplica(
        ReplicaId(name), artifact, max_batch_rows=rows, capacity=2, intra_op_threads=threads, faults=faults
    )


# ---- hedging and routing --------------------------------------------------------------------------


async def bench_hedging(root: Path, requests: int, rate: float, repeats: int) -> None:
    repo = ModelRepository(root)
    build_digits(repo)
    artifact = repo.artifact("digits", "1")
    config = repo.read_config("digits")
    x = np.load(root / "digits" / "validation.npz")["X"].astype(np.float32)
    fast = [replica(f"fast{i}", artifact, 64) for i in range(3)]
    slow = replica("slow", artifact, 64, FaultSpec(slow_fraction=0.1, slow_ms=50, seed=1))
    await asyncio.gather(*(r.start() for r in (*fast, slow)))
    clock = SystemClock()
    rows = [x[i % len(x) : i % len(x) + 1] for i in range(512)]
    off, on = HedgingConfig(enabled=False), HedgingConfig()
    cases: list[tuple[str, Routing, HedgingConfig]] = []
    for routing in (Routing.LEAST_LOADED, Routing.POWER_OF_TWO):
        for members in ("3 fast", "2 fast + straggler"):
            cases += [(members, routing, off), (members, routing, on)]
    results: dict[int, list[tuple[float, float, float, float, int, int]]] = {i: [] for i in range(len(cases))}
    for _ in range(repeats):  # interleaved, so a noisy minute on this shared machine hits every case
        for index, (members, routing, hedging) in enumerate(cases):
            replicas = (*fast[:2], slow) if "straggler" in members else tuple(fast)
            host = VersionHost(
                replace(config, hedging=hedging), RunningVersion(V1, replicas), clock, ServingMetrics(), routing=routing
            )
            host.start()

            async def call(i: int, host: VersionHost = host) -> Any:
                return await host.batcher.submit({"input": rows[i % len(rows)]}, 1)

            await open_loop(call, 2000, rate, seed=0)  # warm up: live quantiles, worker caches
            executions = host.stats.execution_count
            hedger = host.replicas.hedger
            fired_before = hedger.counts.fired if hedger else 0
            started = time.perf_counter()
            latencies = await open_loop(call, requests, rate, seed=1)
            elapsed = time.perf_counter() - started
            await host.close()
            batches = host.stats.execution_count - executions
            fired = (hedger.counts.fired if hedger else 0) - fired_before
            results[index].append((*percentiles(latencies), requests / elapsed, batches, fired))
            if hedger is not None:
                console.print(f"  {members} / {routing.value}: {hedger.counts}", style="dim")
    title = f"digits, 3 replicas, Poisson {rate:,.0f} req/s, {requests:,} one-row requests; median of {repeats} runs"
    table = Table(title=title)
    for column in ("replicas", "routing", "hedging", "p50 ms", "p99 ms", "p99 range", "p99.9 ms", "extra work"):
        table.add_column(column)
    p99_baseline: dict[Routing, float] = {}
    for index, (members, routing, hedging) in enumerate(cases):
        runs = results[index]
        p50, p99, p999 = (statistics.median(r[k] for r in runs) for k in range(3))
        batches, fired = sum(r[4] for r in runs), sum(r[5] for r in runs)
        if members == "3 fast" and not hedging.enabled:
            p99_baseline[routing] = p99
        table.add_row(
            members,
            routing.value,
            f"p{hedging.quantile * 100:g}, budget {hedging.budget:.0%}" if hedging.enabled else "off",
            f"{p50:.3f}",
            f"{p99:.2f}",
            f"{min(r[1] for r in runs):.2f}-{max(r[1] for r in runs):.2f}",
            f"{p999:.2f}",
            f"{fired / max(batches, 1):.2%} of {batches // len(runs):,} batches" if hedging.enabled else "-",
        )
    console.print(table)
    for routing, p99 in p99_baseline.items():
        console.print(f"goal ({routing.value}): p99 with the straggler <= 1.5 x {p99:.2f} ms = {1.5 * p99:.2f} ms")
    console.print(f"straggler worker: batches cancelled before they started (dropped): {slow.dropped}")
    await asyncio.gather(*(r.stop() for r in (*fast, slow)))


# ---- scatter-gather -------------------------------------------------------------------------------


async def bench_split(root: Path, rows: int, repeats: int, width: int) -> None:
    repo = ModelRepository(root)
    onnx_path = root / "wide.onnx.tmp"
    build_wide_mlp(onnx_path, in_features=256, width=width, layers=4, out_features=16)
    repo.write_model(wide_mlp_config("wide", max_batch_size=512), onnx_path)
    artifact = repo.artifact("wide", "1")
    config = repo.read_config("wide")
    x = np.random.default_rng(0).standard_normal((rows, 256)).astype(np.float32)
    table = Table(title=f"one {rows}-row request, wide MLP 256-{width}x4-16, median of {repeats}")
    for column in ("how", "replicas", "threads each", "chunks", "ms", "speed-up", "equal to one run"):
        table.add_column(column)
    single = replica("one", artifact, rows)
    single2 = replica("one-2t", artifact, rows, threads=2)
    three = [replica(f"split{i}", artifact, 512) for i in range(3)]
    await asyncio.gather(*(r.start() for r in (single, single2, *three)))
    reference = (await single.run({"input": x}, ["output"]))["output"]

    async def timed(call: Callable[[], Awaitable[dict[str, Array]]]) -> tuple[float, Array]:
        times, result = [], None
        for _ in range(repeats):
            t0 = time.perf_counter()
            result = await call()
            times.append(time.perf_counter() - t0)
        assert result is not None
        return statistics.median(times) * 1e3, result["output"]

    base_ms, _ = await timed(lambda: single.run({"input": x}, ["output"]))
    table.add_row("unsplit", "1", "1", "1", f"{base_ms:.1f}", "1.00", "-")
    ms, out = await timed(lambda: single2.run({"input": x}, ["output"]))
    table.add_row("unsplit", "1", "2", "1", f"{ms:.1f}", f"{base_ms / ms:.2f}", str(np.array_equal(out, reference)))
    for members, split_rows in ((three[:1], 512), (tuple(three), 512), (tuple(three), -(-rows // 3))):
        sized = replace(config, max_batch_size=split_rows)  # the best batch: what requests are split into
        host = VersionHost(sized, RunningVersion(V1, tuple(members)), SystemClock(), ServingMetrics())
        host.start()

        async def through(host: VersionHost = host) -> dict[str, Array]:
            return (await scatter_gather(host.batcher.submit, {"input": x}, rows, host.split_rows)).outputs

        ms, out = await timed(through)
        chunks = -(-rows // split_rows)
        table.add_row(
            "scatter-gather",
            str(len(members)),
            "1",
            str(chunks),
            f"{ms:.1f}",
            f"{base_ms / ms:.2f}",
            str(np.array_equal(out, reference)),
        )
        await host.close()
    console.print(table)
    await asyncio.gather(*(r.stop() for r in (single, single2, *three)))


# ---- cache ----------------------------------------------------------------------------------------


async def bench_cache(root: Path, requests: int) -> None:
    repo = ModelRepository(root)
    build_digits(repo, "digits_cache")
    artifact = repo.artifact("digits_cache", "1")
    config: ModelConfig = replace(repo.read_config("digits_cache"), cache=CacheConfig(enabled=True))
    x = np.load(root / "digits_cache" / "validation.npz")["X"].astype(np.float32)
    replicas = tuple(replica(f"c{i}", artifact, 64) for i in range(2))
    await asyncio.gather(*(r.start() for r in replicas))
    plane = DataPlane(SystemClock(), ServingMetrics())
    loaded = LoadedModel(config, (V1,), V1, MappingProxyType({V1: RunningVersion(V1, replicas)}))
    await plane.apply_catalog(CatalogSnapshot(loaded=MappingProxyType({ModelName("digits_cache"): loaded})))
    table = Table(title=f"DataPlane.infer, digits, one client, {requests} requests each")
    for column in ("rows", "kind", "p50 ms", "p99 ms", "answered from cache"):
        table.add_column(column)
    rng = np.random.default_rng(0)
    for rows in (1, 64):

        def request(data: Array) -> InferRequest:
            return InferRequest("digits_cache", [Tensor("input", "FP32", data.shape, data)])

        misses = [
            request((x[:rows] + rng.random((rows, 64), dtype=np.float32)).astype(np.float32)) for _ in range(requests)
        ]
        hit = request(x[:rows].copy())
        await plane.infer(hit)
        for kind, chosen in (("miss", misses), ("hit", [hit] * requests)):
            flags = []
            latencies = []
            for i in range(requests):
                t0 = time.perf_counter()
                response = await plane.infer(chosen[i])
                latencies.append(time.perf_counter() - t0)
                flags.append(response.parameters.get("cache") is True)
            p50, p99, _ = percentiles(latencies)
            table.add_row(str(rows), kind, f"{p50:.3f}", f"{p99:.3f}", f"{sum(flags)}/{requests}")
    console.print(table)
    await plane.apply_catalog(CatalogSnapshot())
    await asyncio.gather(*(r.stop() for r in replicas))


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=20000)
    parser.add_argument("--rate", type=float, default=3000.0, help="requests per second in the hedging runs")
    parser.add_argument("--repeat", type=int, default=3, help="runs of each hedging case")
    parser.add_argument("--parts", default="hedge,split,cache")
    parser.add_argument("--split-rows", type=int, default=4096)
    parser.add_argument("--width", type=int, default=256)
    args = parser.parse_args()
    parts = set(args.parts.split(","))
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "repo"
        root.mkdir()
        if "hedge" in parts:
            await bench_hedging(root, args.requests, args.rate, args.repeat)
        if "split" in parts:
            await bench_split(root, args.split_rows, repeats=15, width=args.width)
        if "cache" in parts:
            await bench_cache(root, 2000)


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        uvloop.run(main())  # as `sloserve serve` runs
