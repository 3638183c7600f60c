from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from sloserve.policy.batching import AimdConfig, LatencyModel, aimd_update, batch_size_for, expired

MODEL = LatencyModel(intercept_ms=1.0, per_row_ms=0.5)


def test_aimd_increases_additively_and_decreases_multiplicatively() -> None:
    config = AimdConfig(max_batch=64, increase=4, decrease=0.5)
    assert aimd_update(8, missed_deadline=False, config=config) == 12
    assert aimd_update(8, missed_deadline=True, config=config) == 4
    assert aimd_update(62, missed_deadline=False, config=config) == 64
    assert aimd_update(1, missed_deadline=True, config=config) == 1


def test_batch_size_fits_the_tightest_deadline() -> None:
    assert batch_size_for(64, 100, None, MODEL) == 64
    assert batch_size_for(64, 10, None, MODEL) == 10
    assert batch_size_for(64, 100, slack_ms=6.0, model=MODEL) == 10  # 1 + 0.5 * 10 = 6 ms
    assert batch_size_for(64, 100, slack_ms=0.1, model=MODEL) == 1  # never zero: expiry is decided apart


def test_a_request_that_cannot_make_it_even_alone_has_expired() -> None:
    assert expired(now_ms=100.0, deadline_ms=101.0, rows=1, model=MODEL)
    assert not expired(now_ms=100.0, deadline_ms=102.0, rows=1, model=MODEL)
    assert not expired(now_ms=100.0, deadline_ms=None, rows=1, model=MODEL)


@given(st.integers(1, 128), st.integers(0, 500), st.one_of(st.none(), st.floats(0, 100)))
def test_batch_size_bounds(limit: int, queued: int, slack: float | None) -> None:
    size = batch_size_for(limit, queued, slack, MODEL)
    assert 1 <= size <= max(1, min(limit, queued))
    if slack is not None and size > 1:
        assert MODEL.predict_ms(size) <= slack + 1e-9


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
