"""``sloserve simulate``: replay a workload through the real policies in simulated time.

Importing this module is cheap (the parser is built from it on every command): numpy,
rich and the simulator are imported when the command runs.
"""

from __future__ import annotations

import argparse
import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import numpy as np

    from sloserve.sim import Family, SimReport, Workload

DESCRIPTION = """\
Replay a workload through sloserve's real policies (variant selection, admission,
EDF + AIMD batching, autoscaling) against simulated replicas whose service times
come from the variants' profiles, in simulated time. The same flags and --seed give
the same report. Prints SLO attainment (served within the SLO / all arrivals:
rejections and drops count as misses), rejections, accuracy delivered, latency,
CPU-seconds per 1,000 queries and replicas over time.

Variants: --model NAME (a registered model's profiles), --family FILE (JSON list of
{id, accuracy, intercept_ms, per_row_ms, cost_cpu_s_per_1k, best_batch, load_ms,
max_batch}), or --synthetic N (a generated frontier, for scale studies).

Workload: --rate R [--duration S] (Poisson), --steps 10:1000,10:5000 (DURATION_S:RATE
segments), --rate R --burst-rate R2 --burst-every S --burst-length S (bursts), or
--csv FILE (columns time_s, and optionally model, latency_slo_ms, min_accuracy, rows).
SLO classes: --slo NAME:LATENCY_MS:MIN_ACCURACY:SHARE[:best_effort] (repeatable, '-'
leaves a bound out). Without --slo: 'tight' (4x the fastest variant's batch-1
latency, any accuracy) and 'loose' (4x the most accurate variant's batch-1 latency,
at least the median accuracy), half each.

Examples:
  sloserve simulate --synthetic 8 --rate 100000 --duration 10 --cpus 1000
  sloserve simulate --model digits --steps 10:500,10:2500,10:500 --slo tight:2:0.9:0.5 --slo loose:20:0.97:0.5
  sloserve simulate --model digits --rate 3000 --policy maxbatch:fp32:2 --json
  sloserve simulate --model digits --rate 24000 --slo tight:5:0.95:0.5 --slo loose:25:0.96:0.5 \\
      --frontend-ms 0.035 --frontend-wake-ms 0.07 --frontend-speed-sigma 0.15
      # one event loop in front, as `sloserve serve` runs, on a machine whose speed drifts
"""


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "simulate",
        help="replay a workload through the real policies in simulated time",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    g = p.add_argument_group("variants")
    g.add_argument("--model", action="append", default=[], metavar="NAME", help="registered model (repeatable)")
    g.add_argument("--family", action="append", default=[], type=Path, metavar="FILE", help="JSON family file")
    g.add_argument("--synthetic", type=int, default=None, metavar="N", help="a synthetic family of N variants")
    g.add_argument("--repository", default=None, metavar="DIR", help="model repository (default: the demo one)")
    g.add_argument("--home", default=None, metavar="DIR", help="sloserve home (default: $SLOSERVE_HOME)")

    g = p.add_argument_group("workload")
    g.add_argument("--rate", type=float, default=None, metavar="RPS", help="Poisson arrival rate (queries/s)")
    g.add_argument("--duration", type=float, default=10.0, metavar="S", help="seconds simulated (default 10)")
    g.add_argument("--steps", default=None, metavar="D:R,...", help="rate steps: DURATION_S:RATE, comma-separated")
    g.add_argument("--burst-rate", type=float, default=None, metavar="RPS", help="extra rate during bursts")
    g.add_argument("--burst-every", type=float, default=10.0, metavar="S", help="burst period (default 10)")
    g.add_argument("--burst-length", type=float, default=1.0, metavar="S", help="burst length (default 1)")
    g.add_argument("--csv", type=Path, default=None, metavar="FILE", help="arrivals from a CSV file")
    g.add_argument(
        "--slo", action="append", default=[], metavar="SPEC", help="SLO class NAME:LATENCY_MS:MIN_ACCURACY:SHARE"
    )
    g.add_argument("--rows", type=int, default=1, help="rows per generated query (default 1)")

    g = p.add_argument_group("serving")
    g.add_argument(
        "--policy",
        default="modelless",
        help="modelless (default), fixed:VARIANT (every query to one variant, plain batching) or "
        "maxbatch:VARIANT:TIMEOUT_MS (max-batch + timeout batching); fixed ones use no admission and no autoscaler",
    )
    g.add_argument("--cpus", type=int, default=None, help="CPU budget for all replicas (default: this machine's cores)")
    g.add_argument("--replicas", type=int, default=None, help="fixed/maxbatch: replicas (default: the CPU budget's)")
    g.add_argument(
        "--initial-replicas",
        type=int,
        default=None,
        help="modelless: warm replicas per variant at start (default: one for each class's idle-server choice)",
    )
    g.add_argument("--autoscale-interval", type=float, default=1.0, metavar="S", help="autoscaler tick (default 1)")
    g.add_argument("--target-utilization", type=float, default=None, help="autoscaler target (default 0.7)")
    g.add_argument("--scale-down-after", type=float, default=None, metavar="S", help="hysteresis (default 10)")
    g.add_argument(
        "--max-replicas-per-variant", type=int, default=None, help="autoscaler cap (default: the CPU budget)"
    )
    g.add_argument("--noise", type=float, default=0.1, metavar="SIGMA", help="lognormal service noise (default 0.1)")
    g.add_argument(
        "--slowdown", type=float, default=1.0, help="true service time / profiled, learnt by the correction (default 1)"
    )
    g.add_argument(
        "--frontend-ms",
        type=float,
        default=0.0,
        metavar="MS",
        help="front-end CPU per request (parse, select, encode): requests queue for a front end first (default 0)",
    )
    g.add_argument("--frontend-workers", type=int, default=1, metavar="N", help="front-end processes (default 1)")
    g.add_argument(
        "--frontend-wake-ms",
        type=float,
        default=0.0,
        metavar="MS",
        help="make each front end an event loop that reads what has arrived, handles it (--frontend-ms a request) "
        "and hands it over together, and first wakes up, costing this, when it has idled: a query's cost falls "
        "with load as the server's does (this VM: ~0.034 ms a request, ~0.07 ms a wake-up; default 0: FIFO "
        "front ends)",
    )
    g.add_argument(
        "--frontend-speed-sigma",
        type=float,
        default=0.0,
        metavar="SIGMA",
        help="the machine's speed of the moment: each window of arrivals costs the front end --frontend-ms x a "
        "lognormal factor with this sigma (default 0: steady)",
    )
    g.add_argument(
        "--frontend-speed-window-ms",
        type=float,
        default=100.0,
        metavar="MS",
        help="how long the machine keeps one speed (default 100)",
    )
    g.add_argument(
        "--max-slo-hold-ms",
        type=float,
        default=2.0,
        metavar="MS",
        help="model-less: a request waits up to a fifth of its latency SLO beyond 5 ms, at most this, for its batch to grow "
        "while a replica is free, as the server does with the model's max_slo_hold_us (default 2; 0: never); not while "
        "fewer requests come to its variant than one a hold",
    )
    g.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    p.add_argument("--json", action="store_true", help="print the report as JSON")


