"""Model-less serving against fixed variants, under a mixed SLO workload stepping from 20% to 120% of capacity.

    python benchmarks/slo.py [--step-seconds 4] [--models digits,digits_wide] [--steps 0.2,0.4,0.6,0.8,1.0,1.2]
                             [--configs modelless,fixed:fp32,maxbatch] [--workdir DIR] [--no-simulate] [-v]

For each bundled model: register it (every recipe; kept and reused with --workdir), start
`sloserve serve` in its own process, measure the idle end-to-end latency (one connection,
fp32 pinned) and the capacity (closed loop, 64 connections, fp32 pinned, the fixed configurations'
requests; the median of three 2 s runs), then
replay open-loop Poisson load at each step of that capacity, half "tight" and half
"loose" queries, through the configurations below. After each step the capacity is read once more (one
2 s run): the summary shows each step's rate as a share of the readings before and after it, because this
machine's speed drifts by up to a fifth within one model's steps. The configurations:

* modelless   no version pinned: each query states its SLO; sloserve selects, batches
              by deadline and refuses at once what it cannot serve in time;
* fixed:V     every query pinned to variant V and sent without SLO parameters (what a
              hand-tuned deployment of one variant does);
* maxbatch    fp32 with plain max-batch + 2 ms timeout batching, no SLO parameters.

SLO classes: tight = 4x the idle end-to-end p99 over HTTP (at least 3 ms and 6x the
fastest variant's profiled p50), loose = 5x tight; accuracy floors from the profiles
(see classes_for). Each measurement follows a warm-up at the same rate on the same connections
(--warmup-seconds, not counted) that starts what the configuration needs, so no row pays a cold
start, nor the burst of its load generator's connections opening at once.

Latency is measured client-side from each query's scheduled send time (open loop), so a
queue that builds up counts. Attainment = queries answered 200 within their class's SLO /
queries sent (refusals and errors count as misses). Accuracy delivered = mean profiled
accuracy of the variants that answered. CPU-s per 1,000 queries = CPU time of the server
process and its workers during the step / queries sent x 1000; the server process's own
share per query is the front end's cost. Finally the same steps run in `sloserve simulate`
(the same policies, simulated replicas from the same profiles) at 1x and 100x the rate, and the
1x attainment is compared with the measured one: with a FIFO front end costing what each step
measured, and with an event-loop front end (a cost a request and a wake-up whenever it idled,
read from closed loops and a light open loop before the steps) whose cost per query the
simulator predicts.

The load generator runs on the same machine as the server: on a 2-core box its CPU competes
with the front end's, which is part of what the table shows.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter, defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import orjson
from rich.console import Console
from rich.table import Table

console = Console()
HERE = Path(__file__).resolve()
SPEED_SIGMA = 0.15
SPEED_WINDOW_MS = 100.0
"""The development VM's speed of the moment, for the simulator's ``--frontend-speed-sigma``: the server's
loop-thread CPU per query in 100 ms windows under steady open load varied with a log standard deviation of
0.18 within 3 s runs (`digits` model-less, 20% of capacity) and 0.12 (`digits_wide` pinned to `distilled`,
40%), neighbouring windows correlated 0.65-0.74, and 3 s runs' means apart by 0.04-0.11 more."""


@dataclass(frozen=True)
class SloClass:
    name: str
    latency_ms: float
    min_accuracy: float


# ---- the open-loop load generator (runs in its own process) ------------------------------------


