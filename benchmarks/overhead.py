"""Serving overhead: raw onnxruntime in-process against the served model.

    python benchmarks/overhead.py [--duration 8] [--models digits,wide_mlp] [--concurrency 1,8,64]

Starts `sloserve serve` in its own process on a temporary repository holding the
demo `digits` MLP (tiny: the server's own overhead dominates) and a wide MLP
built in code (4 x 2048 units: the engine dominates). The load comes from another
process: `wrk` (closed loop, one connection per concurrent client) for HTTP JSON
and binary when it is installed (`apt-get install wrk`), else a Python asyncio
client; a grpc.aio client for gRPC. One row per request. Prints req/s, p50, p99
and the ratio served / raw onnxruntime with the same intra-op thread count.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import orjson
from rich.console import Console
from rich.table import Table

console = Console()
HERE = Path(__file__).resolve()


# ---- models -----------------------------------------------------------------------------------


def build_repository(root: Path, threads: int) -> dict[str, np.ndarray[Any, Any]]:
    """Both models, each with one sample row; returns the sample rows by model."""
    from sloserve.registry.repository import ModelRepository
    from sloserve.runtime.demo import build_digits, build_wide_mlp, wide_mlp_config

    repo = ModelRepository(root)
    build_digits(repo)
    onnx_path = root / "wide_mlp.onnx.tmp"
    build_wide_mlp(onnx_path)
    config = wide_mlp_config()
    repo.write_model(config, onnx_path)
    onnx_path.unlink()
    for name in ("digits", "wide_mlp"):
        path = root / name / "config.json"
        raw = json.loads(path.read_text())
        raw["intra_op_threads"] = threads
        path.write_text(json.dumps(raw, indent=2))
    digits_row = np.load(root / "digits" / "validation.npz")["X"][:1].astype(np.float32)
    wide_row = np.random.default_rng(0).standard_normal((1, 256)).astype(np.float32)
    return {"digits": digits_row, "wide_mlp": wide_row}


def raw_throughput(
    path: Path, row: np.ndarray[Any, Any], threads: int, seconds: float
) -> dict[int, tuple[float, float]]:
    """rows/s and median ms per call at each batch size, in this process."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    results = {}
    for batch in (1, 2, 4, 8, 16, 32, 64):
        x = np.repeat(row, batch, axis=0)
        session.run(None, {name: x})
        times = []
        deadline = time.perf_counter() + seconds / 7
        while time.perf_counter() < deadline or len(times) < 5:
            t0 = time.perf_counter()
            session.run(None, {name: x})
            times.append(time.perf_counter() - t0)
        results[batch] = (batch * len(times) / sum(times), statistics.median(times) * 1e3)
    return results


# ---- request bodies ---------------------------------------------------------------------------


def json_body(row: np.ndarray[Any, Any]) -> tuple[bytes, dict[str, str]]:
    body = {"inputs": [{"name": "input", "shape": list(row.shape), "datatype": "FP32", "data": row.ravel().tolist()}]}
    return orjson.dumps(body), {"Content-Type": "application/json"}


def binary_body(row: np.ndarray[Any, Any]) -> tuple[bytes, dict[str, str]]:
    raw = row.astype(np.float32).tobytes()
    header = orjson.dumps(
        {
            "inputs": [
                {
                    "name": "input",
                    "shape": list(row.shape),
                    "datatype": "FP32",
                    "parameters": {"binary_data_size": len(raw)},
                }
            ],
            "parameters": {"binary_data_output": True},
        }
    )
    return header + raw, {
        "Content-Type": "application/octet-stream",
        "Inference-Header-Content-Length": str(len(header)),
    }


# ---- load generators (each runs in its own process) --------------------------------------------

WRK_LUA = """
local f = assert(io.open(os.getenv("BODY_FILE"), "rb"))
wrk.method = "POST"
wrk.body = f:read("*all")
f:close()
for k, v in string.gmatch(os.getenv("BODY_HEADERS"), "([^|]+)=([^|]+)") do wrk.headers[k] = v end
"""


def _ms(text: str) -> float:
    value, unit = re.match(r"([\d.]+)(\w+)", text).groups()  # type: ignore[union-attr]
    return float(value) * {"us": 1e-3, "ms": 1.0, "s": 1e3, "m": 6e4}[unit]


