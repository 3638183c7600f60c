"""LoopLoad: the process's CPU share per window, from an injected CPU clock; LoopLag: the loop's own delay."""

from __future__ import annotations

import asyncio
import time

import pytest

from sloserve.dataplane.loop_load import LoopLag, LoopLoad
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


async def test_the_lag_follows_how_long_the_loop_takes_to_come_round() -> None:
    """A loop blocked for 20 ms at a time shows a lag of that order within a few looks; once free, it falls back
    near zero; stopped, it reads 0."""
    lag = LoopLag(period_s=0.002)
    lag.start()
    lag.start()  # idempotent: one timer
    await asyncio.sleep(0.03)
    assert lag.lag_ms < 2.0  # idle (a loaded CI machine still comes round in well under 2 ms)

    def block() -> None:
        time.sleep(0.02)

    loop = asyncio.get_running_loop()
    for _ in range(6):  # the loop busy 20 ms in every ~22: each look waits behind one
        loop.call_soon(block)
        await asyncio.sleep(0.002)
    assert lag.lag_ms > 5.0
    await asyncio.sleep(0.1)
    assert lag.lag_ms < 2.0
    lag.stop()
    assert lag.lag_ms == 0.0
