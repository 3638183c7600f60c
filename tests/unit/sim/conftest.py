"""Small variant families and a run helper for the simulator tests."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pytest

from sloserve.policy.selection import Slo
from sloserve.sim import Family, SimConfig, SimReport, simulate
from sloserve.sim.family import make_variant
from sloserve.sim.workload import Segment, SloClass, generate


@pytest.fixture
def trio() -> Family:
    """fast/inaccurate, mid, slow/accurate: cost grows with accuracy."""
    return Family(
        "trio",
        (
            make_variant("fast", 0.80, 0.5, 0.1, max_batch=16, load_ms=100),
            make_variant("mid", 0.90, 1.0, 0.3, max_batch=16, load_ms=200),
            make_variant("slow", 0.97, 2.0, 1.0, max_batch=16, load_ms=500),
        ),
    )


def run(
    family: Family,
    segments: Sequence[Segment],
    classes: Sequence[SloClass],
    config: SimConfig,
    workload_seed: int = 0,
) -> SimReport:
    workload = generate(segments, classes, [family.model], np.random.default_rng(workload_seed))
    return simulate([family], workload, config)


def klass(name: str, latency_ms: float | None, min_accuracy: float | None = None, **kwargs: bool) -> SloClass:
    return SloClass(name, Slo(latency_ms, min_accuracy, **kwargs))
