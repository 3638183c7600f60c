"""Paired A/B of two sloserve servers under the same open load: for effects smaller than this machine's drift.

    python benchmarks/paired.py --rate 5900 [--model digits] [--workdir DIR] [--reps 8] [--seconds 3]
                                [--path modelless|VERSION] [--b-path VERSION] [--a-env JSON] [--b-env JSON]
                                [--a-config JSON] [--b-config JSON] [--a-running V,V] [--b-running V,V]
                                [--tight-ms 5] [--stall-ms 0 [--stall-every-ms 0]]

On the 2-core machine the same configuration measures 150-235 µs of server CPU per query in
consecutive 5 s runs, and whole phases run 40% slower than an hour before: a difference of 5-10%
between two builds or settings is invisible in `slo.py`'s two runs per cell. This starts two servers
side by side on copies of one registered model (`slo.py --workdir` registers it; the same DIR reuses
it), A and B, differing only in their environment or their copy of the model config (`--b-config
'{"dynamic_batching": {"max_slo_hold_us": 0}}'`): `--a-env '{"PYTHONPATH": "/tmp/old/src"}'` runs an
older checkout (`git worktree add /tmp/old REV`) against this one, or an environment variable the code
reads, or with `--b-path fp32` model-less (A) against the same server pinned to `fp32` (B). Each rep runs the same seeded open-loop Poisson load (`slo.py`'s generator and SLO classes,
half tight, half loose, 256 connections as in `slo.py`) against A and B back to back, alternating which goes first, 1 s of warm-up
and `--seconds` measured each; drift hits both alike, and the paired differences show it.

The server process itself matters too: near the knee whichever server was started first did better
in both of two runs at 60% of `digits_wide`'s capacity, and the one started second in both at 100%,
by 5-13 points of attainment, whichever build each ran. So the reps come in two halves, and for the
second the servers are started again with A and B in each other's places (start order, model copy,
ports); the summary pools both halves and prints the attainment by place, which shows that effect
(`--no-swap`: one half, A started first).

It prints each rep's server CPU per query (the front end's own process), attainment, p50 and p99, the
misses (answered late, with how many of those the server itself judged late in brackets, refused with 429, dropped with 504, other), the host's stops of the server over
the run and its warm-up (`sloserve_event_loop_stalls_total`: how many, and how long in all), the rows per
batch it ran over the same time (`sloserve_inference_count_total` / `sloserve_execution_count_total`), how busy
the load generator was (its CPU over the measured seconds), then the means and the paired A - B differences: their
median and in how many reps A was cheaper. `--a-running int8-static,fp16` starts those variants on server A before
each run (one pinned query each), as the fixed configurations of `slo.py`'s rotation leave theirs running beside
model-less.
"""

from __future__ import annotations

import argparse
import collections
import json
import shutil
import signal
import sqlite3
import statistics
import sys
from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Console
from rich.table import Table

sys.path.insert(0, str(Path(__file__).resolve().parent))
import slo  # the benchmark beside this file: its generator, server start and SLO classes

console = Console()


