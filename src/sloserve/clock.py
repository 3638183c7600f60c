"""Time as an injected dependency.

Everything that waits or measures takes a :class:`Clock`. The server uses
:class:`SystemClock`; unit tests use :class:`sloserve.testing.FakeClock`, which
only moves when the test advances it, so no unit test ever sleeps.
"""

from __future__ import annotations

import asyncio
import time
from typing import Protocol


class Clock(Protocol):
    def now(self) -> float:
        """Monotonic seconds."""
        ...

    async def sleep(self, seconds: float) -> None:
        """Wait ``seconds`` of this clock's time."""
        ...


class SystemClock:
    """The real monotonic clock."""

    now = staticmethod(time.monotonic)
    """``time.monotonic`` itself: read several times a query, so without a Python call around it."""

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(max(0.0, seconds))
