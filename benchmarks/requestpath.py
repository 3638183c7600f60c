"""The request path's own CPU per query, in process: for changes of a microsecond or two.

    python benchmarks/requestpath.py [--model digits] [--workdir DIR] [--wave 16] [--rounds 1500] [--reps 9]
                                     [--against SRC] [--tight-ms 5] [--pinned-slo] [--maxbatch]
                                     [--running V,V] [--config JSON] [--http]

Served benchmarks (`paired.py`) see the front end's cost through sockets, the load generator and the VM's
drift: differences under ~3 µs a query drown there. This runs a `Server` (the composition `sloserve serve`
uses) on a copy of a model registered by `slo.py --workdir` (the same DIR reuses it), without its ports:
requests go straight to the HTTP app, in waves of `--wave` concurrent requests (half tight, half loose for
model-less, `slo.py`'s classes; the same rows pinned to `fp32` without SLO parameters), and each rep's
CPU time of the loop's thread (`time.thread_time`) over `--rounds` waves is divided by the queries. Everything
from the body's bytes to the encoded answer counts: decoding, admission, selection, batching, the inline
batch, the answer; the sockets do not.

Model-less's waves hold their batches or not depending on the state they find the event loop in, and keep it
there: back to back after busy waves (the loop over 85% busy) nothing is held and the loop stays busy, as
at 60-80% of capacity served; after waves that held, the tight class is held ~2 ms a wave (the loop idles),
and every query pays a wake-up of the loop and caches gone cold, as at 20% served (there `fp32` pinned, not
held, costs ~27 µs a query in process and `maxbatch` ~33). Without `--maxbatch` they follow `fp32` pinned's
busy waves; with it, `maxbatch`'s held waves run first in each rep, so model-less runs held, and
model-less - maxbatch is what a query pays for its SLO at 20% (+3.0-3.7 µs in process, about what it
pays served).

With `--http` each request's bytes, as `slo.py`'s load generator sends them, are fed to one of the HTTP
server's connections instead (one per request of a wave, its transport a sink): the parser, the handler's
call and the answer's head count too, everything but the sockets and the event loop's polling (`digits`,
session 27, waves of 12: model-less ~36 µs a query, `fp32` pinned ~34, against ~28.5 and ~26 without:
the connection layer is ~7.5 µs of a served query's ~40, the kernel's recv and send ~7).

It prints the median and lowest per path, and the paired model-less - pinned difference per rep. With
`--against SRC` (e.g. the `src` of `git worktree add /tmp/base HEAD`) the same measurement also runs with
that source tree first on `PYTHONPATH`, alternating three times, and prints both: the two builds compared
on one machine in one run.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve()
sys.path.insert(0, str(HERE.parent))
import paired  # noqa: E402  (the model copy)
import slo  # noqa: E402  (the registration and SLO classes)


async def measure(
    repo: Path, home: Path, model: str, bodies: dict[str, list[tuple[str, bytes, bytes]]], args: Any
) -> Any:
    import uvloop  # noqa: F401  (the server's loop; imported here so --help needs none of it)

    from sloserve.app import Server
    from sloserve.server.http.app import HttpApp
    from sloserve.server.http.serve import HttpRequest
    from sloserve.settings import Settings

    server = Server(Settings(repository=repo, home=home, autoscale_interval_s=0), repo)
    await server.lifecycle.load_all()
    server.dataplane.set_ready(True)
    app = HttpApp(server.dataplane)
    headers = [(b"content-type", b"application/json")]
    per_query: dict[str, list[float]] = {name: [] for name in bodies}
    failed: dict[str, int] = dict.fromkeys(bodies, 0)

    from sloserve.server.http import serve

    later_type = getattr(serve, "Later", None)  # builds before the batcher's turn answered HTTP have none
    loop = asyncio.get_running_loop()
    if args.http:  # the connection layer too: one keep-alive connection per request of a wave
        http = serve.HttpServer(app, serve.bind("127.0.0.1", 0), max_body_bytes=1 << 20, grace_s=0.1)
        await http.start()  # listening, unused: its connections are made here
        sinks = [_Sink() for _ in range(args.wave)]
        connections = [serve._Connection(http, app) for _ in sinks]
        for connection, sink in zip(connections, sinks, strict=True):
            connection.connection_made(sink)  # type: ignore[arg-type]

    def check(name: str, response: Any) -> None:
        if response.status != 200:
            failed[name] += 1

    async def http_wave(name: str, items: list[tuple[str, bytes, bytes]]) -> None:
        """One wave as bytes received on the connections, answered when each connection has written its answer."""
        done = loop.create_future()
        left = len(items)

        def written(data: bytes) -> None:
            nonlocal left
            if data[9:12] != b"200":
                failed[name] += 1
            left -= 1
            if left == 0:
                done.set_result(None)

        for connection, sink, (_, _, wire) in zip(connections, sinks, items, strict=True):
            sink.written = written
            connection.data_received(wire)
        await done

    async def wave(name: str, items: list[tuple[str, bytes, bytes]]) -> None:
        """One wave, its answers taken as the HTTP connection takes them: one handed over from the batcher's turn
        (a `Later`) by a callback, not by a task woken for it; a coroutine's by awaiting it."""
        awaited, laters = [], []
        for path, body, _ in items:
            outcome = app(HttpRequest("POST", path, headers, body, time.monotonic()))
            (laters if later_type is not None and isinstance(outcome, later_type) else awaited).append(outcome)
        done = loop.create_future()
        left = 0

        def answered(response: Any) -> None:
            nonlocal left
            check(name, response)
            left -= 1
            if left == 0:
                done.set_result(None)

        for later in laters:  # none is answered before this task awaits: the batcher runs in its own turn
            if later.response is None:
                left += 1
                later.then(answered)
            else:
                check(name, later.response)
        for response in await asyncio.gather(*awaited):
            check(name, response)
        if left:
            await done

    try:
        for version in args.running:  # started by one pinned query each, as slo.py's rotation leaves them
            _, body, _ = bodies["fp32 pinned"][0]
            started = await app(
                HttpRequest("POST", f"/v2/models/{model}/versions/{version}/infer", headers, body, time.monotonic())
            )
            if started.status != 200:
                raise SystemExit(f"could not start {version}: {started.status} {started.body[:300]!r}")
        for _ in range(args.reps):
            for name, items in bodies.items():  # alternating: drift hits both paths alike
                run = http_wave if args.http else wave
                for _ in range(100):  # warm: caches, the chooser's kept choices, the batcher's AIMD
                    await run(name, items)
                began = time.thread_time()
                for _ in range(args.rounds):
                    await run(name, items)
                per_query[name].append((time.thread_time() - began) / (args.rounds * len(items)) * 1e6)
    finally:
        if args.http:
            await http.stop()
        await server.stop()
    return {"us": per_query, "failed": failed}