async def _open_loop(
    port: int,
    path: str,
    rows: list[list[float]],
    classes: list[dict[str, Any]],
    rate: float,
    seconds: float,
    send_slo: bool,
    seed: int,
    connections: int = 64,
    warmup: float = 0.0,
    cpu_pid: int | None = None,
    stall_ms: float = 0.0,
    stall_every_ms: float = 0.0,
) -> tuple[list[tuple[int, int, float, str]], dict[str, list[str]], list[dict[int, float]], float, int]:
    """Poisson arrivals at ``rate`` for ``warmup`` + ``seconds``; the results of the queries scheduled in the
    last ``seconds``, and (with ``cpu_pid``) :func:`cpu_by_process` readings when those begin and once every
    answer is in, and how many of the measured answers the server itself judged late (``"slo_met": false``):
    what of the lateness it can see. With ``stall_ms`` and ``cpu_pid``, that process is stopped (SIGSTOP) for ``stall_ms`` halfway
    through the measured seconds while queries keep coming: the VM's hiccups, on cue; with ``stall_every_ms``
    too, at seeded random moments that far apart on average (exponential gaps), through the warm-up and the
    measured seconds: a noisy hour, on cue. The warm-up runs on the same connections: a measurement that opened its own would begin
    with all of them connecting at once, a burst the server then works off at the measured rate (near the
    knee that took seconds in some runs, and decided them)."""
    rng = np.random.default_rng(seed)
    n = int(rng.poisson(rate * (warmup + seconds)))
    times = np.sort(rng.uniform(0, warmup + seconds, n))
    which = rng.integers(0, len(classes), n)
    bodies = []
    for c in classes:
        params = {"latency_slo_ms": c["latency_ms"], "min_accuracy": c["min_accuracy"]} if send_slo else {}
        bodies.append([request_bytes(path, row, params) for row in rows[:32]])
    results: list[tuple[int, int, float, str]] = []
    errors: dict[str, list[str]] = {}
    seen_late = 0
    # time.perf_counter, not loop.time(): uvloop's is the millisecond at which the current turn of the
    # loop began, which reads an answer up to a millisecond early
    start = time.perf_counter() + 0.05
    next_index = 0

    async def connection() -> None:
        """Take the next query in schedule order, wait for its time, send it; latency counts from the
        scheduled time (or the send, if the timer fired early), so a query that waited for a free
        connection is late, as in any open loop."""
        nonlocal next_index, seen_late
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        while next_index < n:
            i = next_index
            next_index += 1
            scheduled = start + times[i]
            delay = scheduled - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            since = min(scheduled, time.perf_counter())  # a timer fires up to half a millisecond early
            counted = times[i] >= warmup
            try:
                writer.write(bodies[which[i]][i % len(bodies[which[i]])])
                head = await reader.readuntil(b"\r\n\r\n")
                length = int(re.search(rb"content-length: (\d+)", head, re.I).group(1))  # type: ignore[union-attr]
                body = await reader.readexactly(length)
                status = int(head[9:12])
                if counted:
                    ms = (time.perf_counter() - since) * 1e3
                    results.append((int(which[i]), status, ms, _version(body, status)))
                    seen_late += status == 200 and b'"slo_met":false' in body
                if counted and status != 200 and len(samples := errors.setdefault(str(status), [])) < 3:
                    samples.append(body.decode(errors="replace")[:300])
            except Exception:
                if counted:
                    results.append((int(which[i]), 0, (time.perf_counter() - since) * 1e3, ""))
        writer.close()

    cpu: list[dict[int, float]] = []
    own: list[float] = []

    async def read_cpu() -> None:
        await asyncio.sleep(max(0.0, start + warmup - time.perf_counter()))
        cpu.append(cpu_by_process(cpu_pid) if cpu_pid is not None else {})
        own.extend((time.process_time(), time.perf_counter()))

    async def stall() -> None:
        if not stall_ms or cpu_pid is None:
            return
        if stall_every_ms:
            gaps = np.random.default_rng(seed + 1).exponential(stall_every_ms / 1e3, n + 1)
            moments = [start + t for t in np.cumsum(gaps) if t < warmup + seconds]
        else:
            moments = [start + warmup + seconds / 2]
        for moment in moments:
            await asyncio.sleep(max(0.0, moment - time.perf_counter()))
            os.kill(cpu_pid, signal.SIGSTOP)
            try:
                await asyncio.sleep(stall_ms / 1e3)
            finally:
                os.kill(cpu_pid, signal.SIGCONT)

    await asyncio.gather(read_cpu(), stall(), *(connection() for _ in range(connections)))
    cpu.append(cpu_by_process(cpu_pid) if cpu_pid is not None else {})
    busy = (time.process_time() - own[0]) / max(time.perf_counter() - own[1], 1e-9) if own else 0.0
    return results, errors, cpu, busy, seen_late


_VERSION = re.compile(rb'"model_version":\s*"([^"]*)"')


def _version(body: bytes, status: int) -> str:
    """The variant that answered, without decoding the whole response (the generator shares the CPUs)."""
    match = _VERSION.search(body) if status == 200 else None
    return match.group(1).decode() if match else ""


def request_bytes(path: str, row: list[float], parameters: dict[str, Any]) -> bytes:
    """One query as the load generators send it: a row, its parameters (``{}``: none), a JSON content type."""
    tensor = {"name": "input", "shape": [1, len(row)], "datatype": "FP32", "data": row}
    body = orjson.dumps({"inputs": [tensor], "parameters": parameters})
    head = f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
    return head.encode() + body


async def _closed_loop(
    port: int,
    path: str,
    rows: list[list[float]],
    seconds: float,
    connections: int = 64,
    classes: list[dict[str, Any]] | None = None,
) -> tuple[float, float, float, int]:
    """(requests/s, p50 ms, p99 ms, requests) of ``connections`` clients each sending the next request on an
    answer: the open loop's requests (``rows`` in turn, each client from its own), without SLO parameters (what
    the fixed configurations' load sends, so a capacity is read with it) or with ``classes``' in turn. With one
    row and without the content type and the empty parameters it read 4% higher (28,200 against 27,000
    queries/s, `digits`, session 27)."""
    params = [{"latency_slo_ms": c["latency_ms"], "min_accuracy": c["min_accuracy"]} for c in classes or []] or [{}]
    requests = [request_bytes(path, row, params[i % len(params)]) for i, row in enumerate(rows[:32])]
    latencies: list[float] = []
    deadline = time.perf_counter() + seconds

    async def client(first: int) -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        sent_count = first
        while (sent := time.perf_counter()) < deadline:
            writer.write(requests[sent_count % len(requests)])
            sent_count += 1
            head = await reader.readuntil(b"\r\n\r\n")
            await reader.readexactly(int(re.search(rb"content-length: (\d+)", head, re.I).group(1)))  # type: ignore[union-attr]
            latencies.append((time.perf_counter() - sent) * 1e3)
        writer.close()

    started = time.perf_counter()
    await asyncio.gather(*(client(k) for k in range(connections)))
    p50, p99 = np.percentile(latencies, [50, 99])
    return len(latencies) / (time.perf_counter() - started), float(p50), float(p99), len(latencies)


