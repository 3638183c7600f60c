"""``sloserve serve`` and ``sloserve demo``."""

from __future__ import annotations

import argparse
import asyncio
import logging
from pathlib import Path

import uvloop
from rich.panel import Panel
from rich.table import Table

from sloserve import __version__
from sloserve.app import Server, serve
from sloserve.cli.output import console, print_error, settings_of
from sloserve.cli.progress import RichProgress
from sloserve.control.demo import DEMO_MODEL, ensure_demo_repository
from sloserve.errors import InvalidArgumentError
from sloserve.registry.db import RegistryDB
from sloserve.settings import Settings


def run(args: argparse.Namespace) -> int:
    settings = settings_of(args)
    logging.basicConfig(level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    demo = args.command == "demo"
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        if settings.repository is None:
            repository = runner.run(_ensure_demo(settings))
        else:
            repository = settings.repository
            if not repository.is_dir():
                raise InvalidArgumentError(f"repository folder {repository} does not exist")
        console.print(f"Loading models from [bold]{repository}[/] …")
        runner.run(serve(settings, repository, on_ready=lambda server: _print_ready(server, demo)))
    console.print("sloserve stopped.")
    return 0


async def _ensure_demo(settings: Settings) -> Path:
    with RegistryDB(settings.registry_path, settings.home_dir / "repository") as db, RichProgress() as progress:
        return await ensure_demo_repository(settings.home_dir, db, progress)


def _print_ready(server: Server, demo: bool) -> None:
    ports = server.ports
    host = server.settings.host
    table = Table.grid(padding=(0, 2))
    table.add_row("HTTP", f"http://{host}:{ports.http}/v2")
    table.add_row("gRPC", f"{host}:{ports.grpc}")
    table.add_row("metrics", f"http://{host}:{ports.metrics}/metrics")
    loaded = server.lifecycle.loaded
    models = [f"{name} ({len(m.versions)} version{'s' if len(m.versions) > 1 else ''})" for name, m in loaded.items()]
    table.add_row("models", ", ".join(sorted(models)) or "(none loaded)")
    console.print(Panel(table, title=f"sloserve {__version__} ready", expand=False))
    for status in server.lifecycle.index():
        if status.reason and status.name not in loaded:
            print_error(status.reason, f"[yellow]model {status.name} not loaded:[/]")
    if demo and DEMO_MODEL in loaded:
        console.print(_demo_calls(host, ports.http, ports.grpc))
    console.print("Press Ctrl+C to stop.")


def _demo_calls(host: str, http_port: int, grpc_port: int) -> str:
    row = ", ".join(["0"] * 20 + ["5", "13", "9", "1"] + ["0"] * 40)
    return f"""
[bold]Try it[/] (one 8x8 digit image, 64 pixel values 0-16):

  curl -s -X POST http://{host}:{http_port}/v2/models/digits/infer \\
    -H 'Content-Type: application/json' \\
    -d '{{"inputs":[{{"name":"input","shape":[1,64],"datatype":"FP32","data":[{row}]}}]}}'

  [dim]# the same, pinned to the int8 variant; and the whole family with its profiles:[/]
  curl -s -X POST http://{host}:{http_port}/v2/models/digits/versions/int8-dynamic/infer -d '...'
  curl -s http://{host}:{http_port}/v2/models/digits/variants

  python - <<'PY'
import numpy as np, tritonclient.grpc as grpcclient
client = grpcclient.InferenceServerClient("{host}:{grpc_port}")
x = np.random.default_rng(0).integers(0, 17, (4, 64)).astype(np.float32)
inp = grpcclient.InferInput("input", list(x.shape), "FP32"); inp.set_data_from_numpy(x)
print(client.infer("digits", [inp]).as_numpy("label"))
PY
"""
