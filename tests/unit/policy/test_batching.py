from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sloserve.policy.batching import AimdConfig, LatencyModel, aimd_update, batch_take, expired, holds_gather

MODEL = LatencyModel(intercept_ms=1.0, per_row_ms=0.5)


def test_aimd_increases_additively_and_decreases_multiplicatively() -> None:
    config = AimdConfig(max_batch=64, increase=4, decrease=0.5)
    assert aimd_update(8, missed_deadline=False, config=config) == 12
    assert aimd_update(8, missed_deadline=True, config=config) == 4
    assert aimd_update(62, missed_deadline=False, config=config) == 64
    assert aimd_update(1, missed_deadline=True, config=config) == 1


def test_the_batch_fits_the_tightest_deadline_when_that_serves_the_most() -> None:
    inf = math.inf
    assert batch_take([inf] * 100, [1] * 100, 0.0, 64, MODEL) == 64  # no deadlines: the limit
    assert batch_take([inf] * 10, [1] * 10, 0.0, 64, MODEL) == 10
    # the head can wait 6 ms (1 + 0.5 x 10 rows), the others a second: 10 rows keep everyone in time
    assert batch_take([6.0] + [1000.0] * 99, [1] * 100, 0.0, 64, MODEL) == 10
    # everyone's deadline is 6 ms: 10 make it in a batch of 10, none in any larger one
    assert batch_take([6.0] * 20, [1] * 20, 0.0, 64, MODEL) == 10
    # the head can make it alone (1.5 ms) and the 63 behind it still make theirs in the next batch
    assert batch_take([1.6] + [40.0] * 63, [1] * 64, 0.0, 64, MODEL) == 1
    # ... but not if they would then be late: the head is the one that misses
    assert batch_take([1.6] + [33.6] * 63, [1] * 64, 0.0, 64, MODEL) == 64
    assert batch_take([0.1], [1], 0.0, 64, MODEL) == 1  # never zero: expiry is decided apart
    assert batch_take([inf, inf, inf], [30, 30, 30], 0.0, 64, MODEL) == 2  # rows, not requests
    assert batch_take([inf, inf], [100, 1], 0.0, 64, MODEL) == 1  # a request bigger than the limit goes alone


def test_a_request_that_cannot_make_it_even_alone_has_expired() -> None:
    assert expired(now_ms=100.0, deadline_ms=101.0, rows=1, model=MODEL)
    assert not expired(now_ms=100.0, deadline_ms=102.0, rows=1, model=MODEL)
    assert not expired(now_ms=100.0, deadline_ms=None, rows=1, model=MODEL)


@given(
    st.lists(st.tuples(st.floats(0, 100) | st.just(math.inf), st.integers(1, 8)), min_size=1, max_size=40),
    st.integers(1, 64),
)
def test_the_batch_taken_loses_the_fewest_deadlines_over_two_batches(
    waiting: list[tuple[float, int]], limit: int
) -> None:
    waiting.sort()
    deadlines, rows = [d for d, _ in waiting], [r for _, r in waiting]
    n = batch_take(deadlines, rows, 0.0, limit, MODEL)
    assert 1 <= n <= len(waiting)
    assert n == 1 or sum(rows[:n]) <= limit

    def lost(k: int) -> int:
        first = MODEL.predict_ms(sum(rows[:k]))
        second = first + MODEL.predict_ms(sum(rows[k:]))
        return sum(d < first for d in deadlines[:k]) + sum(d < second for d in deadlines[k:] if k < len(rows))

    splits = [k for k in range(1, len(waiting) + 1) if k == 1 or sum(rows[:k]) <= limit]
    assert lost(n) == min(lost(k) for k in splits)
    assert n == max(k for k in splits if lost(k) == lost(n))


@given(st.lists(st.booleans(), max_size=50), st.integers(1, 64))
def test_aimd_stays_within_bounds(misses: list[bool], start: int) -> None:
    config = AimdConfig(max_batch=64)
    limit = start
    for missed in misses:
        limit = aimd_update(limit, missed, config)
        assert 1 <= limit <= 64


def test_a_batch_is_too_slow_when_it_alone_took_longer_than_the_tightest_slo() -> None:
    from sloserve.policy.batching import batch_too_slow

    assert batch_too_slow(5.1, 5.0)
    assert not batch_too_slow(4.9, 5.0)
    assert not batch_too_slow(100.0, None)


def test_a_request_is_held_a_fifth_of_its_slo_beyond_the_reserve_up_to_the_cap() -> None:
    from sloserve.policy.batching import HOLD_RESERVE_MS, hold_ms

    assert HOLD_RESERVE_MS == 5.0
    assert hold_ms(5.0, 2.0) == 0.0  # a tight class is never held: its tail under load is what misses
    assert hold_ms(3.0, 2.0) == 0.0
    assert hold_ms(10.0, 2.0) == 1.0
    assert hold_ms(25.0, 2.0) == 2.0  # capped
    assert hold_ms(10.0, 2.0, scale=0.5) == 0.5
    assert hold_ms(10.0, 2.0, scale=0.4) == 0.0  # 0.4 ms: under the event loop's timer resolution
    assert hold_ms(25.0, 0.0) == 0.0


