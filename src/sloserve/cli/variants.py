"""``sloserve register``, ``variants``, ``profile`` and ``plot``."""

from __future__ import annotations

import argparse
import asyncio
import json
from collections.abc import Sequence
from pathlib import Path

import uvloop
from rich.markup import escape
from rich.table import Table

from sloserve.cli.output import console, repository_of, settings_of
from sloserve.cli.progress import RichProgress
from sloserve.control.registration import RegisterOptions, Registrar
from sloserve.errors import InvalidArgumentError, NotFoundError
from sloserve.profiling.profiler import ProfileSettings
from sloserve.registry.db import RegistryDB
from sloserve.registry.repository import ModelRepository
from sloserve.variant import Task, VariantRecord, VariantStatus, variant_json


def run(args: argparse.Namespace) -> int:
    root = repository_of(args)
    settings = settings_of(args)
    if args.command == "register":
        root.mkdir(parents=True, exist_ok=True)
    elif not root.is_dir():
        raise NotFoundError(f"no repository at {root}")
    with RegistryDB(settings.registry_path, root) as db:
        if args.command == "register":
            records = _register(args, ModelRepository(root), db)
            print_variants(args.name, records)
        elif args.command == "profile":
            with RichProgress() as progress:
                registrar = Registrar(
                    ModelRepository(root), db, profile_settings=_profile_settings(args), progress=progress
                )
                records = uvloop.run(registrar.reprofile(args.name, args.variant))
            print_variants(args.name, records)
        else:
            records = db.variants(args.name)
            if not records:
                raise NotFoundError(f"model {args.name!r} is not registered in {root}; see `sloserve register`")
            if args.command == "plot":
                plot(args.name, records, args.output)
                console.print(f"Wrote {args.output}")
            elif args.json:
                print(json.dumps([variant_json(r) for r in records], indent=2))
            else:
                print_variants(args.name, records)
    return 0


def _profile_settings(args: argparse.Namespace) -> ProfileSettings | None:
    seconds = getattr(args, "profile_seconds", None)
    if seconds is None:
        return None
    if seconds <= 0:
        raise InvalidArgumentError("--profile-seconds must be positive")
    return ProfileSettings(seconds_per_batch=seconds)


def _register(args: argparse.Namespace, repository: ModelRepository, db: RegistryDB) -> list[VariantRecord]:
    options = RegisterOptions(
        validation=args.validation,
        task=Task(args.task) if args.task else None,
        recipes=[r.strip() for r in args.recipes.split(",") if r.strip()] if args.recipes else None,
        replace=args.replace,
        n_features=args.features,
        input_datatype=args.input_datatype,
        max_batch_size=args.max_batch_size,
    )
    with RichProgress() as progress:
        registrar = Registrar(repository, db, profile_settings=_profile_settings(args), progress=progress)
        with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
            return runner.run(registrar.register(args.path, args.name, options))


def _ms(value: float) -> str:
    return f"{value:.3f}" if value < 10 else f"{value:.1f}"


def print_variants(name: str, records: Sequence[VariantRecord]) -> None:
    table = Table(title=f"Variants of {name}")
    for column in (
        "variant",
        "status",
        "accuracy",
        "p50/p99 ms b=1",
        "best batch: p50/p99 ms",
        "rows/s",
        "memory MB",
        "size KB",
        "cost CPU-s/1k",
        "frontier",
    ):
        table.add_column(column, justify="left" if column in ("variant", "status") else "right")
    reasons: list[str] = []  # under the table, a line each: in a cell they wrap to a column of single words
    for r in records:
        p = r.profile
        if r.status is not VariantStatus.READY or p is None:
            style = "yellow" if r.status is VariantStatus.SKIPPED else "red"
            table.add_row(r.id, f"[{style}]{r.status.value}[/]", *[""] * 8)
            if r.reason:
                reasons.append(f"[{style}]{r.id} {r.status.value}:[/] {escape(r.reason)}")
            continue
        first = p.latency_ms[min(p.latency_ms)]
        best = p.latency_ms.get(p.best_batch, first)
        accuracy = f"{p.accuracy:.4f}" if p.accuracy is not None else "n/a"
        kind = f" ({p.accuracy_kind.value})" if p.accuracy_kind else ""
        table.add_row(
            r.id + (" [dim](gpu)[/]" if r.meant_for == "gpu" else ""),
            "[green]ready[/]",
            accuracy + kind,
            f"{_ms(first.p50_ms)} / {_ms(first.p99_ms)}",
            f"{p.best_batch}: {_ms(best.p50_ms)} / {_ms(best.p99_ms)}",
            f"{p.throughput_sps:,.0f}",
            f"{p.memory_mb:.0f}",
            f"{p.size_bytes / 1024:,.0f}",
            f"{p.cost_cpu_s_per_1k:.4f}",
            "[bold green]●[/]" if r.pareto else "",
        )
    console.print(table)
    for line in reasons:
        console.print(line, soft_wrap=True)


def plot(name: str, records: Sequence[VariantRecord], output: Path) -> None:
    """Latency at batch 1 against accuracy; frontier variants joined and highlighted."""
    if output.suffix.lower() not in (".svg", ".png"):
        raise InvalidArgumentError(f"{output}: the plot is written as .svg or .png")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ready = [r for r in records if r.status is VariantStatus.READY and r.profile and r.profile.accuracy is not None]
    if not ready:
        raise InvalidArgumentError(f"model {name!r} has no ready variant with a measured accuracy to plot")
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for r in ready:
        assert r.profile is not None and r.profile.accuracy is not None
        latency = r.profile.latency_ms[min(r.profile.latency_ms)].p50_ms
        ax.scatter(latency, r.profile.accuracy, s=60, color="tab:green" if r.pareto else "tab:gray", zorder=3)
        ax.annotate(r.id, (latency, r.profile.accuracy), textcoords="offset points", xytext=(5, 5), fontsize=9)
    frontier = sorted(
        (r.profile.latency_ms[min(r.profile.latency_ms)].p50_ms, r.profile.accuracy)
        for r in ready
        if r.pareto and r.profile is not None and r.profile.accuracy is not None
    )
    if frontier:
        ax.plot([x for x, _ in frontier], [y for _, y in frontier], color="tab:green", linewidth=1.5, label="frontier")
        ax.legend(loc="lower right")
    kind = ready[0].profile.accuracy_kind.value if ready[0].profile and ready[0].profile.accuracy_kind else ""
    ax.set_xlabel("p50 latency at batch 1 (ms, through a serving worker)")
    ax.set_ylabel(f"accuracy ({kind})")
    ax.set_title(f"{name}: variants on this machine")
    ax.grid(True, alpha=0.3)
    fig.tight_layout()
    output.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(output)
    plt.close(fig)
