"""Variants against fp32: speed-up, accuracy change and memory, for two bundled models.

    python benchmarks/variants.py [--seconds 0.4] [--models digits,digits_wide]

Registers `digits` (MLP 64) and `digits_wide` (MLP 512-256) with every recipe in a
temporary repository, exactly as `sloserve register` does (profiles measured in a
serving worker, IPC included), then prints each variant's speed-up over fp32 at
batch 1 and at the best batch, its accuracy change and its memory. A second table
times the bare engine in-process (no IPC), which shows the kernels' own speed-ups
that the worker round trip (~0.1-0.2 ms here) hides at batch 1 for tiny models.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort
from rich.console import Console
from rich.table import Table

from sloserve.control.registration import RegisterOptions, Registrar
from sloserve.profiling.profiler import ProfileSettings
from sloserve.registry.db import RegistryDB
from sloserve.registry.repository import ModelRepository
from sloserve.runtime.demo import build_digits, build_digits_wide
from sloserve.variant import VariantRecord, VariantStatus

console = Console(width=200)
BUILDERS = {"digits": build_digits, "digits_wide": build_digits_wide}


def engine_ms(artifact: str, x: np.ndarray, seconds: float = 0.3) -> float:
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    session = ort.InferenceSession(artifact, options, providers=["CPUExecutionProvider"])
    session.run(None, {"input": x})
    times = []
    deadline = time.perf_counter() + seconds
    while time.perf_counter() < deadline or len(times) < 20:
        t0 = time.perf_counter()
        session.run(None, {"input": x})
        times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1e3


async def register(name: str, root: Path, seconds: float) -> tuple[list[VariantRecord], Path]:
    with tempfile.TemporaryDirectory() as scratch:
        report = BUILDERS[name](ModelRepository(Path(scratch)), name)
        validation = root / f"{name}-validation.npz"
        validation.write_bytes(report.validation_path.read_bytes())
        with RegistryDB(root / "registry.sqlite3", root / "repo") as db:
            registrar = Registrar(
                ModelRepository(root / "repo"), db, profile_settings=ProfileSettings(seconds_per_batch=seconds)
            )
            with console.status(f"registering {name}"):
                records = await registrar.register(report.model_path, name, RegisterOptions(validation=validation))
    return records, validation


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=0.4, help="profiling seconds per batch size")
    parser.add_argument("--models", default="digits,digits_wide")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        for name in args.models.split(","):
            records, validation = asyncio.run(register(name, root, args.seconds))
            x = np.load(validation)["X"].astype(np.float32)
            served = Table(title=f"{name}: variants profiled in a serving worker (1 intra-op thread)")
            for col in (
                "variant",
                "status",
                "accuracy",
                "Δ accuracy",
                "speed-up b=1",
                "speed-up best",
                "best batch",
                "rows/s",
                "memory MB",
                "size KB",
                "cost CPU-s/1k",
                "frontier",
            ):
                served.add_column(col, justify="left" if col in ("variant", "status") else "right")
            engine = Table(title=f"{name}: bare onnxruntime in-process, median ms per call")
            for col in ("variant", "b=1 ms", "speed-up b=1", "b=64 ms", "speed-up b=64"):
                engine.add_column(col, justify="left" if col == "variant" else "right")
            ref = next(r for r in records if r.id == "fp32")
            assert ref.profile is not None and ref.artifact is not None
            ref_b1 = ref.profile.latency_ms[1].p50_ms
            ref_best = ref.profile.latency_ms[ref.profile.best_batch].p50_ms / ref.profile.best_batch
            engine_times = {
                r.id: (engine_ms(r.artifact, x[:1]), engine_ms(r.artifact, x[:64]))
                for r in records
                if r.status is VariantStatus.READY and r.artifact is not None
            }
            ref_e1, ref_e64 = engine_times["fp32"]
            for r in records:
                p = r.profile
                if r.status is not VariantStatus.READY or p is None or r.artifact is None:
                    served.add_row(r.id, f"{r.status.value}: {r.reason}", *[""] * 10)
                    continue
                per_row_best = p.latency_ms[p.best_batch].p50_ms / p.best_batch
                acc = p.accuracy or 0.0
                served.add_row(
                    r.id,
                    "ready",
                    f"{acc:.4f}",
                    f"{acc - (ref.profile.accuracy or 0):+.4f}",
                    f"{ref_b1 / p.latency_ms[1].p50_ms:.2f}x",
                    f"{ref_best / per_row_best:.2f}x",
                    str(p.best_batch),
                    f"{p.throughput_sps:,.0f}",
                    f"{p.memory_mb:.0f}",
                    f"{p.size_bytes / 1024:,.0f}",
                    f"{p.cost_cpu_s_per_1k:.4f}",
                    "yes" if r.pareto else "",
                )
                e1, e64 = engine_times[r.id]
                engine.add_row(r.id, f"{e1:.4f}", f"{ref_e1 / e1:.2f}x", f"{e64:.4f}", f"{ref_e64 / e64:.2f}x")
            console.print(served)
            console.print(engine)


if __name__ == "__main__":
    main()