def run_wrk(url: str, body: bytes, headers: dict[str, str], concurrency: int, seconds: float) -> dict[str, float]:
    with tempfile.TemporaryDirectory() as tmp:
        body_file, script = Path(tmp) / "body", Path(tmp) / "post.lua"
        body_file.write_bytes(body)
        script.write_text(WRK_LUA)
        env = {
            **os.environ,
            "BODY_FILE": str(body_file),
            "BODY_HEADERS": "|".join(f"{k}={v}" for k, v in headers.items()),
        }
        out = subprocess.run(
            ["wrk", "-t1", f"-c{concurrency}", f"-d{max(1, round(seconds))}s", "--latency", "-s", str(script), url],
            capture_output=True,
            text=True,
            env=env,
            check=True,
        ).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    p50 = _ms(re.search(r"50%\s+(\S+)", out).group(1))  # type: ignore[union-attr]
    p99 = _ms(re.search(r"99%\s+(\S+)", out).group(1))  # type: ignore[union-attr]
    bad = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    errors = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    failed = (int(bad.group(1)) if bad else 0) + (sum(int(g) for g in errors.groups()) if errors else 0)
    return {"rps": rps, "p50": p50, "p99": p99, "errors": failed}


async def _python_http_load(
    host: str, port: int, path: str, body: bytes, headers: dict[str, str], concurrency: int, seconds: float
) -> dict[str, float]:
    head = f"POST {path} HTTP/1.1\r\nHost: {host}\r\nContent-Length: {len(body)}\r\n"
    head += "".join(f"{k}: {v}\r\n" for k, v in headers.items())
    request = head.encode() + b"\r\n" + body
    latencies: list[float] = []
    errors = 0
    deadline = time.perf_counter() + seconds

    async def client() -> None:
        nonlocal errors
        reader, writer = await asyncio.open_connection(host, port)
        while time.perf_counter() < deadline:
            t0 = time.perf_counter()
            writer.write(request)
            status_and_headers = await reader.readuntil(b"\r\n\r\n")
            length = int(re.search(rb"content-length: (\d+)", status_and_headers, re.I).group(1))  # type: ignore[union-attr]
            await reader.readexactly(length)
            latencies.append(time.perf_counter() - t0)
            if not status_and_headers.startswith(b"HTTP/1.1 200"):
                errors += 1
        writer.close()

    started = time.perf_counter()
    await asyncio.gather(*(client() for _ in range(concurrency)))
    return _summary(latencies, time.perf_counter() - started, errors)


async def _grpc_load(
    target: str, model: str, row: np.ndarray[Any, Any], concurrency: int, seconds: float
) -> dict[str, float]:
    import grpc

    from sloserve.protocol.generated import inference_pb2 as pb

    request = pb.ModelInferRequest(model_name=model)
    request.inputs.add(name="input", datatype="FP32", shape=list(row.shape))
    request.raw_input_contents.append(row.astype(np.float32).tobytes())
    payload = request.SerializeToString()
    latencies: list[float] = []
    errors = 0
    deadline = time.perf_counter() + seconds
    async with grpc.aio.insecure_channel(target) as channel:
        call = channel.unary_unary(
            "/inference.GRPCInferenceService/ModelInfer",
            request_serializer=lambda b: b,
            response_deserializer=lambda b: b,
        )

        async def client() -> None:
            nonlocal errors
            while time.perf_counter() < deadline:
                t0 = time.perf_counter()
                try:
                    await call(payload)
                except grpc.RpcError:
                    errors += 1
                latencies.append(time.perf_counter() - t0)

        started = time.perf_counter()
        await asyncio.gather(*(client() for _ in range(concurrency)))
        return _summary(latencies, time.perf_counter() - started, errors)


def _summary(latencies: list[float], elapsed: float, errors: int) -> dict[str, float]:
    ms = np.array(latencies) * 1e3
    return {
        "rps": len(latencies) / elapsed,
        "p50": float(np.percentile(ms, 50)),
        "p99": float(np.percentile(ms, 99)),
        "errors": errors,
    }


def load_subprocess(kind: str, **kwargs: Any) -> dict[str, float]:
    """Run a Python load generator in its own process (so it never shares the server's GIL)."""
    out = subprocess.run(
        [sys.executable, str(HERE), "_load", kind, json.dumps(kwargs)], capture_output=True, text=True, check=True
    ).stdout
    return json.loads(out.strip().splitlines()[-1])  # type: ignore[no-any-return]


def _load_main(kind: str, raw: str) -> None:
    args = json.loads(raw)
    row = np.array(args.pop("row"), dtype=np.float32)
    if kind == "grpc":
        result = asyncio.run(_grpc_load(args["target"], args["model"], row, args["concurrency"], args["seconds"]))
    else:
        body, headers = (json_body if kind == "json" else binary_body)(row)
        result = asyncio.run(
            _python_http_load(
                "127.0.0.1", args["port"], args["path"], body, headers, args["concurrency"], args["seconds"]
            )
        )
    print(json.dumps(result))


