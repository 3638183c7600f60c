"""The ``sloserve`` command line."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import uvloop
from rich.console import Console
from rich.panel import Panel
from rich.table import Table

from sloserve import __version__
from sloserve.app import Server, serve
from sloserve.control.demo import DEMO_MODEL, demo_repository_root, ensure_demo_repository
from sloserve.errors import SloserveError
from sloserve.registry.repository import ModelRepository
from sloserve.settings import OPTIONS, Settings, default_home, load_settings

console = Console()
err = Console(stderr=True)

_DESCRIPTION = """\
sloserve serves ONNX and scikit-learn models over the Open Inference Protocol v2
(HTTP on :8000, gRPC on :8001, Prometheus metrics on :8002): any v2 client, such as
tritonclient, works unchanged. Start with `sloserve demo`.

Files live under the sloserve home: $SLOSERVE_HOME, else $XDG_CACHE_HOME/sloserve,
else ~/.cache/sloserve. The built-in demo repository is <home>/repository.
"""


def _add_server_flags(parser: argparse.ArgumentParser) -> None:
    defaults = Settings()
    for name, option in OPTIONS.items():
        default = getattr(defaults, name)
        shown = "" if default is None else f" (default {default})"
        parser.add_argument(
            option.flag,
            dest=name,
            default=None,
            metavar=name.split("_")[-1].upper(),
            help=f"{option.help}{shown}; env {option.env}",
        )


def _repository_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--repository",
        default=None,
        metavar="DIR",
        help="model repository folder (default: $SLOSERVE_REPOSITORY, else the demo repository)",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="sloserve", description=_DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--version", action="version", version=f"sloserve {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser(
        "serve",
        help="serve every model in a repository",
        description="Serve every model in the repository until SIGINT/SIGTERM. "
        "Flags override SLOSERVE_* environment variables, which override defaults.",
    )
    _add_server_flags(p)

    p = sub.add_parser(
        "demo",
        help="build the demo model if missing, serve it, print example calls",
        description="Train the built-in `digits` model on first use (seconds, no downloads), "
        "serve the demo repository, and print ready-to-paste curl and tritonclient calls.",
    )
    _add_server_flags(p)

    p = sub.add_parser(
        "add",
        help="add an ONNX file or a pickled/joblib scikit-learn estimator",
        description="Copy a model into the repository as NAME/1/model.onnx with a config.json. "
        "scikit-learn estimators are converted to ONNX with skl2onnx. A file that is not a "
        "model is refused and the repository is left unchanged.",
    )
    p.add_argument("path", type=Path, help="model file: .onnx, or a pickle/joblib of a fitted estimator")
    p.add_argument("--name", required=True, help="model name (letters, digits, '_', '-', '.')")
    _repository_flag(p)
    p.add_argument(
        "--features",
        type=int,
        default=None,
        help="scikit-learn only: number of input features (default: the estimator's n_features_in_)",
    )
    p.add_argument(
        "--input-datatype",
        default="FP32",
        choices=["FP32", "FP64", "INT64"],
        help="scikit-learn only: input datatype (default FP32)",
    )
    p.add_argument("--max-batch-size", type=int, default=64, help="rows per batch (default 64)")
    p.add_argument("--replace", action="store_true", help="replace a model of the same name")

    p = sub.add_parser(
        "models",
        help="list the models in a repository",
        description="A table of the repository's models, their inputs, outputs and state.",
    )
    _repository_flag(p)
    return parser


def _home() -> Path:
    return default_home(os.environ)


def _repository_root(flag: str | None) -> Path:
    """--repository, else $SLOSERVE_REPOSITORY, else the demo repository under the sloserve home."""
    return load_settings({"repository": flag}).repository or demo_repository_root(_home())


def _ensure_demo() -> Path:
    with console.status("[bold]Preparing the demo repository…") as status:

        def progress(message: str) -> None:
            status.update(f"[bold]{message}…")
            console.log(message)

        return ensure_demo_repository(_home(), progress)


def _print_ready(server: Server, demo: bool) -> None:
    ports = server.ports
    host = server.settings.host
    table = Table.grid(padding=(0, 2))
    table.add_row("HTTP", f"http://{host}:{ports.http}/v2")
    table.add_row("gRPC", f"{host}:{ports.grpc}")
    table.add_row("metrics", f"http://{host}:{ports.metrics}/metrics")
    loaded = server.lifecycle.loaded
    table.add_row("models", ", ".join(sorted(loaded)) or "(none loaded)")
    console.print(Panel(table, title=f"sloserve {__version__} ready", expand=False))
    for status in server.lifecycle.index():
        if status.reason and status.name not in loaded:
            err.print(f"[yellow]model {status.name} not loaded:[/] {status.reason}")
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

  python - <<'PY'
import numpy as np, tritonclient.grpc as grpcclient
client = grpcclient.InferenceServerClient("{host}:{grpc_port}")
x = np.random.default_rng(0).integers(0, 17, (4, 64)).astype(np.float32)
inp = grpcclient.InferInput("input", list(x.shape), "FP32"); inp.set_data_from_numpy(x)
print(client.infer("digits", [inp]).as_numpy("label"))
PY
"""


