"""Where a bad moment's time goes: each query's path through one server, per window of its worst rep.

    python benchmarks/timeline.py --rate 11000 [--model digits] [--workdir DIR] [--reps 12] [--seconds 3]
                                  [--path modelless|VERSION] [--window-ms 10] [--env JSON]

Starts one `sloserve serve` on a copy of a model registered by `slo.py --workdir` (the same DIR reuses it)
with a `sitecustomize` on its `PYTHONPATH` (after any `--env` gives) that records, without changing the
server's path (its handler still runs in the read that completed a request, its answer is still handed over
from the batcher's turn): for every HTTP request, when its bytes were parsed (`received_s`), when its handler
started and when its answer was ready; every look of the event loop's `LoopLag` (lag, stall, busy share,
requests in flight, and the loop thread's time waiting for a CPU from `/proc/thread-self/schedstat`); every
batcher hold; every inline batch (rows, variant, its compute, and its time with the answers it writes); and
every response's write (its send).
Then runs `--reps` seeded open-loop reps of `slo.py`'s load (half tight, half loose) and records each query's
scheduled time, send, answer and status client-side (429s split by why: waited to be read, the loop's lag or
a stall, its backlog, no variant in time). It prints one line per rep and, for the worst rep, per window of
`--window-ms` where a query missed: queries sent and the share within SLO, the server's wait from parse to
handler and the handler's time (hold, batch, answer) at p50 / p90, the answers by status, the loop's looks,
the time held, the inline batches, and the writes.

What it showed (`digits`, model-less, session 26, 20,500-22,000 queries/s: about the event loop's capacity
that hour): in a good 20 ms window ~10 inline batches of ~45 rows take 8 ms with their answers (the compute
itself 0.4 ms: the answers' encoding and sends are the batch's cost), a write takes ~7 µs, and the loop looks
~0.3 ms late. The load is bistable: some reps stay there (99.7%), others collapse. A burst makes the turns
longer (lag 2-4 ms), every one of the client's 256 connections has a request in flight, and the handler takes
10-14 ms while nothing is refused yet; then the lag passes the tight class's 5 ms and stays at 8-10 ms, the
loop refusing the tight half and running 3-5 batches a window, for hundreds of ms or to the end of the rep.
It handles as many requests a window as before at a busy share of 1.00, half of them refusals: each costs
more there (a write 9.5-12 µs against ~7). Nothing is held in those windows. Earlier (11,000 queries/s,
before the handler ran in the read callback): a query needed about three turns of the loop, and a turn's
length is the loop's fixed cost over its idle share. The recording costs a few µs a query; compare builds
with `paired.py`, not with this.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import paired  # the model copy
import slo  # the registration, SLO classes and server start

HERE = Path(__file__).resolve()
RECORDER = """
import atexit, os, sys, time
if "serve" in sys.argv and os.environ.get("SLOSERVE_TIMELINE"):
    from sloserve.server.http import serve as _serve
    _rows = []
    _call = _serve._Connection._call
    _clock = time.perf_counter  # CLOCK_MONOTONIC, as the server's clock and the generator's

    def _timed(self, request):  # not a coroutine: the server's own path (a Later handed over) stays as it is
        started = _clock()
        outcome = _call(self, request)
        done = lambda response: _rows.append((request.received_s or started, started, _clock(), response.status))
        if isinstance(outcome, _serve.Later):  # one callback each: the connection's goes on a Later of ours
            ours = _serve.Later()
            ours.work = outcome  # cancelled with ours
            outcome.then(lambda response: (done(response), ours.resolve(response)))
            return ours

        async def _awaited():
            response = await outcome
            done(response)
            return response

        return _awaited()

    _serve._Connection._call = _timed
    _write0, _writes = _serve._Connection._write, []

    def _written(self, response, received, keep_alive):
        t = _clock()
        _write0(self, response, received, keep_alive)
        _writes.append((t, _clock() - t))

    _serve._Connection._write = _written
    from sloserve.dataplane import batcher as _batcher, loop_load as _loop_load
    _looks, _batches = [], []
    _look, _inline = _loop_load.LoopLag._look, _batcher.DynamicBatcher._run_inline

    _sched = []

    def _looked(self):  # and the loop thread's time waiting for a CPU (/proc schedstat, ns), ~1 us a look
        _look(self)
        if not _sched:
            _sched.append(os.open("/proc/thread-self/schedstat", os.O_RDONLY))
        waited = int(os.pread(_sched[0], 64, 0).split()[1]) / 1e6
        _looks.append((_clock(), self.lag_ms, self.stall_ms, self.busy, self.in_flight, waited))

    _variants = {}
    from sloserve.dataplane import replica_set as _replica_set
    _run_inline = _replica_set.ReplicaSet.run_inline
    _computed = [0.0]

    def _compute(self, inputs):
        started = _clock()
        try:
            return _run_inline(self, inputs)
        finally:
            _computed[0] = _clock() - started

    _replica_set.ReplicaSet.run_inline = _compute
    _wait_window, _holds = _batcher.DynamicBatcher._wait_window, []

    async def _held(self):
        started = _clock()
        held = await _wait_window(self)
        if held:
            _holds.append((started, _clock()))
        return held

    _batcher.DynamicBatcher._wait_window = _held

    def _ran(self, batch):
        started = _clock()
        _computed[0] = 0.0
        _inline(self, batch)
        name = str(self._replicas.replicas[0].id).rsplit("/", 1)[0] if self._replicas.replicas else "?"
        _batches.append(
            (started, _clock(), sum(w.rows for w in batch), _variants.setdefault(name, len(_variants)), _computed[0])
        )

    _loop_load.LoopLag._look, _batcher.DynamicBatcher._run_inline = _looked, _ran

    def _save():
        import numpy
        out = os.environ["SLOSERVE_TIMELINE"]
        numpy.save(out, numpy.array(_rows))
        numpy.save(out + ".looks.npy", numpy.array(_looks).reshape(-1, 6))
        numpy.save(out + ".batches.npy", numpy.array(_batches).reshape(-1, 5))
        numpy.save(out + ".holds.npy", numpy.array(_holds).reshape(-1, 2))
        numpy.save(out + ".writes.npy", numpy.array(_writes).reshape(-1, 2))
        with open(out + ".variants.txt", "w") as names:
            names.write("\\n".join(_variants))

    atexit.register(_save)