class _Sink:
    """A connection's transport that hands what is written to ``written``."""

    def __init__(self) -> None:
        self.written: Any = None

    def write(self, data: bytes) -> None:
        self.written(data)

    def writelines(self, items: list[bytes]) -> None:
        self.written(b"".join(items))

    def is_closing(self) -> bool:
        return False

    def pause_reading(self) -> None: ...

    def resume_reading(self) -> None: ...

    def close(self) -> None: ...

    def abort(self) -> None: ...


def run_here(args: argparse.Namespace) -> dict[str, Any]:
    """One measurement in this process (the source tree on its ``sys.path``)."""
    import numpy as np
    import uvloop

    base = args.workdir / args.model
    records, _ = slo.register(args.model, base / "repo", base / "home", 0.2)
    classes = slo.classes_for(records, 0.0, args.tight_ms)
    repo, home = paired.copy_model(base, args.workdir / "requestpath" / args.model)
    paired.patch_config(repo, args.model, json.loads(args.config))
    rows = np.load(base / f"{args.model}-rows.npy")

    def query(path: str, params: dict[str, Any], i: int) -> tuple[str, bytes, bytes]:
        """(path, body, the whole request as `slo.py`'s load generator sends it)."""
        wire = slo.request_bytes(path, rows[i % len(rows)].tolist(), params)
        return path, wire[wire.index(b"\r\n\r\n") + 4 :], wire

    slos = [{"latency_slo_ms": c.latency_ms, "min_accuracy": c.min_accuracy} for c in classes]
    pinned = f"/v2/models/{args.model}/versions/fp32/infer"
    bodies: dict[str, list[tuple[str, bytes, bytes]]] = {}
    if args.maxbatch:  # slo.py's plain max-batch + 2 ms window baseline (fp32 as its own model, no SLOs), run
        # just before model-less's waves: see the docstring
        bodies["maxbatch"] = [query(f"/v2/models/{args.model}_maxbatch/infer", {}, i) for i in range(args.wave)]
    bodies["model-less"] = [query(f"/v2/models/{args.model}/infer", slos[i % 2], i) for i in range(args.wave)]
    bodies["fp32 pinned"] = [query(pinned, {}, i) for i in range(args.wave)]
    if args.pinned_slo:  # the SLO's own handling (admission, deadline, holds, drops), without selection
        bodies["pinned + SLO"] = [query(pinned, slos[i % 2], i) for i in range(args.wave)]
    return uvloop.run(measure(repo, home, args.model, bodies, args))