def run(args: argparse.Namespace) -> int:
    import numpy as np

    from sloserve.policy.autoscale import AutoscaleConfig
    from sloserve.sim import SimConfig, parse_policy, simulate

    families = _families(args)
    rng = np.random.default_rng(np.random.SeedSequence(args.seed).spawn(2)[0])
    workload = _workload(args, families, rng)
    cpus = args.cpus if args.cpus is not None else (os.cpu_count() or 2)
    autoscale = AutoscaleConfig(cpu_budget=cpus, max_replicas_per_variant=max(cpus, 1))
    overrides = {
        "target_utilization": args.target_utilization,
        "scale_down_after_s": args.scale_down_after,
        "max_replicas_per_variant": args.max_replicas_per_variant,
    }
    autoscale = AutoscaleConfig(**{**_fields(autoscale), **{k: v for k, v in overrides.items() if v is not None}})
    config = SimConfig(
        policy=parse_policy(args.policy),
        cpus=cpus,
        seed=args.seed,
        noise_sigma=args.noise,
        slowdown=args.slowdown,
        autoscale_interval_s=args.autoscale_interval,
        autoscale=autoscale,
        initial_replicas=args.initial_replicas,
        fixed_replicas=args.replicas,
        frontend_ms=args.frontend_ms,
        frontend_workers=args.frontend_workers,
        frontend_wake_ms=args.frontend_wake_ms,
        frontend_speed_sigma=args.frontend_speed_sigma,
        frontend_speed_window_ms=args.frontend_speed_window_ms,
        max_slo_hold_ms=args.max_slo_hold_ms,
    )
    report = simulate(families, workload, config)
    if args.json:
        print(json.dumps(report.to_json(), indent=2))
    else:
        print_report(report)
    return 0


def _fields(config: object) -> dict[str, object]:
    import dataclasses

    assert dataclasses.is_dataclass(config)
    return {f.name: getattr(config, f.name) for f in dataclasses.fields(config)}