def _cmd_serve(args: argparse.Namespace, demo: bool) -> int:
    flags: dict[str, Any] = {name: getattr(args, name) for name in OPTIONS}
    settings = load_settings(flags)
    logging.basicConfig(level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    repository = settings.repository or _ensure_demo()
    if settings.repository is not None and not repository.is_dir():
        raise SloserveError(f"repository folder {repository} does not exist")
    console.print(f"Loading models from [bold]{repository}[/] …")
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(serve(settings, repository, on_ready=lambda server: _print_ready(server, demo)))
    console.print("sloserve stopped.")
    return 0


def _cmd_add(args: argparse.Namespace) -> int:
    root = _repository_root(args.repository)
    root.mkdir(parents=True, exist_ok=True)
    repository = ModelRepository(root)
    with console.status(f"Adding {args.path} as {args.name}…"):
        config = repository.add_model_file(
            args.path,
            args.name,
            n_features=args.features,
            input_datatype=args.input_datatype,
            max_batch_size=args.max_batch_size,
            replace=args.replace,
        )
    console.print(f"[green]Added[/] model [bold]{config.name}[/] to {root}")
    _print_models(repository, only=config.name)
    return 0


def _print_models(repository: ModelRepository, only: str | None = None) -> None:
    table = Table(title=f"Models in {repository.root}")
    for column in ("name", "versions", "inputs", "outputs", "max batch", "instances", "state"):
        table.add_column(column)
    for entry in repository.index():
        if only is not None and entry.name != only:
            continue
        if entry.state != "ok":
            table.add_row(entry.name, ", ".join(entry.versions), "", "", "", "", f"[red]{entry.reason}")
            continue
        config = repository.read_config(entry.name)

        def describe(specs: Any) -> str:
            return "\n".join(f"{t.name} {t.datatype} {list(t.shape)}" for t in specs)

        table.add_row(
            entry.name,
            ", ".join(entry.versions),
            describe(config.inputs),
            describe(config.outputs),
            str(config.max_batch_size),
            str(config.instance_count),
            "[green]ok",
        )
    console.print(table)


def _cmd_models(args: argparse.Namespace) -> int:
    root = _repository_root(args.repository)
    if not root.is_dir():
        console.print(f"No repository at {root} yet: run `sloserve demo` or `sloserve add`.")
        return 0
    _print_models(ModelRepository(root))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.command in ("serve", "demo"):
            return _cmd_serve(args, demo=args.command == "demo")
        if args.command == "add":
            return _cmd_add(args)
        return _cmd_models(args)
    except SloserveError as error:
        err.print(f"[red]error:[/] {error.message}")
        return 2
    except OSError as error:
        err.print(f"[red]error:[/] {error}")
        return 1


if __name__ == "__main__":
    sys.exit(main())
