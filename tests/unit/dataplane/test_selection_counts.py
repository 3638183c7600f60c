"""What kept choices serve (``VariantChooser.kept``) is counted where the data plane's own selections are: in
``sloserve_variant_selections`` when the metrics are read, and, where a cheaper variant was not running, in the
demand the autoscaler reads."""

from __future__ import annotations

from types import MappingProxyType

from sloserve.catalog import CatalogSnapshot, LoadedModel, RunningVersion
from sloserve.dataplane.dataplane import DataPlane
from sloserve.metrics import ServingMetrics
from sloserve.testing import FakeClock, FakeReplica
from sloserve.types import VersionId
from sloserve.variant import LatencyStats, VariantProfile

from .test_replicas_down import CONFIG, answer, triple

FP32, CHEAP = VersionId("fp32"), VersionId("cheap")


def profile(cost: float, load_ms: float) -> VariantProfile:
    return VariantProfile(
        {1: LatencyStats(1.0, 1.0, 1.0)}, 1.0, 0.1, 4, 1000.0, 0.97, None, 50.0, 1000, load_ms, 100, 10, cost
    )


async def test_queries_served_by_a_kept_choice_are_counted_as_selections_and_as_demand() -> None:
    clock = FakeClock()
    metrics = ServingMetrics()
    plane = DataPlane(clock, metrics)
    running = RunningVersion(FP32, (FakeReplica("r0", 1, compute=triple),))
    loaded = LoadedModel(
        CONFIG,
        (FP32, CHEAP),
        FP32,
        MappingProxyType({FP32: running}),
        MappingProxyType({FP32: profile(1.0, 10.0), CHEAP: profile(0.5, 100.0)}),  # cheaper; its start too long
    )
    await plane.apply_catalog(CatalogSnapshot(loaded=MappingProxyType({CONFIG.name: loaded})))
    plane.variant_loads()  # the autoscaler's interval starts now
    try:
        for _ in range(4):
            assert (await answer(plane, clock, {"latency_slo_ms": 5})).parameters["variant"] == "fp32"
        chooser = plane._models["m"].chooser
        assert sum(entry.served for entry in chooser._kept.values()) == 3  # the first query chose, three kept it
        text = metrics.exposition().decode()
        assert 'sloserve_variant_selections_total{model="m",variant="fp32"} 4.0' in text
        loads = {load.id: load for load in plane.variant_loads()["m"]}
        assert loads[CHEAP].arrival_rps > 0
        assert loads[CHEAP].arrival_rps == loads[FP32].arrival_rps  # the four rows fp32 served, cheap wanted
        assert plane.variant_loads()["m"][0].arrival_rps == 0  # taken once
    finally:
        await plane.apply_catalog(CatalogSnapshot())
