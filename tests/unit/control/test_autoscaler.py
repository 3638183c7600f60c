"""The autoscaling loop with a fake clock and a fake scaler: decisions reach the lifecycle, per model."""

from __future__ import annotations

from sloserve.control.autoscaler import Autoscaler
from sloserve.errors import NotFoundError
from sloserve.policy.autoscale import AutoscaleConfig, ScaleDecision, VariantLoad
from sloserve.testing import FakeClock
from sloserve.testing.fakes import settle


class FakeScaler:
    def __init__(self) -> None:
        self.calls: list[tuple[str, str, int]] = []

    async def scale(self, name: str, version: str, replicas: int) -> None:
        if version == "gone":
            raise NotFoundError("no such version")
        self.calls.append((name, version, replicas))


async def test_each_tick_scales_what_the_policy_decides_across_models() -> None:
    clock = FakeClock()
    scaler = FakeScaler()
    seen: list[tuple[str, ScaleDecision]] = []
    loads = {
        "digits": [VariantLoad("fp32", 1, arrival_rps=2500, capacity_rps=1000, min_replicas=1)],
        "wine": [VariantLoad("fp32", 1, arrival_rps=10, capacity_rps=1000, min_replicas=1)],
    }
    autoscaler = Autoscaler(
        scaler, lambda: loads, AutoscaleConfig(cpu_budget=3), clock, on_decision=lambda m, d: seen.append((m, d))
    )
    autoscaler.start()
    await settle()  # the loop is asleep on the clock
    await clock.advance(1.0)
    await settle()
    assert scaler.calls == [("digits", "fp32", 2)]  # 3 CPUs: 2 for digits, 1 already held by wine
    assert [(m, d.action) for m, d in seen] == [("digits", "scale_up")]
    await autoscaler.stop()


async def test_a_failed_scale_is_logged_and_the_loop_goes_on() -> None:
    clock = FakeClock()
    scaler = FakeScaler()
    loads = {"m": [VariantLoad("gone", 0, arrival_rps=500, capacity_rps=1000)]}
    autoscaler = Autoscaler(scaler, lambda: loads, AutoscaleConfig(cpu_budget=4), clock)
    assert await autoscaler.tick() == []
    loads["m"] = [VariantLoad("int8", 0, arrival_rps=500, capacity_rps=1000)]
    taken = await autoscaler.tick()
    assert [(m, d.variant, d.replicas) for m, d in taken] == [("m", "int8", 1)]
