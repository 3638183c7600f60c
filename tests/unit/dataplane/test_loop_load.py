"""LoopLag: how far behind the event loop runs, on a real loop blocked on purpose."""

from __future__ import annotations

import asyncio
import time

import pytest

from sloserve.dataplane.loop_load import (
    IDLE_PERIOD_S,
    LAG_EWMA,
    LOOP_BUSY_SATURATED,
    TIMER_SLACK_MS,
    LoopLag,
    lag_weight,
    loop_late_ms,
    next_look_s,
)
from sloserve.policy.batching import LOOP_BUSY_FULL_HOLD, holdable_ms, loop_hold_scale


async def test_the_lag_follows_how_long_the_loop_takes_to_come_round() -> None:
    """A loop blocked for 20 ms at a time shows a lag of that order within a few looks; once free, it falls back
    near zero; stopped, it reads 0."""
    lag = LoopLag(period_s=0.002)
    lag.start()
    lag.start()  # idempotent: one timer
    await asyncio.sleep(0.03)
    assert lag.lag_ms < 2.0  # idle (a loaded CI machine still comes round in well under 2 ms)

    def block() -> None:  # work, as a long turn does (a sleeping thread is stopped, not behind: see below)
        end = time.perf_counter() + 0.02
        while time.perf_counter() < end:
            pass

    loop = asyncio.get_running_loop()
    for _ in range(6):  # the loop busy 20 ms in every ~22: each look waits behind one
        loop.call_soon(block)
        await asyncio.sleep(0.002)
    assert lag.lag_ms > 5.0
    await asyncio.sleep(0.1)
    assert lag.lag_ms < 2.0
    lag.stop()
    assert lag.lag_ms == 0.0


async def test_the_busy_share_is_the_loop_threads_cpu_over_each_window_and_gives_the_room() -> None:
    """``busy`` is CPU seconds per second of the loop's thread over each 100 ms window (clocks faked, the
    timer real); ``room`` follows it (none until a window is measured, and once stopped)."""
    now, cpu = [0.0], [0.0]
    lag = LoopLag(clock=lambda: now[0], period_s=0.001, cpu=lambda: cpu[0])
    assert lag.room == 0.0
    lag.start()
    for busy, room in ((0.3, 1.0), (0.75, 1.0), (1.0, 0.0), (0.8, 0.5), (0.6, 1.0)):
        now[0] += 0.125  # past the 100 ms window, exactly in binary
        cpu[0] += 0.125 * busy
        await asyncio.sleep(0.005)  # a few looks: one closes the window
        assert lag.busy == pytest.approx(busy) and lag.room == pytest.approx(room)
        assert lag.holdable_ms == pytest.approx(holdable_ms(room))
    lag.stop()
    assert lag.busy == 0.0 and lag.room == 0.0 and lag.hold_share == 1.0
    assert lag.holdable_ms == holdable_ms(0.0)


async def test_holds_shrink_as_the_loop_gets_busy_though_it_keeps_up() -> None:
    """``hold_share`` is the lesser of the lag's and the busy share's gates: a loop 80% busy whose looks all come
    on time (no lag) gives half a hold, one 90% busy none (``LOOP_BUSY_FULL_HOLD`` to ``LOOP_BUSY_NO_HOLD``)."""
    now, used = [0.0], [0.0]
    looked = asyncio.Event()

    def cpu() -> float:  # read once a look: the test moves the clocks on one look at a time
        looked.set()
        return used[0]

    lag = LoopLag(clock=lambda: now[0], period_s=0.001, cpu=cpu)
    lag.start()
    for busy, share in ((0.5, 1.0), (0.8, 0.5), (0.9, 0.0), (LOOP_BUSY_FULL_HOLD, 1.0)):
        for _ in range(210):  # each look on time (the lag stays 0), and a 100 ms window wholly at this level
            looked.clear()
            now[0] += 0.001
            used[0] += 0.001 * busy
            await looked.wait()
        assert lag.lag_ms == 0.0 and lag.busy == pytest.approx(busy)
        assert lag.hold_share == pytest.approx(min(share, loop_hold_scale(busy)))
        assert lag.hold_share == pytest.approx(share)
    lag.stop()
    assert lag.hold_share == 1.0


async def test_a_saturated_loops_backlog_is_its_requests_in_flight_times_its_cpu_per_request() -> None:
    """While the loop's thread is busy at least ``LOOP_BUSY_SATURATED`` of a window, its CPU per request taken in
    over that window times the requests in flight is the backlog; below, and once stopped, there is none."""
    now, cpu = [0.0], [0.0]
    lag = LoopLag(clock=lambda: now[0], period_s=0.001, cpu=lambda: cpu[0])
    lag.start()
    lag.in_flight = 10
    for busy, taken, backlog_ms in ((1.0, 250, 5.0), (LOOP_BUSY_SATURATED, 125, 9.5), (0.9, 250, 0.0), (1.0, 0, 0.0)):
        now[0] += 0.125
        cpu[0] += 0.125 * busy
        lag.taken += taken
        await asyncio.sleep(0.005)  # a few looks: one closes the window
        assert lag.backlog_ms == pytest.approx(backlog_ms)
    lag.stop()
    assert lag.backlog_ms == 0.0