def _generator_main(raw: str, out_path: str) -> None:
    import uvloop

    uvloop.install()
    args = json.loads(raw)
    if args["kind"] == "closed":
        closed = _closed_loop(
            args["port"], args["path"], args["rows"], args["seconds"], args["connections"], args.get("classes")
        )
        result: Any = asyncio.run(closed)
    else:
        results, errors, cpu, busy, seen_late = asyncio.run(
            _open_loop(
                args["port"],
                args["path"],
                args["rows"],
                args["classes"],
                args["rate"],
                args["seconds"],
                args["send_slo"],
                args["seed"],
                args["connections"],
                args.get("warmup", 0.0),
                args.get("cpu_pid"),
                args.get("stall_ms", 0.0),
                args.get("stall_every_ms", 0.0),
            )
        )
        cpu_pairs = [[[pid, seconds] for pid, seconds in reading.items()] for reading in cpu]
        result = {
            "results": results,
            "errors": errors,
            "cpu": cpu_pairs,
            "generator_busy": busy,
            "seen_late": seen_late,
        }
    # a file, not stdout: the event loop may leave stdout non-blocking, and a large write would be cut short
    Path(out_path).write_text(json.dumps(result))


def generate(**kwargs: Any) -> Any:
    """Run the load generator in its own process (it must not share the benchmark's CPU time slices). For an
    open loop, ``cpu`` is the ``cpu_pid`` readings as dicts (empty without one)."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "result.json"
        subprocess.run([sys.executable, str(HERE), "_gen", json.dumps(kwargs), str(out)], check=True)
        result = json.loads(out.read_text())
    if isinstance(result, dict) and "cpu" in result:
        result["cpu"] = [{int(pid): seconds for pid, seconds in reading} for reading in result["cpu"]]
    return result


# ---- the server and its CPU time ---------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def cpu_by_process(pid: int) -> dict[int, float]:
    """CPU seconds of a process and of its children (the workers), by pid, from /proc."""
    tick = os.sysconf("SC_CLK_TCK")
    seconds: dict[int, float] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        proc_pid, ppid = int(stat.parent.name), int(fields[1])
        if proc_pid == pid or ppid == pid:
            seconds[proc_pid] = (int(fields[11]) + int(fields[12])) / tick
    return seconds


def cpu_used(before: dict[int, float], after: dict[int, float]) -> float:
    """CPU seconds spent between two readings by the processes alive at the second (a worker that stopped
    in between takes its time with it; one that started counts from zero)."""
    return sum(t - before.get(p, 0.0) for p, t in after.items())


def start_server(
    repo: Path, home: Path, log: Path, extra_env: dict[str, str] | None = None, metrics_port: int | None = None
) -> tuple[subprocess.Popen[bytes], int]:
    """A ``sloserve serve`` of ``repo``, ready; its process and HTTP port (metrics on ``metrics_port`` if given)."""
    port = free_port()
    env = {**os.environ, "SLOSERVE_HOME": str(home), **(extra_env or {})}
    with log.open("ab") as out:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "sloserve.cli",
                "serve",
                "--repository",
                str(repo),
                "--log-level",
                "info",
                "--http-port",
                str(port),
                "--grpc-port",
                str(free_port()),
                "--metrics-port",
                str(metrics_port or free_port()),
            ],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    import httpx

    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/v2/health/ready").status_code == 200:
                return proc, port
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    proc.kill()
    raise RuntimeError(f"server did not start; see {log}")


_COUNTERS = re.compile(
    r"^sloserve_(event_loop_stalls|event_loop_stalled_seconds|execution_count|inference_count)_total(?:\{[^}]*\})? (\S+)$",
    re.MULTILINE,
)


def server_counters(metrics_port: int) -> dict[str, float]:
    """The server's counters now, summed over their labels (read before and after a run): ``event_loop_stalls``
    and ``event_loop_stalled_seconds`` (how often, and for how long in all, its host stopped it: a VM's
    hiccups), ``execution_count`` and ``inference_count`` (batches run, and the rows in them)."""
    import httpx

    sums: dict[str, float] = defaultdict(float)
    for name, value in _COUNTERS.findall(httpx.get(f"http://127.0.0.1:{metrics_port}/metrics").text):
        sums[name] += float(value)
    return sums


def loop_stalls(metrics_port: int) -> tuple[int, float]:
    """The server's ``sloserve_event_loop_stalls_total`` and ``..._stalled_seconds_total`` now."""
    counters = server_counters(metrics_port)
    return int(counters["event_loop_stalls"]), counters["event_loop_stalled_seconds"]


def stalls_between(before: tuple[int, float], after: tuple[int, float]) -> str:
    """What :func:`loop_stalls` read over a run: "stops / ms in all"."""
    return f"{after[0] - before[0]} / {(after[1] - before[1]) * 1e3:.0f} ms"


# ---- the experiment ----------------------------------------------------------------------------