def copy_model(base: Path, target: Path) -> tuple[Path, Path]:
    """A copy of a registered model's repository and registry, the registry's rows moved to the copy's path."""
    if target.exists():
        shutil.rmtree(target)
    shutil.copytree(base / "repo", target / "repo")
    shutil.copytree(base / "home", target / "home")
    old, new = str((base / "repo").resolve()), str((target / "repo").resolve())
    with sqlite3.connect(target / "home" / "registry.sqlite3") as db:
        tables = [row[0] for row in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
        for table in tables:
            columns = [row[1] for row in db.execute(f"PRAGMA table_info({table})")]
            if "repository" in columns:
                db.execute(f"UPDATE {table} SET repository = ? WHERE repository = ?", (new, old))
    return target / "repo", target / "home"


def patch_config(repo: Path, model: str, patch: dict[str, Any]) -> None:
    """Merge ``patch`` into the copied model's config.json (one level deep: a dict value updates that section)."""
    if not patch:
        return
    path = repo / model / "config.json"
    config = json.loads(path.read_text())
    for key, value in patch.items():
        if isinstance(value, dict) and isinstance(config.get(key), dict):
            config[key].update(value)
        else:
            config[key] = value
    path.write_text(json.dumps(config, indent=2))


def start_versions(port: int, model: str, versions: list[str], row: list[float]) -> None:
    """Start ``versions`` on the server (a cold start each, unless running): one pinned query each."""
    import httpx

    body = {"inputs": [{"name": "input", "shape": [1, len(row)], "datatype": "FP32", "data": row}]}
    for version in versions:
        url = f"http://127.0.0.1:{port}/v2/models/{model}/versions/{version}/infer"
        response = httpx.post(url, json=body, timeout=60)
        if response.status_code != 200:
            raise SystemExit(f"could not start {version}: {response.status_code} {response.text[:300]}")


def measure(
    server: tuple[Any, int, int], load: dict[str, Any], seconds: float, seed: int, classes: list[slo.SloClass]
) -> dict[str, Any]:
    proc, port, metrics_port = server
    pid = proc.pid
    counters = slo.server_counters(metrics_port)
    measured = slo.generate(**load, port=port, warmup=1.0, seconds=seconds, seed=seed, cpu_pid=pid)
    after = slo.server_counters(metrics_port)
    stalls_s = slo.stalls_between(
        (int(counters["event_loop_stalls"]), counters["event_loop_stalled_seconds"]),
        (int(after["event_loop_stalls"]), after["event_loop_stalled_seconds"]),
    )
    batches = after["execution_count"] - counters["execution_count"]
    rows_per_batch = (after["inference_count"] - counters["inference_count"]) / max(batches, 1.0)
    before, after = measured["cpu"]
    results = measured["results"]
    sent = max(len(results), 1)
    met = late = refused = dropped = 0
    for klass, status, ms, _ in results:
        met += status == 200 and ms <= classes[klass].latency_ms
        late += status == 200 and ms > classes[klass].latency_ms
        refused += status == 429
        dropped += status == 504
    latencies = sorted(ms for _, _, ms, _ in results) or [0.0]
    return {
        "server_us": (after.get(pid, 0.0) - before.get(pid, 0.0)) / sent * 1e6,
        "attainment": met / sent,
        "p50_ms": latencies[len(latencies) // 2],
        "p99_ms": latencies[int(len(latencies) * 0.99)],
        "misses": f"{late} ({measured.get('seen_late', 0)}) / {refused} / {dropped} / {sent - met - late - refused - dropped}",
        "stalls": stalls_s,
        "rows_per_batch": rows_per_batch,
        "generator_busy": measured.get("generator_busy", 0.0),
        "variants": " ".join(
            f"{v}:{n / sent:.0%}" for v, n in collections.Counter(r[3] for r in results if r[3]).most_common(3)
        ),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rate", type=float, required=True, help="queries per second (open loop, Poisson)")
    parser.add_argument("--model", default="digits", choices=["digits", "digits_wide"])
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/sloserve-bench"), help="slo.py's --workdir")
    parser.add_argument("--reps", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=3.0, help="measured seconds per server per rep")
    parser.add_argument("--path", default="modelless", help="modelless (SLOs sent), or a version to pin (no SLOs)")
    parser.add_argument(
        "--b-path", default=None, help="server B's path if not --path's (e.g. fp32: model-less vs pinned)"
    )
    parser.add_argument("--a-env", default="{}", help="JSON object: environment variables server A adds")
    parser.add_argument("--b-env", default="{}", help="JSON object: environment variables server B adds")
    parser.add_argument(
        "--a-config",
        default="{}",
        help='JSON merged into server A\'s copy of the model config, e.g. \'{"dynamic_batching": {"max_slo_hold_us": 0}}\'',
    )
    parser.add_argument("--b-config", default="{}", help="the same for server B")
    parser.add_argument(
        "--a-running",
        default="",
        help="versions to start on server A before each run, one pinned query each (e.g. int8-static,fp16): in "
        "slo.py's full run the fixed configurations leave their variants running for ~10 s, beside model-less",
    )
    parser.add_argument("--b-running", default="", help="the same for server B")
    parser.add_argument("--tight-ms", type=float, default=5.0, help="the tight class's latency SLO (loose: 5x)")
    parser.add_argument("--connections", type=int, default=256, help="open-loop connections (slo.py's default)")
    parser.add_argument(
        "--stall-ms",
        type=float,
        default=0.0,
        help="stop each server (SIGSTOP) this long halfway through each measured run: a VM's hiccup, on cue",
    )
    parser.add_argument(
        "--stall-every-ms",
        type=float,
        default=0.0,
        help="with --stall-ms: stop the server at random moments this far apart on average (seeded, the same for A "
        "and B), warm-up included, instead of once: a noisy hour, on cue",
    )
    parser.add_argument(
        "--no-swap", dest="swap", action="store_false", help="keep A started first for every rep (no second half)"
    )
    args = parser.parse_args()
    envs = {"A": json.loads(args.a_env), "B": json.loads(args.b_env)}
    running = {"A": [v for v in args.a_running.split(",") if v], "B": [v for v in args.b_running.split(",") if v]}
    patches = {"A": json.loads(args.a_config), "B": json.loads(args.b_config)}
    base = args.workdir / args.model
    with console.status(f"registering {args.model} (once per workdir)"):
        records, x = slo.register(args.model, base / "repo", base / "home", 0.2)
    classes = slo.classes_for(records, 0.0, args.tight_ms)
    rows = [row.tolist() for row in x[:32]]
    loads = {
        name: dict(
            kind="open",
            path=f"/v2/models/{args.model}/infer"
            if chosen == "modelless"
            else f"/v2/models/{args.model}/versions/{chosen.removesuffix('+slo')}/infer",
            rows=rows,
            connections=args.connections,
            rate=args.rate,
            send_slo=chosen == "modelless" or chosen.endswith("+slo"),
            classes=[c.__dict__ for c in classes],
            stall_ms=args.stall_ms,
            stall_every_ms=args.stall_every_ms,
        )
        for name, chosen in (("A", args.path), ("B", args.b_path or args.path))
    }
    runs: dict[str, list[dict[str, Any]]] = {"A": [], "B": []}
    by_place: dict[int, list[float]] = {1: [], 2: []}
    paths = loads["A"]["path"] if loads["A"] == loads["B"] else f"A {loads['A']['path']}, B {loads['B']['path']}"
    stalled = f", stopped {args.stall_ms:g} ms halfway" if args.stall_ms else ""
    if args.stall_ms and args.stall_every_ms:
        stalled = f", stopped {args.stall_ms:g} ms every {args.stall_every_ms:g} ms on average"
    table = Table(title=f"{args.model}, {paths}, {args.rate:,.0f} queries/s, {args.seconds:g} s per run{stalled}")
    columns = (
        "rep",
        "server (started)",
        "server µs/query",
        "attainment",
        "p50 ms",
        "p99 ms",
        "late (server saw)/429/504/other",
    )
    for column in (*columns, "rows/batch", "host stops", "generator busy", "served by (of all sent)"):
        table.add_column(column, justify="right")
    halves = ("AB", "BA") if args.swap and args.reps >= 2 else ("AB",)
    rep = 0
    for half, places in enumerate(halves):
        servers: dict[str, tuple[Any, int, int]] = {}
        try:
            for place, name in enumerate(places, 1):
                repo, home = copy_model(base, args.workdir / "paired" / args.model / f"place{place}")
                patch_config(repo, args.model, patches[name])
                metrics_port = slo.free_port()
                log = home.parent / "server.log"
                servers[name] = (
                    *slo.start_server(repo, home, log, extra_env=envs[name], metrics_port=metrics_port),
                    metrics_port,
                )
            for _ in range(args.reps // len(halves) + (half < args.reps % len(halves))):
                with console.status(f"rep {rep + 1}/{args.reps}"):
                    for name in "AB" if rep % 2 == 0 else "BA":
                        start_versions(servers[name][1], args.model, running[name], rows[0])
                        run = measure(servers[name], loads[name], args.seconds, rep, classes)
                        runs[name].append(run)
                        place = places.index(name) + 1
                        by_place[place].append(run["attainment"])
                        table.add_row(
                            str(rep + 1),
                            f"{name} ({'1st' if place == 1 else '2nd'})",
                            f"{run['server_us']:.0f}",
                            f"{run['attainment']:.2%}",
                            f"{run['p50_ms']:.2f}",
                            f"{run['p99_ms']:.2f}",
                            str(run["misses"]),
                            f"{run['rows_per_batch']:.1f}",
                            str(run["stalls"]),
                            f"{run['generator_busy']:.0%}",
                            str(run["variants"]),
                        )
                rep += 1
        finally:
            for proc, _, _ in servers.values():
                proc.send_signal(signal.SIGTERM)
                proc.wait(60)
    console.print(table)
    if len(halves) == 2:
        console.print(
            "by place, whichever build: the server started first "
            f"{statistics.mean(by_place[1]):.2%}, second {statistics.mean(by_place[2]):.2%}"
        )
    for name in "AB":
        us = [r["server_us"] for r in runs[name]]
        attainment = [r["attainment"] for r in runs[name]]
        rows = statistics.median(r["rows_per_batch"] for r in runs[name])
        console.print(
            f"{name} {json.dumps(envs[name])}{' ' + json.dumps(patches[name]) if patches[name] else ''}{' running ' + ','.join(running[name]) if running[name] else ''}: server {statistics.mean(us):.0f} µs/query (median "
            f"{statistics.median(us):.0f}), attainment {statistics.mean(attainment):.2%} (lowest {min(attainment):.2%}), "
            f"{rows:.1f} rows a batch (median)"
        )
    diffs = [a["server_us"] - b["server_us"] for a, b in zip(runs["A"], runs["B"], strict=True)]
    if diffs:
        cheaper = sum(d < 0 for d in diffs)
        console.print(
            f"paired A - B: median {statistics.median(diffs):+.1f} µs/query, mean {np.mean(diffs):+.1f}; "
            f"A cheaper in {cheaper} of {len(diffs)} reps"
        )


if __name__ == "__main__":
    main()