def _families(args: argparse.Namespace) -> list[Family]:
    from sloserve.errors import InvalidArgumentError
    from sloserve.sim.family import from_json, from_registry, synthetic

    families = [from_json(path) for path in args.family]
    if args.synthetic is not None:
        families.append(synthetic(args.synthetic))
    models = list(args.model)
    if args.csv is not None and not (models or families):
        models = _csv_models(args.csv)
    if models:
        from sloserve.cli.output import repository_of, settings_of

        root = repository_of(args)
        db_path = settings_of(args).registry_path
        families.extend(from_registry(db_path, root, name) for name in models)
    if not families:
        raise InvalidArgumentError("choose the variants: --model NAME, --family FILE or --synthetic N")
    names = [f.model for f in families]
    if len(set(names)) != len(names):
        raise InvalidArgumentError(f"a model is simulated once; got {', '.join(names)}")
    return families


def _csv_models(path: Path) -> list[str]:
    from sloserve.errors import InvalidArgumentError
    from sloserve.sim.workload import read_csv

    data = read_csv(path)
    names = sorted({m for m in data.model or () if m is not None})
    if not names:
        raise InvalidArgumentError(f"{path} names no model: choose the variants with --model, --family or --synthetic")
    return names


def _workload(args: argparse.Namespace, families: Sequence[Family], rng: np.random.Generator) -> Workload:
    from sloserve.errors import InvalidArgumentError
    from sloserve.sim.family import default_classes
    from sloserve.sim.workload import (
        Segment,
        SloClass,
        bursts,
        from_csv,
        generate,
        parse_slo_class,
        parse_steps,
        poisson,
        read_csv,
    )

    classes: list[SloClass] = [parse_slo_class(spec) for spec in args.slo]
    if len({c.name for c in classes}) != len(classes):
        raise InvalidArgumentError("--slo class names must be distinct")
    models = [f.model for f in families]
    given = [
        flag
        for flag, value in (("--rate", args.rate), ("--steps", args.steps), ("--csv", args.csv))
        if value is not None
    ]
    if len(given) > 1:
        raise InvalidArgumentError(f"choose one workload, got {' and '.join(given)}")
    if args.csv is not None:
        data = read_csv(args.csv)
        if not classes and data.latency_ms is None and data.min_accuracy is None:
            classes = list(default_classes(families[0]))
        return from_csv(data, models, classes, rng)
    if not classes:
        classes = list(default_classes(families[0]))
    segments: list[Segment]
    if args.steps is not None:
        segments = parse_steps(args.steps)
    elif args.rate is not None:
        if args.rate < 0:
            raise InvalidArgumentError(f"--rate must be non-negative, got {args.rate:g}")
        if args.burst_rate is not None:
            segments = bursts(args.rate, args.burst_rate, args.burst_every, args.burst_length, args.duration)
        else:
            segments = poisson(args.rate, args.duration)
    else:
        raise InvalidArgumentError("give a workload: --rate RPS [--duration S], --steps D:R,... or --csv FILE")
    return generate(segments, classes, models, rng, rows=args.rows)


# ---- printing ------------------------------------------------------------------


def _pct(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value:.2%}" if 0.99 <= value < 1 else f"{value:.1%}"


def _ms(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value:.3f}" if value < 10 else f"{value:.1f}"


def _rate(per_s: float) -> str:
    if per_s >= 10_000:
        return f"{per_s / 1000:,.0f}k"
    if per_s >= 1000:
        return f"{per_s / 1000:.1f}k"
    return f"{per_s:.0f}"


def _num(value: float | None, digits: int = 4) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def _cost(value: float | None) -> str:
    """CPU-seconds per 1,000 queries or rows to two significant digits (a small model's are 0.0003), not
    more: the by-variant table has a column for it on an 80-column terminal."""
    return "-" if value is None else f"{value:.2g}"