def register(name: str, repo: Path, home: Path, seconds: float) -> tuple[list[Any], np.ndarray[Any, Any]]:
    """Register ``name`` (every recipe) unless ``repo`` already holds it; its ready variants and validation rows."""
    from sloserve.control.registration import RegisterOptions, Registrar
    from sloserve.profiling.profiler import ProfileSettings
    from sloserve.registry.db import RegistryDB
    from sloserve.registry.repository import ModelRepository
    from sloserve.runtime import demo
    from sloserve.variant import VariantStatus

    rows_file = repo.parent / f"{name}-rows.npy"
    with RegistryDB(home / "registry.sqlite3", repo) as db:
        if rows_file.exists() and db.model(name) is not None:
            records = db.variants(name)
            return [r for r in records if r.status is VariantStatus.READY], np.load(rows_file)
        builder = {"digits": demo.build_digits, "digits_wide": demo.build_digits_wide}[name]
        with tempfile.TemporaryDirectory() as scratch:
            report = builder(ModelRepository(Path(scratch)), name)
            x = np.load(report.validation_path)["X"].astype(np.float32)
            registrar = Registrar(
                ModelRepository(repo), db, profile_settings=ProfileSettings(seconds_per_batch=seconds)
            )
            records = asyncio.run(
                registrar.register(report.model_path, name, RegisterOptions(validation=report.validation_path))
            )
    # the plain max-batch + timeout baseline: fp32 as its own model, 2 ms batching window
    fp32 = next(r for r in records if r.id == "fp32")
    ModelRepository(repo).write_model(_maxbatch_config(repo, name), Path(fp32.artifact))
    np.save(rows_file, x[:32])
    return [r for r in records if r.status is VariantStatus.READY], x


def _maxbatch_config(repo: Path, name: str) -> Any:
    from dataclasses import replace

    from sloserve.model_config import BatchingConfig
    from sloserve.registry.repository import ModelRepository

    config = ModelRepository(repo).read_config(name)
    return replace(
        config, name=f"{name}_maxbatch", batching=BatchingConfig(max_queue_delay_us=2000, max_queue_size=4096)
    )


