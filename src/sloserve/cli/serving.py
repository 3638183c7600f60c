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
    # sloserve's own loggers at --log-level; the libraries' at warnings (onnxruntime's quantizer logs a line per
    # tensor at info on the root logger while the demo's variants are built)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("sloserve").setLevel(settings.log_level.upper())
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
        console.print("\n[bold]Try it[/] (one 8x8 image of a 0, 64 pixel values 0-16):")
        # as plain text, never wrapped: pasted into a shell, every line must be what was printed
        pinned = next((v for v in PINNED_EXAMPLES if v in loaded[DEMO_MODEL].versions), None)
        calls = demo_calls(host, ports.http, ports.grpc, pinned)
        console.print(calls, markup=False, highlight=False, soft_wrap=True)
    console.print("Press Ctrl+C to stop.")


DIGIT_ZERO = (
    *(0, 0, 5, 13, 9, 1, 0, 0, 0, 0, 13, 15, 10, 15, 5, 0, 0, 3, 15, 2, 0, 11, 8, 0, 0, 4, 12, 0, 0, 8, 8, 0),
    *(0, 5, 8, 0, 0, 9, 8, 0, 0, 4, 11, 0, 1, 12, 7, 0, 0, 2, 14, 5, 10, 12, 0, 0, 0, 0, 6, 13, 10, 0, 0, 0),
)
"""The first image of scikit-learn's digits (a 0), as the README's examples send it."""
PINNED_EXAMPLES = ("int8-dynamic", "fp32")
"""The variant the demo's pinned call names: the first of these the demo serves."""


def demo_calls(host: str, http_port: int, grpc_port: int, pinned: str | None) -> str:
    """Ready-to-paste calls to the demo's ``digits``: model-less with an SLO, pinned to ``pinned`` (if given), its
    variants' profiles, and tritonclient over gRPC with an SLO (floats go as strings there)."""
    base = f"http://{host}:{http_port}/v2/models/digits"
    tensor = f'{{"name":"input","shape":[1,64],"datatype":"FP32","data":[{",".join(map(str, DIGIT_ZERO))}]}}'
    slo = '{"latency_slo_ms":5,"min_accuracy":0.95}'
    lines = [
        "  # model-less: state the SLO, sloserve picks the variant (the answer's parameters name it)",
        f"""  curl -s -X POST {base}/infer -H 'Content-Type: application/json' \\""",
        f"""    -d '{{"inputs":[{tensor}],"parameters":{slo}}}'""",
        "",
    ]
    if pinned is not None:
        lines += [
            f"  # pinned to the {pinned} variant (no selection), and the whole family with its profiles:",
            f"""  curl -s -X POST {base}/versions/{pinned}/infer -d '{{"inputs":[{tensor}]}}'""",
        ]
    else:
        lines.append("  # the whole family with its profiles:")
    lines += [
        f"  curl -s {base}/variants",
        "",
        "  # with tritonclient over gRPC (pip install 'tritonclient[grpc]'), the SLO in the request's parameters:",
        "  python - <<'PY'",
        "import numpy as np, tritonclient.grpc as grpcclient",
        f'client = grpcclient.InferenceServerClient("{host}:{grpc_port}")',
        "x = np.random.default_rng(0).integers(0, 17, (4, 64)).astype(np.float32)",
        'inp = grpcclient.InferInput("input", list(x.shape), "FP32"); inp.set_data_from_numpy(x)',
        'result = client.infer("digits", [inp], parameters={"latency_slo_ms": 5, "min_accuracy": "0.95"})',
        'print(result.as_numpy("label"), result.get_response().parameters["variant"].string_param)',
        "PY",
        "",
    ]
    return "\n".join(lines)
