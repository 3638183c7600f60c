"""Deferral: while the event loop runs behind, requests with time to spare wait in deadline order."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

import pytest

from sloserve.dataplane.deferral import DEFER_LAG_MS, RELEASE_CHUNK, Deferral, release_slack_ms


@dataclass
class Lag:
    lag_ms: float = 0.0


class Clock:
    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


def deferral(lag_ms: float) -> tuple[Deferral, Clock, Lag]:
    clock, lag = Clock(), Lag(lag_ms)
    return Deferral(clock, lag), clock, lag


async def test_nothing_waits_while_the_loop_keeps_up() -> None:
    room, clock, _ = deferral(DEFER_LAG_MS / 2)
    assert room.wait(clock() + 1.0) is None
    assert len(room) == 0


async def test_behind_only_requests_with_time_to_spare_wait() -> None:
    room, clock, _ = deferral(2.0)
    slack_s = release_slack_ms(2.0) / 1e3  # 8 + 3 x 2 = 14 ms
    assert room.wait(clock() + slack_s) is None  # a tight query goes ahead
    future = room.wait(clock() + slack_s + 0.010)  # a loose one waits
    assert future is not None and not future.done()
    assert len(room) == 1 and room.deferred == 1


async def test_waiting_requests_are_released_in_deadline_order_when_their_slack_is_spent() -> None:
    room, clock, _ = deferral(2.0)
    slack_s = release_slack_ms(2.0) / 1e3
    late = room.wait(clock() + slack_s + 0.030)
    early = room.wait(clock() + slack_s + 0.010)
    assert late is not None and early is not None
    room.pump()
    assert not early.done() and not late.done()  # still behind, and both have time
    clock.t += 0.010
    room.pump()
    assert early.done() and not late.done()
    clock.t += 0.020
    room.pump()
    assert late.done() and len(room) == 0


async def test_once_the_loop_keeps_up_a_chunk_is_released_per_look_earliest_deadline_first() -> None:
    room, clock, lag = deferral(2.0)
    futures = [room.wait(clock() + 0.030 + i * 0.001) for i in range(RELEASE_CHUNK + 3)]
    assert all(f is not None for f in futures)
    lag.lag_ms = 0.0
    room.pump()
    done = [f is not None and f.done() for f in futures]
    assert done == [True] * RELEASE_CHUNK + [False] * 3
    room.pump()
    assert len(room) == 0


async def test_a_cancelled_wait_is_skipped_and_stopping_releases_everyone() -> None:
    room, clock, _ = deferral(2.0)
    gone = room.wait(clock() + 0.030)
    kept = room.wait(clock() + 0.040)
    assert gone is not None and kept is not None
    gone.cancel()  # the client went away
    clock.t += 0.030
    room.pump()  # releases past the cancelled one without error
    assert kept.done()
    other = room.wait(clock() + 0.040)
    assert other is not None
    room.release_all()
    assert other.done() and len(room) == 0


async def test_a_waiting_task_resumes_when_released() -> None:
    room, clock, lag = deferral(2.0)

    async def query() -> str:
        turn = room.wait(clock() + 0.030)
        if turn is not None:
            await turn
        return "served"

    task = asyncio.ensure_future(query())
    await asyncio.sleep(0)
    assert not task.done()
    lag.lag_ms = 0.0
    room.pump()
    assert await asyncio.wait_for(task, 1.0) == "served"


@pytest.mark.parametrize("lag_ms", [0.5, 1.0, 4.0])
def test_the_release_slack_leaves_room_for_turns_of_a_lagging_loop(lag_ms: float) -> None:
    assert release_slack_ms(lag_ms) >= 3 * lag_ms + 5.0