def classes_for(records: list[Any], idle_p99_ms: float, tight_ms: float | None = None) -> list[SloClass]:
    """Tight: 4x the idle end-to-end p99 over HTTP (never under 3 ms or 6x the fastest variant's profiled p50);
    loose: 5x that. Accuracy floors from the profiles: the tight class takes the median variant's accuracy
    (at most fp32's - 0.02), the loose one fp32's - 0.01."""
    fastest = min(r.profile.latency_ms[1].p50_ms for r in records)
    accuracies = sorted(r.profile.accuracy for r in records if r.profile.accuracy is not None)
    reference = next(r.profile.accuracy for r in records if r.id == "fp32")
    median = accuracies[len(accuracies) // 2]
    tight = tight_ms if tight_ms is not None else round(max(3.0, 4 * idle_p99_ms, 6 * fastest), 1)
    return [
        SloClass("tight", tight, round(min(median, reference - 0.02), 4)),
        SloClass("loose", round(5 * tight, 1), round(reference - 0.01, 4)),
    ]


def run_model(name: str, base: Path, args: argparse.Namespace) -> list[tuple[str, float, dict[str, Any]]]:
    repo, home = base / "repo", base / "home"
    with console.status(f"registering {name}"):
        records, x = register(name, repo, home, args.profile_seconds)
    accuracy = {r.id: r.profile.accuracy for r in records}
    log = base / f"{name}-server.log"
    metrics_port = free_port()
    proc, port = start_server(repo, home, log, metrics_port=metrics_port)
    rows = [row.tolist() for row in x[:32]]
    fp32_path = f"/v2/models/{name}/versions/fp32/infer"
    _, idle_p50, idle_p99, _ = generate(kind="closed", port=port, path=fp32_path, rows=rows, seconds=2, connections=1)
    classes = classes_for(records, idle_p99, args.tight_ms)
    console.print(
        f"[bold]{name}[/]: idle end-to-end over HTTP (fp32, one connection) p50 {idle_p50:.2f} ms, p99 "
        f"{idle_p99:.2f} ms; classes "
        + ", ".join(f"{c.name} ≤{c.latency_ms} ms, acc ≥{c.min_accuracy}" for c in classes)
    )
    out: list[tuple[str, float, dict[str, Any]]] = []
    configs: list[tuple[str, str, bool]] = [("modelless", f"/v2/models/{name}/infer", True)]
    configs += [(f"fixed:{r.id}", f"/v2/models/{name}/versions/{r.id}/infer", False) for r in records]
    configs.append(("maxbatch", f"/v2/models/{name}_maxbatch/infer", False))
    if args.configs:
        configs = [c for c in configs if c[0] in args.configs]
    try:
        # the median of three: the VM's speed swings by 10-15% within minutes, and one lucky reading (18,695
        # against 16,000-17,500 req/s measured around it) makes every step a heavier load than it says
        loop: dict[str, float] = {}
        closed = [read_capacity(port, fp32_path, rows, proc.pid) for _ in range(3)]
        readings = sorted(rate for rate, _ in closed)
        capacity = readings[1]
        console.print(
            f"capacity (closed loop, 64 connections, fp32 pinned, median of "
            f"{', '.join(f'{r:,.0f}' for r in readings)}): {capacity:,.0f} req/s"
        )
        if args.simulate:  # the simulator's event-loop front end, from these closed loops and a light open one
            loop = calibrate_loop(port, name, rows, classes, capacity, min(ms for _, ms in closed), proc.pid)
            console.print(
                f"the server's event loop: ~{loop['request_ms'] * 1e3:.1f} µs a model-less request with 64 "
                f"connections, {loop['light_ms'] * 1e3:.1f} at {LIGHT_LOAD:.0%} of capacity: a "
                f"~{loop['wake_ms'] * 1e3:.1f} µs wake-up (fp32 pinned: {loop['closed_ms'] * 1e3:.1f} and "
                f"{loop['pinned_light_ms'] * 1e3:.1f} µs, a ~{loop['pinned_wake_ms'] * 1e3:.1f} µs wake-up)"
            )
        # the machine's speed drifts during a run (by 20% within one model's steps, session 17): one more reading
        # after each step shows how much of the capacity each step's rate really was
        capacities = {"start": capacity}
        for step in args.steps:
            pooled: dict[str, dict[str, Any]] = {}
            for rep in range(args.repeat):  # repeats interleave the configurations: drift hits all alike
                # and each repeat starts at a different configuration: none always runs first after a step
                # change, or right after the same neighbour (whose variants the autoscaler then stops)
                shift = (rep * len(configs)) // max(args.repeat, 1)
                for label, path, send_slo in configs[shift:] + configs[:shift]:
                    load = dict(
                        kind="open",
                        port=port,
                        path=path,
                        rows=rows,
                        connections=args.connections,
                        rate=step * capacity,
                        send_slo=send_slo,
                        classes=[c.__dict__ for c in classes],
                    )
                    with console.status(f"{name} {label} at {step:.0%} (run {rep + 1}/{args.repeat})"):
                        stalls_before = loop_stalls(metrics_port)
                        measured = generate(  # the warm-up starts what this configuration needs; not counted
                            **load,
                            warmup=args.warmup_seconds,
                            seconds=args.step_seconds,
                            seed=int(step * 100) + rep,
                            cpu_pid=proc.pid,
                        )
                        before, after = measured["cpu"]
                    results = measured["results"]
                    if label == "maxbatch":  # its own model serving the fp32 artifact as version 1
                        results = [[c, s, ms, "fp32" if s == 200 else v] for c, s, ms, v in results]
                    run = summarize_step(results, classes, dict(accuracy), cpu_used(before, after))
                    if args.verbose:  # the host's stops over the run (warm-up too): a bad run's usual cause
                        stalled = stalls_between(stalls_before, loop_stalls(metrics_port))
                        console.print(
                            f"{label} at {step:.0%}, run {rep + 1}: {run} {measured['errors']} stalls {stalled} "
                            f"generator busy {measured['generator_busy']:.0%}"
                        )
                    acc = pooled.setdefault(
                        label, {"results": [], "cpu": 0.0, "front": 0.0, "runs": [], "cpu_runs": []}
                    )
                    acc["results"] += results
                    acc["cpu"] += cpu_used(before, after)
                    acc["front"] += after[proc.pid] - before[proc.pid]
                    acc["runs"].append(run["attainment"])
                    acc["cpu_runs"].append(run["cpu_s_per_1k"])
            capacities[step] = read_capacity(port, fp32_path, rows)[0]
            if args.verbose:
                console.print(
                    f"capacity after the {step:.0%} step: {capacities[step]:,.0f} req/s "
                    f"({step * capacity / capacities[step]:.0%} of it)"
                )
            for label, _, _ in configs:
                acc = pooled[label]
                summary = summarize_step(acc["results"], classes, dict(accuracy), acc["cpu"])
                summary["frontend_ms"] = acc["front"] / max(summary["sent"], 1) * 1e3
                summary["worker_cpu_s_per_1k"] = (acc["cpu"] - acc["front"]) / max(summary["sent"], 1) * 1e3
                summary["runs"] = acc["runs"]
                summary["cpu_runs"] = acc["cpu_runs"]
                out.append((label, step, summary))
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(60)
    print_table(name, out, classes, capacities)
    if args.simulate:
        simulate_compare(name, repo, home, capacity, classes, args, out, loop)
    console.print(f"server log: {log}")
    return out


def summarize_step(
    results: list[list[Any]], classes: list[SloClass], accuracy: dict[str, float], cpu_s: float
) -> dict[str, Any]:
    sent = len(results)
    met = 0
    for c, status, ms, version in results:
        klass = classes[c]
        if status == 200 and ms <= klass.latency_ms and accuracy.get(version, 0.0) >= klass.min_accuracy:
            met += 1
    served = [r for r in results if r[1] == 200]
    lat = np.array([r[2] for r in served]) if served else np.array([np.nan])
    delivered = [accuracy[v] for _, _, _, v in served if v in accuracy]
    return {
        "sent": sent,
        "attainment": met / sent if sent else float("nan"),
        "refused": sum(1 for r in results if r[1] == 429) / max(sent, 1),
        "accuracy": float(np.mean(delivered)) if delivered else float("nan"),
        "p99_ms": float(np.nanpercentile(lat, 99)),
        "cpu_s_per_1k": cpu_s / max(sent, 1) * 1000,
        "variants": {v: n for v, n in Counter(r[3] for r in served).most_common()},
        "p50_ms": float(np.nanpercentile(lat, 50)),
        "misses": _misses(results, classes, accuracy),
    }


def _misses(results: list[list[Any]], classes: list[SloClass], accuracy: dict[str, float]) -> dict[str, int]:
    """Why queries missed, per class: late (answered after the SLO), refused (429), dropped (504), other."""
    out: Counter[str] = Counter()
    for c, status, ms, version in results:
        klass = classes[c]
        if status == 200:
            if ms > klass.latency_ms:
                out[f"{klass.name}:late"] += 1
            elif accuracy.get(version, 0.0) < klass.min_accuracy:
                out[f"{klass.name}:inaccurate"] += 1
        else:
            out[f"{klass.name}:{status}"] += 1
    return dict(out)


def read_capacity(
    port: int,
    path: str,
    rows: list[list[float]],
    pid: int | None = None,
    classes: list[dict[str, Any]] | None = None,
) -> tuple[float, float]:
    """Requests/s of a 2 s closed loop (64 connections, one row a request, :func:`_closed_loop`) on ``path``,
    and with ``pid`` the server process's own CPU ms a request (else nan)."""
    before = cpu_by_process(pid).get(pid, 0.0) if pid is not None else math.nan
    rate, _, _, count = generate(
        kind="closed", port=port, path=path, rows=rows, seconds=2, connections=64, classes=classes
    )
    after = cpu_by_process(pid).get(pid, 0.0) if pid is not None else math.nan
    return float(rate), (after - before) * 1e3 / max(count, 1)


LIGHT_LOAD = 0.1
"""The share of capacity at which :func:`calibrate_loop` reads what a wake-up costs (most requests wake the loop)."""


def calibrate_loop(
    port: int, name: str, rows: list[list[float]], classes: list[SloClass], capacity: float, closed_ms: float, pid: int
) -> dict[str, float]:
    """The simulator's event-loop front end (``sloserve simulate --frontend-ms C --frontend-wake-ms W``),
    measured before the steps it then predicts (the FIFO front end is given each step's own cost).

    C is what a model-less request costs the server's process where the loop never idles: a closed loop of 64
    connections sending the classes' requests (nothing is held on a saturated loop). W is the wake-up that makes
    an open loop of model-less requests at :data:`LIGHT_LOAD` of ``capacity`` (2 s after a 1 s warm-up; most
    requests wake the loop) cost what it did over C, the simulator's own loop (seeded Poisson arrivals at that
    rate) fitted to it. The simulated loop does not see the batches model-less holds for, so W carries what they
    save: where wake-ups are most of a query's cost (the light steps) holds are on, and where the loop never
    idles neither matters. The same fit to `fp32` pinned (``closed_ms`` a request with 64 connections, a batch
    of one a wake-up, as session 28 calibrated) is ``pinned_wake_ms``: it overstated model-less's cost at
    20-40% of `digits` by 14-33% (sessions 28-29)."""
    modelless_ms = read_capacity(port, f"/v2/models/{name}/infer", rows, pid, [c.__dict__ for c in classes])[1]
    rate = LIGHT_LOAD * capacity
    light_ms = _light_ms(port, f"/v2/models/{name}/infer", rows, classes, rate, True, pid)
    pinned_ms = _light_ms(port, f"/v2/models/{name}/versions/fp32/infer", rows, classes, rate, False, pid)
    return {
        "request_ms": modelless_ms,
        "wake_ms": _fit_wake_ms(rate, modelless_ms, light_ms),
        "light_ms": light_ms,
        "closed_ms": closed_ms,
        "pinned_wake_ms": _fit_wake_ms(rate, closed_ms, pinned_ms),
        "pinned_light_ms": pinned_ms,
    }


def _light_ms(
    port: int, path: str, rows: list[list[float]], classes: list[SloClass], rate: float, send_slo: bool, pid: int
) -> float:
    """The server process's CPU ms a request under a seeded open loop at ``rate`` (2 s after a 1 s warm-up)."""
    measured = generate(
        kind="open",
        port=port,
        path=path,
        rows=rows,
        connections=64,
        rate=rate,
        send_slo=send_slo,
        classes=[c.__dict__ for c in classes],
        warmup=1.0,
        seconds=2.0,
        seed=7,
        cpu_pid=pid,
    )
    before, after = measured["cpu"]
    return float((after[pid] - before[pid]) * 1e3 / max(len(measured["results"]), 1))


def _fit_wake_ms(rate: float, request_ms: float, light_ms: float) -> float:
    """The wake-up with which the simulator's loop, ``request_ms`` a request, costs ``light_ms`` a request under
    seeded Poisson arrivals at ``rate`` (2 s of them), by bisection."""
    from sloserve.sim.frontend import frontend_cycles_ms

    arrivals = np.cumsum(np.random.default_rng(7).exponential(1e3 / rate, int(rate * 2)))
    services = np.full(len(arrivals), request_ms)

    def mean_cost(wake_ms: float) -> float:
        return float(frontend_cycles_ms(arrivals, services, np.full(len(arrivals), wake_ms))[1].mean())

    low, high = 0.0, max(0.0, light_ms - request_ms) * 4
    if mean_cost(high) < light_ms:  # a cost no wake-up explains: the most the search allows
        low = high
    for _ in range(40):  # the mean cost grows with the wake-up's: bisect
        middle = (low + high) / 2
        low, high = (middle, high) if mean_cost(middle) < light_ms else (low, middle)
    return (low + high) / 2


def step_capacity(capacities: dict[Any, float], step: float) -> str:
    """The step's rate as a share of the capacity read before it (at the start or after the step before) and
    after it: the load it really was, on a machine whose speed drifts."""
    steps = [s for s in capacities if s != "start"]
    if step not in capacities:
        return "-"
    at = steps.index(step)
    before = capacities["start"] if at == 0 else capacities[steps[at - 1]]
    rate = step * capacities["start"]
    return f"{rate / before:.0%} / {rate / capacities[step]:.0%}"


def reached_runs(result: dict[str, Any]) -> str:
    """In how many of a cell's runs the configuration reached 99% on its own: a pooled cell at 99% can be one
    good run and one near miss, and the cell that reaches a step among nine configurations can be the lucky
    one (at 80% of `digits`' capacity, 8 runs each in one hour, session 29: every configuration 0-2 of 8)."""
    return f"{sum(a >= 0.99 for a in result['runs'])}/{len(result['runs'])}"


def print_table(
    name: str,
    out: list[tuple[str, float, dict[str, Any]]],
    classes: list[SloClass],
    capacities: dict[Any, float] | None = None,
) -> None:
    table = Table(
        title=f"{name}: SLO attainment (met / sent; a query meets its SLO when answered within its latency "
        "by a variant at least as accurate as it asked); CPU-s per 1,000 queries, all / the workers' share"
    )
    columns = ["load", "config", "sent", "attainment", "refused", "accuracy", "p99 ms", "CPU-s/1k", "workers"]
    repeated = any(len(r["runs"]) > 1 for _, _, r in out)
    # a run's CPU per query drifts by up to a third on a small shared machine: the range shows which
    # differences in cost between configurations are larger than that
    for col in [*columns, "runs (min-max)", "runs ≥ 99%", "CPU-s/1k runs"] if repeated else columns:
        table.add_column(col, justify="left" if col == "config" else "right")
    for label, step, r in out:
        table.add_row(
            f"{step:.0%}",
            label,
            str(r["sent"]),
            f"{r['attainment']:.2%}",
            f"{r['refused']:.1%}",
            f"{r['accuracy']:.4f}",
            f"{r['p99_ms']:.1f}",
            f"{r['cpu_s_per_1k']:.3f}",
            f"{r['worker_cpu_s_per_1k']:.3f}",
            *(
                [
                    f"{min(r['runs']):.1%}-{max(r['runs']):.1%}",
                    reached_runs(r),
                    f"{min(r['cpu_runs']):.3f}-{max(r['cpu_runs']):.3f}",
                ]
                if repeated
                else []
            ),
        )
    console.print(table)
    summary = Table(title=f"{name}: per load step, configurations reaching ≥ 99% attainment")
    columns = ["load", "reaching 99%", "cheapest of those", "modelless attainment", "modelless CPU-s/1k", "the goal"]
    if capacities:
        columns.insert(1, "of capacity read before / after")
    if repeated:
        columns.append("runs ≥ 99%: modelless / the most of any other")
    for col in columns:
        summary.add_column(col)
    for step in sorted({s for _, s, _ in out}):
        rows = [(label, r) for label, s, r in out if s == step]
        ok = [(label, r) for label, r in rows if r["attainment"] >= 0.99]
        cheapest = min(ok, key=lambda lr: lr[1]["cpu_s_per_1k"])[0] if ok else "-"
        ml = next(r for label, r in rows if label == "modelless")
        others = [(label, r) for label, r in rows if label != "modelless"]
        most = max(others, key=lambda lr: sum(a >= 0.99 for a in lr[1]["runs"]), default=None)
        summary.add_row(
            f"{step:.0%}",
            *([step_capacity(capacities, step)] if capacities else []),
            ", ".join(label for label, _ in ok) or "none",
            cheapest,
            f"{ml['attainment']:.2%}",
            f"{ml['cpu_s_per_1k']:.3f}",
            goal(ok),
            *([f"{reached_runs(ml)} / " + (f"{reached_runs(most[1])} {most[0]}" if most else "-")] if repeated else []),
        )
    console.print(summary)


def goal(reaching: list[tuple[str, dict[str, Any]]]) -> str:
    """The issue's goal at one step, given the configurations that reached 99% there: model-less reaches it at
    the lowest cost of those (met), reaches it dearer (by how much), or misses it; none reaching asks nothing."""
    if not reaching:
        return "(nobody reached)"
    costs = {label: r["cpu_s_per_1k"] for label, r in reaching}
    cheapest = min(costs, key=costs.__getitem__)
    if "modelless" not in costs:
        return "missed: model-less below 99%"
    if cheapest == "modelless" or costs["modelless"] <= costs[cheapest]:
        return "met"
    dearer = costs["modelless"] / costs[cheapest] - 1
    if dearer < 0.005:  # what the table prints to three decimals cannot tell them apart
        return f"reached, level with {cheapest}"
    return f"reached, {dearer:.0%} dearer than {cheapest}"


def simulate_compare(
    name: str,
    repo: Path,
    home: Path,
    capacity: float,
    classes: list[SloClass],
    args: argparse.Namespace,
    out: list[tuple[str, float, dict[str, Any]]],
    loop: dict[str, float],
) -> None:
    """The same steps in the simulator against the measured model-less attainment.

    Two front ends. The FIFO one costs what the server's own process spent per query in that step (measured in
    the step it then simulates: it falls as load rises and the loop idles less). The event loop
    (``--frontend-wake-ms``) costs what :func:`calibrate_loop` measured before the steps: a cost a request and a
    wake-up whenever it idled, so what a query costs at each step is the simulator's prediction, printed beside
    the measured one. The loop runs at 1x on a steady machine and on one whose speed varies as this one's does
    (``--sim-speed-sigma`` per ``--sim-speed-window-ms``), and at 100x the rate over 100 loops and 100x the CPUs."""
    modelless = sorted((s, r) for label, s, r in out if label == "modelless")
    if not modelless:
        return
    table = Table(
        title=f"{name}: simulator vs measurement (model-less); the event loop: {loop['request_ms'] * 1e3:.1f} µs a "
        f"request, {loop['wake_ms'] * 1e3:.1f} µs a wake-up"
    )
    columns = (
        "load",
        "µs/query measured",
        "µs/query loop",
        "measured",
        "FIFO 1x (measured µs)",
        "loop 1x",
        f"loop 1x, speed sigma {args.sim_speed_sigma:g}",
        "loop 100x",
    )
    for col in columns:
        table.add_column(col, justify="right")
    env = {**os.environ, "SLOSERVE_HOME": str(home)}
    slo_flags = [f"--slo={c.name}:{c.latency_ms}:{c.min_accuracy}:0.5" for c in classes]
    for step, measured in modelless:
        frontend_ms = measured["frontend_ms"]
        sims: list[str] = []
        predicted_us = "-"
        for scale, front, wake_ms, sigma in (
            (1, frontend_ms, 0.0, 0.0),
            (1, loop["request_ms"], loop["wake_ms"], 0.0),
            (1, loop["request_ms"], loop["wake_ms"], args.sim_speed_sigma),
            (100, loop["request_ms"], loop["wake_ms"], 0.0),
        ):
            cmd = [
                sys.executable,
                "-m",
                "sloserve.cli",
                "simulate",
                "--model",
                name,
                "--repository",
                str(repo),
                "--rate",
                str(step * capacity * scale),
                "--duration",
                str(args.step_seconds),
                "--cpus",
                str(2 * scale),
                "--frontend-ms",
                str(front),
                "--frontend-wake-ms",
                str(wake_ms),
                "--frontend-workers",
                str(scale),
                "--frontend-speed-sigma",
                str(sigma),
                "--frontend-speed-window-ms",
                str(args.sim_speed_window_ms),
                "--json",
                "--seed",
                "1",
                *slo_flags,
            ]
            done = subprocess.run(cmd, capture_output=True, text=True, env=env)
            if done.returncode != 0:
                sims.append(f"error: {done.stderr.strip()[-80:]}")
                continue
            report = json.loads(done.stdout)
            sims.append(f"{report['attainment']:.2%}")
            if scale == 1 and wake_ms > 0 and sigma == 0:
                predicted_us = f"{report['frontend_ms_per_query'] * 1e3:.1f}"
        table.add_row(f"{step:.0%}", f"{frontend_ms * 1e3:.1f}", predicted_us, f"{measured['attainment']:.2%}", *sims)
    console.print(table)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default="digits,digits_wide")
    parser.add_argument("--steps", default="0.2,0.4,0.6,0.8,1.0,1.2", type=lambda s: [float(x) for x in s.split(",")])
    parser.add_argument("--step-seconds", type=float, default=4.0)
    parser.add_argument(
        "--repeat",
        type=int,
        default=1,
        help="runs per configuration and step, interleaved; the table pools them (near the knee one run is noisy)",
    )
    parser.add_argument(
        "--warmup-seconds", type=float, default=1.0, help="load at the step's rate before each measurement, not counted"
    )
    parser.add_argument("--profile-seconds", type=float, default=0.2)
    parser.add_argument(
        "--connections",
        type=int,
        default=256,
        help="open-loop connections (a query waits for a free one, so too few hide overload from the server)",
    )
    parser.add_argument(
        "--tight-ms", type=float, default=None, help="the tight class's SLO (default: from the idle latency measured)"
    )
    parser.add_argument(
        "--configs", type=lambda s: set(s.split(",")), default=None, help="e.g. modelless,fixed:fp32,maxbatch"
    )
    parser.add_argument("--workdir", type=Path, default=None, help="keep (and reuse) registrations and logs here")
    parser.add_argument("--no-simulate", dest="simulate", action="store_false")
    parser.add_argument(
        "--sim-speed-sigma",
        type=float,
        default=SPEED_SIGMA,
        help=f"the simulated machine's speed variation (lognormal sigma per window; default {SPEED_SIGMA}, this VM's)",
    )
    parser.add_argument(
        "--sim-speed-window-ms",
        type=float,
        default=SPEED_WINDOW_MS,
        help=f"how long the simulated machine keeps one speed (default {SPEED_WINDOW_MS:g})",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="print each step's summary as it ends")
    args = parser.parse_args()
    for name in args.models.split(","):
        if args.workdir is not None:
            (args.workdir / name).mkdir(parents=True, exist_ok=True)
            run_model(name, args.workdir / name, args)
            continue
        with tempfile.TemporaryDirectory() as tmp:
            run_model(name, Path(tmp), args)


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "_gen":
        _generator_main(sys.argv[2], sys.argv[3])
    else:
        main()
