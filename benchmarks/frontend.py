"""The HTTP front end alone: server CPU per request and throughput for a small v2-sized JSON exchange.

    python benchmarks/frontend.py [--seconds 3] [--rate 5000] [--repeat 2]

Each server runs in its own process with a handler that parses the request body and answers
a fixed ~150-byte v2 JSON response (no model, no data plane), so what is measured is the
HTTP layer: sloserve's server (`sloserve.server.http.serve`), and, when uvicorn is
installed, uvicorn with httptools and an equivalent ASGI app (what sloserve used before).
Load comes from the slo benchmark's generator: a closed loop (64 connections, as fast as
answers come) and an open loop at --rate requests/s over 256 connections. CPU is the server
process's, from /proc; compare the rows as ratios, measured in one run.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import orjson
from rich.console import Console
from rich.table import Table

HERE = Path(__file__).resolve()
sys.path.insert(0, str(HERE.parent))
import slo  # noqa: E402  (the load generator and /proc CPU readings)

RESPONSE = orjson.dumps(
    {
        "model_name": "m",
        "model_version": "1",
        "outputs": [{"name": "p", "datatype": "FP32", "shape": [1, 10], "data": [0.1] * 10}],
    }
)


async def _asgi(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] != "http":
        return
    message = await receive()
    orjson.loads(message["body"])
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(RESPONSE)).encode())]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": RESPONSE})


async def _serve(kind: str, port: int) -> None:
    if kind == "uvicorn":
        import uvicorn

        config = uvicorn.Config(
            _asgi, host="127.0.0.1", port=port, lifespan="off", access_log=False, log_level="warning",
            http="httptools", loop="none", proxy_headers=False,
        )  # fmt: skip
        await uvicorn.Server(config).serve()
        return
    from sloserve.server.http.serve import HttpRequest, HttpResponse, HttpServer, bind

    async def handler(request: HttpRequest) -> HttpResponse:
        orjson.loads(request.body)
        return HttpResponse(200, RESPONSE)

    server = HttpServer(handler, bind("127.0.0.1", port), max_body_bytes=1 << 20, grace_s=1.0)
    await server.start()
    await asyncio.Event().wait()


def measure(kind: str, args: argparse.Namespace) -> dict[str, float]:
    port = slo.free_port()
    proc = subprocess.Popen([sys.executable, str(HERE), "_serve", kind, str(port)])
    try:
        time.sleep(1.5)
        row = [0.5] * 64
        before = slo.cpu_by_process(proc.pid)[proc.pid]
        rps, p50, _, _ = slo.generate(
            kind="closed", port=port, path="/v2/models/m/infer", rows=[row], seconds=args.seconds, connections=64
        )
        middle = slo.cpu_by_process(proc.pid)[proc.pid]
        classes = [{"latency_ms": 1e9, "min_accuracy": 0.0}]
        opened = slo.generate(
            kind="open", port=port, path="/v2/models/m/infer", rows=[row], classes=classes, rate=args.rate,
            seconds=args.seconds, send_slo=False, seed=1, connections=256,
        )  # fmt: skip
        after = slo.cpu_by_process(proc.pid)[proc.pid]
        sent = len(opened["results"])
        return {
            "closed_rps": rps,
            "closed_us": (middle - before) / (rps * args.seconds) * 1e6,
            "closed_p50": p50,
            "open_us": (after - middle) / max(sent, 1) * 1e6,
        }
    finally:
        proc.terminate()
        proc.wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--rate", type=float, default=5000.0, help="open-loop requests/s")
    parser.add_argument("--repeat", type=int, default=2, help="runs per server, interleaved")
    args = parser.parse_args()
    kinds = ["sloserve"] + (["uvicorn"] if importlib.util.find_spec("uvicorn") else [])
    runs: dict[str, list[dict[str, float]]] = {k: [] for k in kinds}
    for _ in range(args.repeat):
        for kind in kinds:
            runs[kind].append(measure(kind, args))
    table = Table(
        title=f"HTTP front end: server CPU per request (open loop at {args.rate:,.0f} req/s; closed loop, 64 connections)"
    )
    for column in (
        "server",
        "closed req/s",
        "closed µs CPU/req",
        "closed p50 ms",
        "open µs CPU/req",
        "open CPU vs sloserve",
    ):
        table.add_column(column, justify="right")
    base = sum(r["open_us"] for r in runs["sloserve"]) / len(runs["sloserve"])
    for kind, results in runs.items():
        mean = {key: sum(r[key] for r in results) / len(results) for key in results[0]}
        table.add_row(
            kind, f"{mean['closed_rps']:,.0f}", f"{mean['closed_us']:.1f}", f"{mean['closed_p50']:.2f}",
            f"{mean['open_us']:.1f}", f"{mean['open_us'] / base:.2f}x",
        )  # fmt: skip
    Console().print(table)


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "_serve":
        import uvloop

        uvloop.install()
        asyncio.run(_serve(sys.argv[2], int(sys.argv[3])))
    else:
        main()