def test_an_idle_loop_is_looked_at_twice_as_late_each_time_and_a_working_one_at_the_period() -> None:
    gaps = [0.002]
    for _ in range(6):  # idle: the thread used 1% of the time since the last look
        gaps.append(next_look_s(gaps[-1], 0.002, 0.01 * gaps[-1], gaps[-1]))
    assert gaps == [0.002, 0.004, 0.008, 0.016, IDLE_PERIOD_S, IDLE_PERIOD_S, IDLE_PERIOD_S]
    assert next_look_s(IDLE_PERIOD_S, 0.002, 0.2 * IDLE_PERIOD_S, IDLE_PERIOD_S) == 0.002  # working again
    assert next_look_s(0.002, 0.05, 0.0, 0.05) == 0.05  # a period longer than the idle one stays


def test_the_lags_average_follows_time_not_looks() -> None:
    """A look one period after the last weighs LAG_EWMA; one after an idle gap of 16 periods nearly replaces
    the average (what 16 looks in a row would have done); a look sooner than a period weighs no less."""
    assert lag_weight(0.002, 0.002) == pytest.approx(LAG_EWMA)
    assert lag_weight(0.0005, 0.002) == pytest.approx(LAG_EWMA)
    assert lag_weight(0.032, 0.002) == pytest.approx(1 - (1 - LAG_EWMA) ** 16) and lag_weight(0.032, 0.002) > 0.99


async def test_an_idle_server_loop_backs_off_to_the_idle_period() -> None:
    """On a real, idle loop the looks space out to IDLE_PERIOD_S within ~60 ms (2 + 4 + 8 + 16 + 32 ms)."""
    lag = LoopLag(period_s=0.002)
    lag.start()
    await asyncio.sleep(0.2)
    assert lag._next_s == IDLE_PERIOD_S and lag.lag_ms < 2.0
    lag.stop()


def test_a_look_is_late_for_the_loops_work_by_no_more_than_its_thread_worked() -> None:
    """Past the timers' slack: a busy loop's lateness counts whole; a stopped process's not beyond what it did."""
    assert loop_late_ms(5.0, 7.0) == pytest.approx(5.0 - TIMER_SLACK_MS)  # working all the while
    assert loop_late_ms(100.0, 0.5) == 0.0  # stopped for 100 ms, a little work around it
    assert loop_late_ms(100.0, 30.0) == pytest.approx(30.0 - TIMER_SLACK_MS)
    assert loop_late_ms(0.8, 0.8) == 0.0  # an idle loop's timer, late by its granularity


async def test_a_stopped_process_shows_as_a_stall_for_one_look_and_not_in_the_lag() -> None:
    """Clocks faked, looks called by hand: a look 100 ms late while the thread did no work is a stall of
    ~99 ms (the requests read next may have waited it), not lag, and the next look comes a period later, even
    on an idle loop, and clears it if on time. A look as late with the thread working all the while is lag,
    and no stall."""
    now, cpu = [0.0], [0.0]
    lag = LoopLag(clock=lambda: now[0], period_s=0.002, cpu=lambda: cpu[0])
    lag.start()
    for _ in range(5):  # an idle loop: the looks space out
        now[0] += lag._next_s
        lag._look()
    assert lag._next_s == IDLE_PERIOD_S and lag.stalls == 0
    now[0] += IDLE_PERIOD_S + 0.1  # the process stopped for 100 ms more
    lag._look()
    assert lag._due - now[0] == pytest.approx(0.002)  # the next look soon: it clears the stall
    assert lag._next_s == IDLE_PERIOD_S  # and the looks after it as far apart as before
    assert lag.stall_ms == pytest.approx(100.0 - TIMER_SLACK_MS) and lag.lag_ms == 0.0
    assert lag.stalls == 1 and lag.stalled_s == pytest.approx(lag.stall_ms / 1e3)
    now[0] += 0.002
    cpu[0] += 0.002
    lag._look()
    assert lag.stall_ms == 0.0 and lag.lag_ms == 0.0
    assert lag._due - now[0] == pytest.approx(IDLE_PERIOD_S)  # that look left the idle spacing as it was
    gap = lag._due + 0.1 - now[0]  # 100 ms late again, the thread busy throughout: a turn of 100 ms
    now[0] += gap
    cpu[0] += gap
    lag._look()
    assert lag.stall_ms == 0.0 and lag.lag_ms > 90.0 and lag.stalls == 1
    lag.stop()
    assert lag.stall_ms == 0.0 and lag.lag_ms == 0.0
