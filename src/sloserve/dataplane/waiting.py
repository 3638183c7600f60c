"""Waiting on an event with a timeout measured by an injected clock."""

from __future__ import annotations

import asyncio
import contextlib

from sloserve.clock import Clock


async def wait_event(event: asyncio.Event, clock: Clock, timeout_s: float) -> bool:
    """Wait until ``event`` is set or ``timeout_s`` of clock time passes; True if set."""
    if event.is_set():
        return True
    if timeout_s <= 0:
        return False
    waiter = asyncio.ensure_future(event.wait())
    timer = asyncio.ensure_future(clock.sleep(timeout_s))
    try:
        await asyncio.wait((waiter, timer), return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in (waiter, timer):
            if not task.done():
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
    return event.is_set()
