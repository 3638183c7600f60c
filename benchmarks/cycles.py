"""What a request costs the event loop by how many clients keep it busy: closed loops of N connections.

    python benchmarks/cycles.py [--model digits] [--workdir DIR] [--connections 8,16,24,32,64,128] [--reps 2]
                                [--seconds 2] [--path fp32]

Starts one `sloserve serve` on a copy of a model registered by `slo.py --workdir` (the same DIR reuses it) and
runs `slo.py`'s closed loop (the fixed configurations' requests, `--path` pinned) with each connection count
in turn, `--reps` times, printing the queries per second and the loop thread's user and system CPU per request
(from `/proc/PID/task/PID/stat`, the main thread: the event loop and the inline batches).

Session 27 (`digits`, `fp32` pinned): 8 connections 46-50 µs a request, 16 connections 40-41, 32 35-36.5, 64
34.5 (the loop ~96% busy even at 8). Read as c + F / N (a cycle of the loop carrying N requests) that is
F ≈ 130 µs a cycle and c ≈ 33 µs a request. The open loop's cycles are not these: its costs by load (session
28: ~88 µs a request at 10% of capacity, ~56 at 40%, ~43 at 60%, ~39 at 80%) are fitted best by a loop that
pays a wake-up (~70 µs) whenever it has idled and nothing a cycle, and a fixed cost a cycle fitted to the
light load overstates 40-60% by a quarter (`sloserve simulate --frontend-wake-ms`, which `slo.py` fits to a
light open loop; `benchmarks/NOTEBOOK.md`).
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import paired  # the model copy
import slo  # the registration, the server and the closed loop

TICK = os.sysconf("SC_CLK_TCK")


def loop_thread_cpu(pid: int) -> tuple[float, float]:
    """User and system CPU seconds of the process's main thread."""
    fields = Path(f"/proc/{pid}/task/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return int(fields[11]) / TICK, int(fields[12]) / TICK


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="digits", choices=["digits", "digits_wide"])
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/sloserve-bench"), help="slo.py's --workdir")
    parser.add_argument("--connections", default="8,16,24,32,64,128", help="connection counts, in this order")
    parser.add_argument("--reps", type=int, default=2)
    parser.add_argument("--seconds", type=float, default=2.0, help="seconds per closed loop")
    parser.add_argument("--path", default="fp32", help="the version pinned")
    args = parser.parse_args()
    base = args.workdir / args.model
    _, x = slo.register(args.model, base / "repo", base / "home", 0.2)
    rows = [row.tolist() for row in x[:32]]
    repo, home = paired.copy_model(base, args.workdir / "cycles" / args.model)
    proc, port = slo.start_server(repo, home, home.parent / "server.log")
    path = f"/v2/models/{args.model}/versions/{args.path}/infer"
    print("connections  queries/s  µs a request (user + sys)")
    try:
        for _ in range(args.reps):
            for connections in (int(n) for n in args.connections.split(",")):
                user, system = loop_thread_cpu(proc.pid)
                rate = float(
                    slo.generate(
                        kind="closed", port=port, path=path, rows=rows, seconds=args.seconds, connections=connections
                    )[0]
                )
                user_after, system_after = loop_thread_cpu(proc.pid)
                requests = rate * args.seconds
                spent_user, spent_system = (
                    (user_after - user) / requests * 1e6,
                    (system_after - system) / requests * 1e6,
                )
                print(
                    f"{connections:11d} {rate:10,.0f}  {spent_user + spent_system:5.1f} "
                    f"({spent_user:.1f} + {spent_system:.1f})",
                    flush=True,
                )
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(60)


if __name__ == "__main__":
    main()