def test_a_tight_request_is_held_as_the_event_loop_has_room() -> None:
    from sloserve.policy.batching import hold_ms, holdable_ms, loop_room

    assert loop_room(0.3) == 1.0 and loop_room(0.75) == 1.0 and loop_room(0.8) == pytest.approx(0.5)
    assert loop_room(0.85) == 0.0 and loop_room(0.95) == 0.0
    assert hold_ms(5.0, 2.0, room=1.0) == 2.0  # half of what is left beyond a 1 ms reserve: a 2 ms window
    assert hold_ms(5.0, 2.0, room=0.5) == pytest.approx(0.35 * (5.0 - 3.0))  # reserve and share in between
    assert hold_ms(5.0, 2.0, room=0.3) == 0.0  # 0.35 ms: under the event loop's timer resolution
    assert hold_ms(10.0, 2.0, room=1.0) == 2.0 and hold_ms(10.0, 2.0, room=0.0) == 1.0
    assert hold_ms(25.0, 2.0, room=1.0) == 2.0  # capped alike
    assert holdable_ms(1.0) == 2.0 and holdable_ms(0.0) == 7.5


def test_the_hold_scale_halves_after_a_near_miss_and_creeps_back() -> None:
    from sloserve.policy.batching import hold_scale_update, near_miss_after

    # judged on the budget left when the hold ended: 5 ms held 1 ms leaves 4, of which 2 may go
    assert near_miss_after(1.0, 5.0) == 3.0
    scale = hold_scale_update(1.0, True)
    assert scale == 0.5
    for _ in range(10):
        scale = hold_scale_update(scale, False)
    assert 0.5 < scale < 1.0
    for _ in range(100):
        scale = hold_scale_update(scale, False)
    assert scale == 1.0


@given(st.floats(0.0, 4.0))
def test_the_room_for_tight_holds_shrinks_as_the_event_loop_gets_busy(busy: float) -> None:
    from sloserve.policy.batching import LOOP_BUSY_FULL_HOLD, LOOP_BUSY_NO_HOLD, hold_ms, loop_room

    room = loop_room(busy)
    assert room == 1.0 if busy <= LOOP_BUSY_FULL_HOLD else room < 1.0
    assert room == 0.0 if busy >= LOOP_BUSY_NO_HOLD else room > 0.0
    assert loop_room(busy + 0.01) <= room
    assert hold_ms(5.0, 2.0, room=loop_room(busy + 0.01)) <= hold_ms(5.0, 2.0, room=room)
    if busy <= 0.75:  # up to ~60% of capacity: a 5 ms class is held as long as a 2 ms batching window
        assert hold_ms(5.0, 2.0, room=room) == 2.0
    if busy >= 0.82:  # the loop at ~80% of capacity: a 5 ms class is not held
        assert hold_ms(5.0, 2.0, room=room) == 0.0


@given(st.floats(0.0, 4.0))
def test_the_simulators_holds_shrink_as_its_front_end_gets_busy(busy: float) -> None:
    from sloserve.policy.batching import LOOP_BUSY_FULL_HOLD, LOOP_BUSY_NO_HOLD, loop_hold_scale

    scale = loop_hold_scale(busy)
    assert 0.0 <= scale <= 1.0
    assert scale == 1.0 if busy <= LOOP_BUSY_FULL_HOLD else scale < 1.0
    assert scale == 0.0 if busy >= LOOP_BUSY_NO_HOLD else scale > 0.0
    assert loop_hold_scale(busy + 0.01) <= scale


@given(st.floats(0.0, 50.0))
def test_holds_shrink_as_the_event_loop_runs_behind(lag_ms: float) -> None:
    from sloserve.policy.batching import LAG_FULL_HOLD_MS, LAG_NO_HOLD_MS, lag_hold_scale

    scale = lag_hold_scale(lag_ms)
    assert 0.0 <= scale <= 1.0
    assert scale == 1.0 if lag_ms <= LAG_FULL_HOLD_MS else scale < 1.0
    assert scale == 0.0 if lag_ms >= LAG_NO_HOLD_MS else scale > 0.0
    assert lag_hold_scale(lag_ms + 0.01) <= scale


def test_a_hold_is_worth_it_only_if_a_request_is_expected_to_join_it() -> None:
    assert holds_gather(25, 0.05, 2.0)  # 500 a second: one in a 2 ms hold
    assert not holds_gather(24, 0.05, 2.0)
    assert not holds_gather(1, 10.0, 2.0)  # the first after a quiet spell
    assert holds_gather(2, 0.05, 25.0)  # a long hold gathers at a low rate
    assert not holds_gather(1000, 0.05, 0.0)  # no hold, nothing to gather