# ---- the experiment ---------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_server(root: Path) -> tuple[subprocess.Popen[bytes], dict[str, int]]:
    ports = {"http": free_port(), "grpc": free_port(), "metrics": free_port()}
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "sloserve.cli",
            "serve",
            "--repository",
            str(root),
            "--log-level",
            "warning",
            "--http-port",
            str(ports["http"]),
            "--grpc-port",
            str(ports["grpc"]),
            "--metrics-port",
            str(ports["metrics"]),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    import httpx

    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"http://127.0.0.1:{ports['http']}/v2/health/ready").status_code == 200:
                return proc, ports
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    proc.kill()
    raise RuntimeError("the server did not become ready")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--duration", type=float, default=8.0, help="seconds per load point")
    parser.add_argument("--models", default="digits,wide_mlp")
    parser.add_argument("--protocols", default="json,binary,grpc")
    parser.add_argument("--concurrency", default="1,8,64")
    parser.add_argument("--threads", type=int, default=1, help="intra-op threads, raw and served alike")
    parser.add_argument(
        "--python-http", action="store_true", help="use the Python HTTP load generator even if wrk exists"
    )
    args = parser.parse_args()
    models = args.models.split(",")
    use_wrk = shutil.which("wrk") is not None and not args.python_http

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        with console.status("building models"):
            rows = build_repository(root, args.threads)
        raw: dict[str, dict[int, tuple[float, float]]] = {}
        for model in models:
            with console.status(f"raw onnxruntime: {model}"):
                raw[model] = raw_throughput(root / model / "1" / "model.onnx", rows[model], args.threads, 4.0)
        proc, ports = start_server(root)
        results = []
        try:
            for model in models:
                for protocol in args.protocols.split(","):
                    for concurrency in (int(c) for c in args.concurrency.split(",")):
                        with console.status(f"{model} {protocol} c={concurrency}"):
                            results.append(
                                (
                                    model,
                                    protocol,
                                    concurrency,
                                    measure(model, protocol, concurrency, rows[model], ports, args.duration, use_wrk),
                                )
                            )
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(60)

    table = Table(title=f"raw onnxruntime, in-process, {args.threads} intra-op thread(s)")
    for col in ("model", "batch", "rows/s", "ms/call"):
        table.add_column(col, justify="right")
    for model in models:
        for batch, (rps, ms) in raw[model].items():
            table.add_row(model, str(batch), f"{rps:,.0f}", f"{ms:.3f}")
    console.print(table)

    generator = "wrk" if use_wrk else "python asyncio"
    table = Table(title=f"served, closed loop, one row per request (HTTP load: {generator}; gRPC: grpc.aio)")
    for col in ("model", "protocol", "conc", "req/s", "p50 ms", "p99 ms", "errors", "÷ raw b=1", "÷ raw best"):
        table.add_column(col, justify="right")
    for model, protocol, concurrency, r in results:
        best = max(rps for rps, _ in raw[model].values())
        table.add_row(
            model,
            protocol,
            str(concurrency),
            f"{r['rps']:,.0f}",
            f"{r['p50']:.3f}",
            f"{r['p99']:.3f}",
            str(int(r["errors"])),
            f"{r['rps'] / raw[model][1][0]:.2f}",
            f"{r['rps'] / best:.2f}",
        )
    console.print(table)


def measure(
    model: str,
    protocol: str,
    concurrency: int,
    row: np.ndarray[Any, Any],
    ports: dict[str, int],
    seconds: float,
    use_wrk: bool,
) -> dict[str, float]:
    path = f"/v2/models/{model}/infer"
    if protocol == "grpc":
        return load_subprocess(
            "grpc",
            target=f"127.0.0.1:{ports['grpc']}",
            model=model,
            row=row.tolist(),
            concurrency=concurrency,
            seconds=seconds,
        )
    if use_wrk:
        body, headers = (json_body if protocol == "json" else binary_body)(row)
        return run_wrk(f"http://127.0.0.1:{ports['http']}{path}", body, headers, concurrency, seconds)
    return load_subprocess(
        protocol, port=ports["http"], path=path, row=row.tolist(), concurrency=concurrency, seconds=seconds
    )


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "_load":
        _load_main(sys.argv[2], sys.argv[3])
    else:
        main()
