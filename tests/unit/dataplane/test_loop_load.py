"""LoopLoad: the process's CPU share per window, from an injected CPU clock."""

from __future__ import annotations

import pytest

from sloserve.dataplane.loop_load import LoopLoad
from sloserve.testing import FakeClock


async def test_the_busy_share_is_cpu_time_over_wall_time_of_the_last_window() -> None:
    clock = FakeClock(start=0.0)
    cpu = [10.0]
    load = LoopLoad(clock, cpu_s=lambda: cpu[0], window_s=0.099)  # 0.05 + 0.05 of clock time
    assert load.busy() == 0.0  # no window has passed
    await clock.advance(0.05)
    cpu[0] += 0.05
    assert load.busy() == 0.0
    await clock.advance(0.05)
    cpu[0] += 0.03  # 80 ms of CPU in 100 ms
    assert load.busy() == pytest.approx(0.8)
    await clock.advance(0.05)
    cpu[0] += 0.05
    assert load.busy() == pytest.approx(0.8)  # the next window is not over: the last one stands
    await clock.advance(0.05)
    assert load.busy() == pytest.approx(0.5)
