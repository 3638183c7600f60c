"""Signal: an event for one waiter with a timeout on an injected clock."""

from __future__ import annotations

import asyncio

from sloserve.clock import SystemClock
from sloserve.dataplane.waiting import Signal
from sloserve.testing import FakeClock
from sloserve.testing.fakes import settle


async def test_set_wakes_the_waiter_before_its_timeout() -> None:
    clock = FakeClock()
    signal = Signal(clock)
    waiter = asyncio.ensure_future(signal.wait(1.0))
    await settle()
    assert not waiter.done()
    signal.set()
    assert await waiter is True


async def test_the_timeout_runs_on_the_injected_clock() -> None:
    clock = FakeClock()
    signal = Signal(clock)
    waiter = asyncio.ensure_future(signal.wait(0.002))
    await settle()
    await clock.advance(0.0019)
    assert not waiter.done()
    await clock.advance(0.0002)
    assert await waiter is False


async def test_a_set_signal_returns_at_once_until_cleared() -> None:
    signal = Signal(FakeClock())
    signal.set()
    assert await signal.wait(0.0) is True
    signal.clear()
    assert await signal.wait(0.0) is False
    assert not signal.is_set()


async def test_on_the_system_clock_the_timeout_is_a_loop_timer() -> None:
    signal = Signal(SystemClock())
    assert await signal.wait(0.001) is False
    waiter = asyncio.ensure_future(signal.wait(None))
    await asyncio.sleep(0)
    signal.set()
    assert await asyncio.wait_for(waiter, 1.0) is True
