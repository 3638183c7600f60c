"""``sloserve add`` and ``sloserve models``."""

from __future__ import annotations

import argparse
from typing import Any

from rich.table import Table

from sloserve.cli.output import console, repository_of
from sloserve.registry.repository import ModelRepository


def run(args: argparse.Namespace) -> int:
    root = repository_of(args)
    if args.command == "add":
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
        print_models(repository, only=config.name)
        return 0
    if not root.is_dir():
        console.print(f"No repository at {root} yet: run `sloserve demo`, `sloserve register` or `sloserve add`.")
        return 0
    print_models(ModelRepository(root))
    return 0


def print_models(repository: ModelRepository, only: str | None = None) -> None:
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