def print_report(report: SimReport) -> None:
    from rich import box
    from rich.table import Table

    from sloserve.cli.output import console

    rate = report.arrivals / report.duration_s if report.duration_s > 0 else 0.0
    summary = Table(
        title=f"Simulation: {report.policy}, seed {report.seed}, {report.cpus:,} CPUs",
        show_header=False,
        box=box.SIMPLE,
    )
    summary.add_column("", style="bold")
    summary.add_column("")
    for name, value in (
        ("arrivals", f"{report.arrivals:,} over {report.duration_s:g} s ({rate:,.0f}/s)"),
        ("SLO attainment", f"{_pct(report.attainment)} ({_pct(report.attainment_admitted)} of admitted)"),
        ("rejected", ", ".join(f"{k} {v:,}" for k, v in report.rejections.items())),
        ("dropped", ", ".join(f"{k} {v:,}" for k, v in report.drops.items())),
        ("accuracy delivered", _num(report.accuracy_delivered)),
        ("latency p50 / p99", f"{_ms(report.p50_ms)} / {_ms(report.p99_ms)} ms"),
        ("CPU-s per 1k queries", _cost(report.cpu_s_per_1k)),
        ("front end ms per query", _num(report.frontend_ms_per_query, 4)),
        ("peak CPUs in replicas", f"{max((s.cpus for s in report.replicas), default=0):,}"),
        (
            "simulator",
            f"{report.timing.events:,} events in {report.timing.wall_s:.2f} s "
            f"({report.timing.events_per_s:,.0f}/s, {report.timing.simulated_s_per_wall_s:.2f}x real time)",
        ),
    ):
        summary.add_row(name, value)
    console.print(summary)

    classes = Table(title="By SLO class", box=box.SIMPLE_HEAD, pad_edge=False, padding=(0, 1, 0, 0))
    for column in ("class", "SLO", "arrivals", "met", "admitted met", "rejected", "dropped", "p99 ms", "acc"):
        classes.add_column(column, justify="left" if column in ("class", "SLO") else "right")
    for c in report.classes:
        latency = "any" if c.latency_slo_ms is None else f"{c.latency_slo_ms:g}ms"
        accuracy = "" if c.min_accuracy is None else f"/{c.min_accuracy:g}"
        classes.add_row(
            c.name,
            latency + accuracy + (" (b.e.)" if c.best_effort else ""),
            f"{c.arrivals:,}",
            _pct(c.attainment),
            _pct(c.attainment_admitted),
            f"{c.rejected:,}",
            f"{c.dropped:,}",
            _ms(c.p99_ms),
            _num(c.accuracy, 3),
        )
    console.print(classes)

    variants = Table(title="By variant", box=box.SIMPLE_HEAD, pad_edge=False, padding=(0, 1, 0, 0))
    for column in ("variant", "acc", "cost", "selected", "met", "p99 ms", "batch", "CPU-s", "replicas", "corr"):
        variants.add_column(column, justify="left" if column == "variant" else "right")
    for v in report.variants:
        variants.add_row(
            v.key,
            _num(v.accuracy, 3),
            _cost(v.cost_cpu_s_per_1k),
            f"{v.selected:,}",
            _pct(v.attainment),
            _ms(v.p99_ms),
            "-" if v.mean_batch_rows is None else f"{v.mean_batch_rows:.1f}",
            f"{v.cpu_s:,.1f}",
            f"{v.final_replicas}/{v.max_replicas}",
            f"{v.final_correction:.2f}",
            style="" if v.selected or v.max_replicas else "dim",
        )
    console.print(variants)
    console.print(
        "[dim]SLO: latency/minimum accuracy; met: served within the SLO / selected; batch: mean rows; "
        "replicas: at the end / peak; corr: observed / profiled service time; cost: CPU-s per 1k rows[/]"
    )
    _print_replicas(report)


def _print_replicas(report: SimReport) -> None:
    from rich import box
    from rich.table import Table

    from sloserve.cli.output import console

    samples = report.replicas
    if len(samples) < 2:
        return
    used = [key for key in samples[0].replicas if any(s.replicas[key] for s in samples)]
    busiest = sorted(used, key=lambda key: -max(s.replicas[key] for s in samples))[:5]
    shown = [key for key in used if key in busiest]
    table = Table(title="Over time", box=box.SIMPLE_HEAD, pad_edge=False, padding=(0, 1, 0, 0))
    table.add_column("t (s)", justify="right")
    table.add_column("rate/s", justify="right")
    table.add_column("met", justify="right")
    table.add_column("CPUs", justify="right")
    for key in shown:
        table.add_column(key, justify="right")
    if len(used) > len(shown):
        table.add_column("others", justify="right")
    step = max(1, len(samples) // 20)
    picked = list(samples[::step])
    if picked[-1] is not samples[-1]:
        picked.append(samples[-1])
    windows = {round(w.end_s, 9): w for w in report.windows}
    for s in picked:
        w = windows.get(round(s.t_s, 9))
        rate = _rate(w.arrivals / (w.end_s - w.start_s)) if w and w.end_s > w.start_s else ""
        met = _pct(w.attainment) if w else ""
        cells = [f"{s.t_s:g}", rate, met, f"{s.cpus:,}", *(str(s.replicas[key]) for key in shown)]
        if len(used) > len(shown):
            cells.append(str(sum(s.replicas[key] for key in used if key not in busiest)))
        table.add_row(*cells)
    console.print(table)
    actions: dict[str, int] = {}
    for event in report.scaling:
        actions[event.action] = actions.get(event.action, 0) + 1
    if actions:
        console.print("Autoscaler decisions: " + ", ".join(f"{k} {v}" for k, v in sorted(actions.items())))
