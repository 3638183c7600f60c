"""LoopLag: how far behind the event loop runs, on a real loop blocked on purpose."""

from __future__ import annotations

import asyncio
import time

from sloserve.dataplane.loop_load import LoopLag


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
