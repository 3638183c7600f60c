"""The ``sloserve`` command line.

This module only parses arguments: each command's module is imported when the
command runs, so ``--help`` is instant and worker processes (which re-import the
main module under multiprocessing's spawn) do not load the whole server stack.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence
from pathlib import Path

from sloserve import __version__
from sloserve.errors import SloserveError
from sloserve.settings import OPTIONS, Settings

_DESCRIPTION = """\
sloserve serves ONNX and scikit-learn models over the Open Inference Protocol v2
(HTTP on :8000, gRPC on :8001, Prometheus metrics on :8002): any v2 client, such as
tritonclient, works unchanged. Start with `sloserve demo`.

`sloserve register` turns one model into a profiled family of variants (fp32,
int8, fp16, pruned, distilled); each variant is a version of the model that a
client can pin, e.g. POST /v2/models/NAME/versions/int8-dynamic/infer. Or the
client states what it needs instead, in the request's parameters
({"latency_slo_ms": 5, "min_accuracy": 0.97}), and sloserve serves the cheapest
variant predicted to meet it, says which one served, and refuses at once (429)
what it cannot serve in time.

Files live under the sloserve home: $SLOSERVE_HOME, else $XDG_CACHE_HOME/sloserve,
else ~/.cache/sloserve. It holds the registry database (registry.sqlite3) and the
built-in demo repository (<home>/repository).
"""

# command -> module (under sloserve.cli) whose run(args) carries it out
_COMMANDS = {
    "serve": "serving",
    "demo": "serving",
    "add": "repository",
    "models": "repository",
    "register": "variants",
    "variants": "variants",
    "profile": "variants",
    "plot": "variants",
    "simulate": "simulate",
    "cluster": "cluster",
}


def _server_flags(parser: argparse.ArgumentParser) -> None:
    defaults = Settings()
    for name, option in OPTIONS.items():
        default = getattr(defaults, name)
        shown = "" if default in (None, "") else f" (default {default})"
        parser.add_argument(
            option.flag,
            dest=name,
            default=None,
            metavar=name.split("_")[-1].upper(),
            help=f"{option.help}{shown}; env {option.env}",
        )


def _repository_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--repository",
        default=None,
        metavar="DIR",
        help="model repository folder (default: $SLOSERVE_REPOSITORY, else the demo repository)",
    )
    parser.add_argument("--home", default=None, metavar="DIR", help="sloserve home (default: $SLOSERVE_HOME)")


def _conversion_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--features",
        type=int,
        default=None,
        help="scikit-learn only: number of input features (default: the estimator's n_features_in_)",
    )
    parser.add_argument(
        "--input-datatype",
        default="FP32",
        choices=["FP32", "FP64", "INT64"],
        help="scikit-learn only: input datatype (default FP32)",
    )
    parser.add_argument("--max-batch-size", type=int, default=64, help="rows per batch (default 64)")


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
    _server_flags(p)

    p = sub.add_parser(
        "demo",
        help="register the demo model if missing, serve it, print example calls",
        description="Train the built-in `digits` model on first use (seconds, no downloads), register it "
        "(its variants are built and profiled, about a minute), serve the demo repository, and print "
        "ready-to-paste curl and tritonclient calls.",
    )
    _server_flags(p)

    p = sub.add_parser(
        "add",
        help="add an ONNX file or a pickled/joblib scikit-learn estimator (no variants)",
        description="Copy a model into the repository as NAME/1/model.onnx with a config.json. "
        "scikit-learn estimators are converted to ONNX with skl2onnx. A file that is not a "
        "model is refused and the repository is left unchanged. `register` does this and builds variants.",
    )
    p.add_argument("path", type=Path, help="model file: .onnx, or a pickle/joblib of a fitted estimator")
    p.add_argument("--name", required=True, help="model name (letters, digits, '_', '-', '.')")
    _repository_flags(p)
    _conversion_flags(p)
    p.add_argument("--replace", action="store_true", help="replace a model of the same name")

    p = sub.add_parser(
        "models",
        help="list the models in a repository",
        description="A table of the repository's models, their inputs, outputs and state.",
    )
    _repository_flags(p)

    p = sub.add_parser(
        "register",
        help="register a model: build, profile and record its variants",
        description="Convert the model to ONNX, then build each recipe's variant, profile it on this machine "
        "(latency by batch size, throughput, accuracy, memory, cost) and record it in the registry. "
        "A registration cut short (Ctrl+C, kill -9) resumes where it stopped when run again. "
        "Registering a name that is already registered is refused unless --replace is given, which "
        "registers a new generation (the old variants are deleted).",
    )
    p.add_argument(
        "path",
        type=Path,
        help="model file: .onnx, a pickle/joblib scikit-learn estimator, "
        "or (with the torch extra) a torch.save'd {'model': module, 'example_input': tensor}",
    )
    p.add_argument("--name", required=True, help="model name (letters, digits, '_', '-', '.')")
    p.add_argument(
        "--validation",
        type=Path,
        default=None,
        help=".npz with one array per model input (or X for a single-input model) and optional labels y; "
        "with labels accuracy is measured against them, without it is fidelity to the original model",
    )
    p.add_argument(
        "--task",
        choices=["classification", "regression", "other"],
        default=None,
        help="what the model does (default: guessed from its outputs and the labels)",
    )
    p.add_argument("--recipes", default=None, help="comma-separated recipes (default: all; see --list-recipes)")
    p.add_argument("--replace", action="store_true", help="register a new generation over an existing one")
    p.add_argument(
        "--profile-seconds",
        type=float,
        default=None,
        help="seconds of measurement per batch size (default 0.4; lower is faster and noisier)",
    )
    _repository_flags(p)
    _conversion_flags(p)

    p = sub.add_parser(
        "variants",
        help="table of a registered model's variants",
        description="Each variant's recipe, status, accuracy, latency at batch 1 and at its best batch, "
        "throughput, memory, size, cost, and whether it is on the latency/accuracy/cost Pareto frontier.",
    )
    p.add_argument("name", help="model name")
    p.add_argument("--json", action="store_true", help="print a JSON list instead of a table")
    _repository_flags(p)

    p = sub.add_parser("profile", help="measure a registered model's variants again")
    p.add_argument("name", help="model name")
    p.add_argument("--variant", default=None, help="only this variant (default: every ready one)")
    p.add_argument("--profile-seconds", type=float, default=None, help="seconds of measurement per batch size")
    _repository_flags(p)

    p = sub.add_parser("plot", help="draw latency against accuracy, with the Pareto frontier")
    p.add_argument("name", help="model name")
    p.add_argument("-o", "--output", type=Path, required=True, help="output file: .svg or .png")
    _repository_flags(p)

    p = sub.add_parser(
        "cluster",
        help="the Ray cluster that --ray-address points at",
        description="Commands about a Ray cluster serving sloserve replicas (needs sloserve[ray]).",
    )
    cluster = p.add_subparsers(dest="cluster_command", required=True, metavar="SUBCOMMAND")
    p = cluster.add_parser(
        "status",
        help="nodes, sloserve replicas per variant and node, resource use",
        description="Connect to the Ray cluster and show its nodes, the sloserve replicas (named actors of the "
        "`sloserve` namespace) per model, variant and node, the front ends using each, and resource use.",
    )
    p.add_argument(
        "--ray-address",
        dest="ray_address",
        default=None,
        metavar="ADDRESS",
        help="Ray cluster address, host:port of its head (default: $SLOSERVE_RAY_ADDRESS)",
    )
    p.add_argument("--json", action="store_true", help="print JSON instead of tables")

    from sloserve.cli.simulate import add_parser as add_simulate_parser  # cheap: the simulator loads in run()

    add_simulate_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    module = importlib.import_module(f"sloserve.cli.{_COMMANDS[args.command]}")
    from sloserve.cli.output import err, print_error

    try:
        code: int = module.run(args)
        return code
    except SloserveError as error:
        print_error(error.message)
        return 2
    except KeyboardInterrupt:
        err.print("[yellow]interrupted[/]")
        return 130
    except OSError as error:
        print_error(str(error))
        return 1


if __name__ == "__main__":
    sys.exit(main())
