"""Cumulative per-model statistics in the shape of Triton's statistics extension."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np


@dataclass(slots=True)
class _Duration:
    count: int = 0
    ns: int = 0

    def add(self, seconds: float) -> None:
        self.count += 1
        self.ns += int(seconds * 1e9)

    def add_many(self, seconds: np.ndarray[Any, Any]) -> None:
        """:meth:`add` each of ``seconds`` (each truncated to whole ns, as there)."""
        self.count += len(seconds)
        self.ns += int((seconds * 1e9).astype(np.int64).sum())

    def to_dict(self) -> dict[str, int]:
        return {"count": self.count, "ns": self.ns}


@dataclass(slots=True)
class ModelStats:
    """Counters for one model version; rendered by :meth:`to_dict` for the stats endpoints."""

    name: str
    version: str
    last_inference_ms: int = 0
    inference_count: int = 0
    execution_count: int = 0
    success: _Duration = field(default_factory=_Duration)
    fail: _Duration = field(default_factory=_Duration)
    queue: _Duration = field(default_factory=_Duration)
    compute_infer: _Duration = field(default_factory=_Duration)
    batches: dict[int, _Duration] = field(default_factory=dict)

    def request_succeeded(self, rows: int, total_s: float, queue_s: float, compute_s: float) -> None:
        self.last_inference_ms = int(time.time() * 1000)
        self.inference_count += rows
        self.success.add(total_s)
        self.queue.add(queue_s)
        self.compute_infer.add(compute_s)

    def requests_succeeded(
        self,
        rows: int,
        total_s: np.ndarray[Any, Any],
        queue_s: np.ndarray[Any, Any],
        compute_s: np.ndarray[Any, Any],
        last_inference_ms: int,
    ) -> None:
        """:meth:`request_succeeded` for several requests at once, the last of them at ``last_inference_ms``."""
        self.last_inference_ms = max(self.last_inference_ms, last_inference_ms)
        self.inference_count += rows
        self.success.add_many(total_s)
        self.queue.add_many(queue_s)
        self.compute_infer.add_many(compute_s)

    def request_failed(self, total_s: float) -> None:
        self.fail.add(total_s)

    def batch_executed(self, rows: int, compute_s: float) -> None:
        self.execution_count += 1
        self.batches.setdefault(rows, _Duration()).add(compute_s)

    def to_dict(self) -> dict[str, Any]:
        zero = {"count": 0, "ns": 0}
        return {
            "name": self.name,
            "version": self.version,
            "last_inference": self.last_inference_ms,
            "inference_count": self.inference_count,
            "execution_count": self.execution_count,
            "inference_stats": {
                "success": self.success.to_dict(),
                "fail": self.fail.to_dict(),
                "queue": self.queue.to_dict(),
                "compute_input": zero,
                "compute_infer": self.compute_infer.to_dict(),
                "compute_output": zero,
                "cache_hit": zero,
                "cache_miss": zero,
            },
            "batch_stats": [
                {"batch_size": size, "compute_input": zero, "compute_infer": d.to_dict(), "compute_output": zero}
                for size, d in sorted(self.batches.items())
            ],
        }