def run_with(src: str | None, args: argparse.Namespace) -> dict[str, Any]:
    """One measurement in a child process with ``src`` first on its path (None: this checkout)."""
    env = dict(os.environ)
    if src:
        env["PYTHONPATH"] = os.pathsep.join(p for p in (src, env.get("PYTHONPATH")) if p)
    argv = [sys.argv[0], *(a for a in sys.argv[1:]), "--child"]
    done = subprocess.run([sys.executable, *argv], env=env, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise SystemExit(f"the measurement with {src or 'this checkout'} failed:\n{done.stderr[-3000:]}")
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def summary(label: str, result: dict[str, Any]) -> None:
    us = result["us"]
    for name, values in us.items():
        failed = result["failed"][name]
        note = f" ({failed} answers not 200: an SLO refused or dropped)" if failed else ""
        print(f"{label}{name:12s} median {statistics.median(values):5.1f} µs/query, lowest {min(values):5.1f}{note}")
    diffs = [a - b for a, b in zip(us["model-less"], us["fp32 pinned"], strict=True)]
    print(f"{label}model-less - pinned: median {statistics.median(diffs):+.2f} µs/query over {len(diffs)} reps")
    if "pinned + SLO" in us:
        diffs = [a - b for a, b in zip(us["pinned + SLO"], us["fp32 pinned"], strict=True)]
        print(f"{label}pinned + SLO - pinned: median {statistics.median(diffs):+.2f} µs/query")
    if "maxbatch" in us:
        diffs = [a - b for a, b in zip(us["model-less"], us["maxbatch"], strict=True)]
        print(f"{label}model-less - maxbatch: median {statistics.median(diffs):+.2f} µs/query")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="digits", choices=["digits", "digits_wide"])
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/sloserve-bench"), help="slo.py's --workdir")
    parser.add_argument("--wave", type=int, default=16, help="requests in flight together (one batch, mostly)")
    parser.add_argument("--rounds", type=int, default=1500, help="waves per rep")
    parser.add_argument("--reps", type=int, default=9)
    parser.add_argument("--tight-ms", type=float, default=5.0, help="the tight class's latency SLO (loose: 5x)")
    parser.add_argument("--against", default=None, help="another source tree (its src/) to measure the same way")
    parser.add_argument(
        "--pinned-slo", action="store_true", help="also fp32 pinned with the SLO parameters: the SLO's cost apart"
    )
    parser.add_argument(
        "--config",
        default="{}",
        help="JSON object merged into the model's config.json, as paired.py's --a-config (e.g. holds off: "
        '\'{"dynamic_batching": {"max_slo_hold_us": 0}}\')',
    )
    parser.add_argument(
        "--maxbatch",
        action="store_true",
        help="also slo.py's maxbatch (fp32 as its own model, a 2 ms window, no SLOs): its batches wait on a timer",
    )
    parser.add_argument(
        "--running",
        type=lambda text: [v for v in text.split(",") if v],
        default=[],
        help="versions to start first (e.g. int8-static,fp16), as slo.py's fixed configurations leave them",
    )
    parser.add_argument(
        "--http",
        action="store_true",
        help="feed each request's bytes to an HTTP connection (the parser, the handler's call, the answer's head) "
        "instead of calling the app: everything but the sockets and the event loop's polling",
    )
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(run_here(args)))
        return
    if args.against is None:
        summary("", run_here(args))
        return
    runs: dict[str, list[dict[str, Any]]] = {"this checkout": [], args.against: []}
    for turn in range(3):
        for src in (None, args.against) if turn % 2 == 0 else (args.against, None):
            runs[src or "this checkout"].append(run_with(src, args))
            print(f"measured {src or 'this checkout'} ({turn + 1} of 3)", file=sys.stderr)
    for label, results in runs.items():
        pooled = {
            "us": {name: [v for r in results for v in r["us"][name]] for name in results[0]["us"]},
            "failed": {name: sum(r["failed"][name] for r in results) for name in results[0]["failed"]},
        }
        summary(f"{label}: ", pooled)


if __name__ == "__main__":
    main()
