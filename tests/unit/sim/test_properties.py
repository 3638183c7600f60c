"""Invariants of any run, over random small families, SLO classes, workloads and policies."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from sloserve.policy.selection import Slo
from sloserve.sim import Family, SimConfig, simulate
from sloserve.sim.config import PolicySpec
from sloserve.sim.family import make_variant
from sloserve.sim.workload import Segment, SloClass, generate

variants = st.lists(
    st.builds(
        lambda acc, intercept, per_row, max_batch, load: (acc, intercept, per_row, max_batch, load),
        st.one_of(st.none(), st.sampled_from([0.7, 0.8, 0.9, 0.95])),
        st.sampled_from([0.2, 1.0, 3.0]),
        st.sampled_from([0.0, 0.1, 0.5]),
        st.sampled_from([1, 4, 16]),
        st.sampled_from([0.0, 50.0, 400.0]),
    ),
    min_size=1,
    max_size=4,
)
classes = st.lists(
    st.builds(
        Slo,
        st.one_of(st.none(), st.sampled_from([0.5, 2.0, 5.0, 20.0, 200.0])),
        st.one_of(st.none(), st.sampled_from([0.75, 0.9, 0.99])),
        st.booleans(),
    ),
    min_size=1,
    max_size=3,
)
segments = st.lists(
    st.builds(Segment, st.sampled_from([0.3, 1.0, 2.5]), st.sampled_from([0.0, 50.0, 800.0, 4000.0])),
    min_size=1,
    max_size=3,
)


@settings(max_examples=30, deadline=None)
@given(
    variants,
    classes,
    segments,
    st.integers(1, 6),
    st.sampled_from(["modelless", "modelless", "fixed", "maxbatch"]),
    st.integers(0, 3),
    st.sampled_from([0.25, 1.0]),
)
def test_every_request_ends_once_within_the_budget(
    specs: list[tuple[float | None, float, float, int, float]],
    slos: list[Slo],
    segs: list[Segment],
    cpus: int,
    kind: str,
    seed: int,
    interval_s: float,
) -> None:
    family = Family(
        "m",
        tuple(
            make_variant(f"v{i}", acc, intercept, per_row, max_batch=mb, load_ms=load)
            for i, (acc, intercept, per_row, mb, load) in enumerate(specs)
        ),
    )
    workload = generate(segs, [SloClass(f"c{i}", s) for i, s in enumerate(slos)], ["m"], np.random.default_rng(seed))
    policy = PolicySpec(kind, None if kind == "modelless" else "v0", 2.0 if kind == "maxbatch" else 0.0)
    config = SimConfig(policy=policy, cpus=cpus, seed=seed, autoscale_interval_s=interval_s)
    report = simulate([family], workload, config)

    rejected, dropped = sum(report.rejections.values()), sum(report.drops.values())
    assert report.served + rejected + dropped == report.arrivals  # nothing left pending, nothing twice
    assert report.admitted == report.arrivals - rejected
    assert sum(v.selected for v in report.variants) == report.admitted
    assert sum(v.served for v in report.variants) == report.served
    assert report.met <= report.served
    assert all(s.cpus <= cpus for s in report.replicas)
    assert sum(c.arrivals for c in report.classes) == report.arrivals
    if kind != "modelless":
        assert rejected == dropped == 0
    else:
        literal = simulate(
            [family],
            workload,
            SimConfig(policy=policy, cpus=cpus, seed=seed, fast_selection=False, autoscale_interval_s=interval_s),
        )
        assert literal.outcome() == report.outcome()