"""

_WHY = {b"for the server to read it": 1, b"saturated": 4, b"event loop": 2}
"""429 reasons by their message, first match (else 3: no variant predicted in time). The lag's and the stall's
messages also say how long the request waited to be read: only the first, which refuses on that alone, says
"for the server to read it"."""


async def _open_loop(
    port: int, path: str, bodies: list[list[bytes]], rate: float, seconds: float, warmup: float, seed: int
) -> tuple[float, np.ndarray[Any, Any]]:
    """(absolute perf_counter of the measured part's start, rows of scheduled, sent, done, status, class,
    why), times relative to that start, for the queries scheduled after the warm-up."""
    rng = np.random.default_rng(seed)
    n = int(rng.poisson(rate * (warmup + seconds)))
    times = np.sort(rng.uniform(0, warmup + seconds, n))
    which = rng.integers(0, len(bodies), n)
    rows = np.zeros((n, 6))
    start = time.perf_counter() + 0.05
    nxt = 0

    async def connection() -> None:
        nonlocal nxt
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        while nxt < n:
            i = nxt
            nxt += 1
            delay = start + times[i] - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            sent = time.perf_counter()
            writer.write(bodies[which[i]][i % len(bodies[which[i]])])
            head = await reader.readuntil(b"\r\n\r\n")
            length = int(re.search(rb"content-length: (\d+)", head, re.I).group(1))  # type: ignore[union-attr]
            body = await reader.readexactly(length)
            status = int(head[9:12])
            why = next((code for text, code in _WHY.items() if text in body), 3) if status == 429 else 0
            rows[i] = (times[i], sent - start, time.perf_counter() - start, status, which[i], why)
        writer.close()

    await asyncio.gather(*(connection() for _ in range(256)))
    kept = rows[times >= warmup]
    kept[:, :3] -= warmup
    return start + warmup, kept


def _generator_main(raw: str, out: str) -> None:
    import uvloop

    uvloop.install()
    args = json.loads(raw)
    bodies = [[b.encode("latin-1") for b in per] for per in args.pop("bodies")]
    origin, rows = asyncio.run(_open_loop(bodies=bodies, **args))
    np.save(out, np.vstack([np.full((1, 6), origin), rows]))


def _bodies(path: str, rows: list[list[float]], classes: list[slo.SloClass], send_slo: bool) -> list[list[str]]:
    out = []
    for c in classes:
        params = {"latency_slo_ms": c.latency_ms, "min_accuracy": c.min_accuracy} if send_slo else {}
        out.append([slo.request_bytes(path, row, params).decode("latin-1") for row in rows])
    return out


def _pct(values: np.ndarray[Any, Any], q: float) -> float:
    return float(np.percentile(values, q)) if len(values) else float("nan")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rate", type=float, required=True, help="queries per second (open loop, Poisson)")
    parser.add_argument("--model", default="digits", choices=["digits", "digits_wide"])
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/sloserve-bench"), help="slo.py's --workdir")
    parser.add_argument("--reps", type=int, default=12)
    parser.add_argument("--seconds", type=float, default=3.0, help="measured seconds per rep (after 1 s warm-up)")
    parser.add_argument("--path", default="modelless", help="modelless (SLOs sent), VERSION, or VERSION+slo")
    parser.add_argument("--window-ms", type=float, default=10.0)
    parser.add_argument("--tight-ms", type=float, default=5.0, help="the tight class's latency SLO (loose: 5x)")
    parser.add_argument("--env", default="{}", help="JSON object: environment variables the server adds")
    args = parser.parse_args()
    base = args.workdir / args.model
    records, x = slo.register(args.model, base / "repo", base / "home", 0.2)
    classes = slo.classes_for(records, 0.0, args.tight_ms)
    limits = np.array([c.latency_ms for c in classes])
    version = args.path.removesuffix("+slo")
    url = (
        f"/v2/models/{args.model}/infer"
        if args.path == "modelless"
        else f"/v2/models/{args.model}/versions/{version}/infer"
    )
    bodies = _bodies(url, [r.tolist() for r in x[:32]], classes, args.path == "modelless" or args.path.endswith("+slo"))
    with tempfile.TemporaryDirectory() as tmp:
        hook = Path(tmp) / "hook"
        hook.mkdir()
        (hook / "sitecustomize.py").write_text(RECORDER)
        server_rows = Path(tmp) / "server.npy"
        repo, home = paired.copy_model(base, args.workdir / "timeline" / args.model)
        env = {"SLOSERVE_TIMELINE": str(server_rows), **json.loads(args.env)}
        env["PYTHONPATH"] = os.pathsep.join(p for p in (env.get("PYTHONPATH"), str(hook)) if p)  # the recorder too
        proc, port = slo.start_server(repo, home, home.parent / "server.log", extra_env=env)
        reps = []
        try:
            for rep in range(args.reps):
                load = {"port": port, "path": url, "bodies": bodies, "rate": args.rate, "seconds": args.seconds,
                        "warmup": 1.0, "seed": rep}  # fmt: skip
                out = Path(tmp) / "rep.npy"
                subprocess.run([sys.executable, str(HERE), "_gen", json.dumps(load), str(out)], check=True)
                got = np.load(out)
                origin, rows = float(got[0, 0]), got[1:]
                met = (rows[:, 3] == 200) & ((rows[:, 2] - rows[:, 0]) * 1e3 <= limits[rows[:, 4].astype(int)])
                why = [int(np.sum(rows[:, 5] == code)) for code in (1, 2, 4, 3)]
                print(
                    f"rep {rep + 1}: {met.mean():.2%} within SLO; late {int(np.sum((rows[:, 3] == 200) & ~met))}, "
                    f"429 {sum(why)} (waited to be read {why[0]}, loop lag or stall {why[1]}, saturated {why[2]}, no variant {why[3]}), "
                    f"504 {int(np.sum(rows[:, 3] == 504))}",
                    flush=True,
                )
                reps.append((float(met.mean()), rep, origin, rows, met))
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(60)
        server = np.load(server_rows)
        looks = np.load(f"{server_rows}.looks.npy")
        batches = np.load(f"{server_rows}.batches.npy")
        variants = Path(f"{server_rows}.variants.txt").read_text().splitlines()
        holds = np.load(f"{server_rows}.holds.npy")
        writes = np.load(f"{server_rows}.writes.npy")
    attained, rep, origin, rows, met = min(reps, key=lambda r: r[0])
    step = args.window_ms / 1e3
    received, called, answered, status = (
        server[:, 0] - origin,
        server[:, 1] - origin,
        server[:, 2] - origin,
        server[:, 3],
    )
    print(f"\nworst rep {rep + 1} ({attained:.2%}), per {args.window_ms:g} ms window where a query missed:")
    looked = looks[:, 0] - origin
    ran = batches[:, 0] - origin
    print(
        "  ms  sent  met | parse->handler p50 p90 ms | handler p50 p90 ms | answered 200 429 504 |"
        " loop: lag ms, stall ms, busy, in flight, waited for a CPU | held ms |"
        " inline batches, rows, ms with answers, compute ms, by variant | writes, µs each"
    )
    for lo in np.arange(0.0, args.seconds, step):
        sent = (rows[:, 0] >= lo) & (rows[:, 0] < lo + step)
        if not sent.any() or met[sent].all():
            continue
        parsed = (received >= lo) & (received < lo + step)
        wait, run = (called - received)[parsed] * 1e3, (answered - called)[parsed] * 1e3
        done = (answered >= lo) & (answered < lo + step)
        print(
            f"{lo * 1e3:5.0f} {int(sent.sum()):5d} {met[sent].mean():4.0%} | {_pct(wait, 50):10.2f} {_pct(wait, 90):6.2f} |"
            f" {_pct(run, 50):8.2f} {_pct(run, 90):6.2f} | {int(np.sum(status[done] == 200)):10d}"
            f" {int(np.sum(status[done] == 429)):3d} {int(np.sum(status[done] == 504)):3d} |"
            f" {_window(looks, looked, lo, step)} | {_held_ms(holds - origin, lo, step):5.1f} |"
            f" {_batches(batches, ran, lo, step, variants)} | {_writes(writes - [origin, 0], lo, step)}"
        )


def _window(looks: np.ndarray[Any, Any], at: np.ndarray[Any, Any], lo: float, step: float) -> str:
    """The loop's looks in a window: lag (mean, max), stalls (sum), busy (last), requests in flight (max), and
    the share of the window its thread waited for a CPU."""
    inside = (at >= lo) & (at < lo + step)
    w = looks[inside]
    if not len(w):
        return "no look".rjust(36)
    first = int(np.argmax(inside))
    waited = (w[-1, 5] - looks[max(first - 1, 0), 5]) / (step * 1e3)
    return (
        f"{w[:, 1].mean():4.1f}-{w[:, 1].max():4.1f} {w[:, 2].sum():5.1f} {w[:, 3][-1]:4.2f} {int(w[:, 4].max()):4d}"
        f" {waited:4.0%}"
    )


def _writes(writes: np.ndarray[Any, Any], lo: float, step: float) -> str:
    """The responses written in a window (answers and refusals): how many, and the mean time of a write (the
    send system call, which on loopback does the receiver's TCP work too)."""
    w = writes[(writes[:, 0] >= lo) & (writes[:, 0] < lo + step)]
    return f"{len(w):3d} {w[:, 1].mean() * 1e6:5.1f}" if len(w) else "none"


def _held_ms(holds: np.ndarray[Any, Any], lo: float, step: float) -> float:
    """How long the batchers held batches for more requests within a window, summed (ms)."""
    return float(np.clip(np.minimum(holds[:, 1], lo + step) - np.maximum(holds[:, 0], lo), 0, None).sum() * 1e3)


def _batches(batches: np.ndarray[Any, Any], at: np.ndarray[Any, Any], lo: float, step: float, names: list[str]) -> str:
    """The inline batches started in a window: how many, their mean rows, their time with the answers and the
    compute alone summed, by variant."""
    b = batches[(at >= lo) & (at < lo + step)]
    if not len(b):
        return "none"
    which = " ".join(f"{names[int(v)]}:{int(np.sum(b[:, 3] == v))}" for v in np.unique(b[:, 3]))
    return (
        f"{len(b):3d} {b[:, 2].mean():5.1f} {(b[:, 1] - b[:, 0]).sum() * 1e3:5.2f} {b[:, 4].sum() * 1e3:5.2f} {which}"
    )


if __name__ == "__main__":
    if sys.argv[1:2] == ["_gen"]:
        _generator_main(sys.argv[2], sys.argv[3])
    else:
        main()
