"""The hedging policy: delay from live quantiles, budget, self-switch-off, backup choice."""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sloserve.model_config import HedgingConfig
from sloserve.policy.hedging import (
    BackupCandidate,
    HedgeParams,
    HedgeVerdict,
    LatencyWindow,
    decide_hedge,
    earn,
    follow_baseline,
    hedge_delay,
    size_class,
    slowness,
    trusted_window,
)

PARAMS = HedgeParams(min_samples=4)


def window(values: list[float], size: int = 256) -> LatencyWindow:
    w = LatencyWindow(size)
    for v in values:
        w.add(v)
    return w


def test_size_classes_are_powers_of_two() -> None:
    assert [size_class(r) for r in (0, 1, 2, 3, 4, 7, 8, 64, 65)] == [1, 1, 2, 2, 3, 3, 4, 7, 7]


@given(st.lists(st.floats(min_value=0, max_value=10), min_size=1, max_size=300), st.floats(min_value=0.5, max_value=1))
def test_window_quantile_is_the_nearest_rank_of_the_last_samples(values: list[float], q: float) -> None:
    w = window(values, size=100)
    recent = sorted(values[-100:])
    assert w.quantile(q) == recent[max(0, math.ceil(q * len(recent)) - 1)]


def test_the_delay_is_the_live_quantile_and_none_without_enough_samples() -> None:
    fast = window([0.001] * 95 + [0.003] * 5)
    assert hedge_delay(fast, HedgeParams(quantile=0.95)) == 0.001
    assert hedge_delay(fast, HedgeParams(quantile=0.96)) == 0.003
    assert hedge_delay(None, PARAMS) is None
    assert hedge_delay(fast, HedgeParams(min_delay_s=0.004)) == 0.004
    slow_tail = window([0.001] * 95 + [0.010] * 5)
    assert hedge_delay(slow_tail, HedgeParams(quantile=0.96)) == 0.005  # at most 5 x the median


def test_stragglers_above_the_quantile_share_do_not_hide_behind_the_quantile() -> None:
    mixed = window([0.001] * 90 + [0.250] * 10)  # 10% stragglers: the p95 is a straggler
    assert hedge_delay(mixed, HedgeParams(quantile=0.95)) == 0.005


def test_a_cold_size_class_borrows_the_nearest_larger_trusted_one() -> None:
    windows = {1: window([0.001] * 2), 3: window([0.003] * 10), 5: window([0.005] * 10)}
    assert trusted_window(windows, rows=1, min_samples=4) is windows[3]  # class 1 has 2 samples: too few
    assert trusted_window(windows, rows=5, min_samples=4) is windows[3]
    assert trusted_window(windows, rows=16, min_samples=4) is windows[5]
    assert trusted_window(windows, rows=64, min_samples=4) is None  # nothing larger: no hedge


@given(st.floats(min_value=0.001, max_value=1.0), st.integers(min_value=1, max_value=2000))
def test_the_token_bucket_never_allows_more_hedges_than_budget_times_batches(budget: float, batches: int) -> None:
    params = HedgeParams(budget=budget, burst=5.0)
    tokens, hedges = 0.0, 0
    for _ in range(batches):
        tokens = earn(tokens, params)
        if tokens >= 1.0:  # a greedy spender: hedge at every chance
            tokens -= 1.0
            hedges += 1
        assert tokens <= params.burst
    assert hedges <= budget * batches + 1e-9


def test_params_come_from_the_model_config() -> None:
    params = HedgeParams.from_config(HedgingConfig(quantile=0.99, budget=0.02))
    assert (params.quantile, params.budget) == (0.99, 0.02)


def test_the_baseline_follows_the_live_median_slowly() -> None:
    params = HedgeParams(baseline_s=30.0)
    assert follow_baseline(None, 0.001, 5.0, params) == 0.001  # the first median is the baseline
    assert follow_baseline(0.001, 0.050, 0.3, params) == pytest.approx(0.001 + 0.049 * 0.01)
    assert follow_baseline(0.001, 0.050, 60.0, params) == 0.050  # a slowness that lasts becomes normal
    assert follow_baseline(0.001, 0.050, -1.0, params) == 0.001


def test_slowness_is_the_median_ratio() -> None:
    assert slowness([]) == 1.0
    assert slowness([1.0, 50.0, 1.2]) == 1.2  # one straggler does not make a replica slow
    assert slowness([4.0, 5.0, 1.0, 6.0]) == 4.5


def candidates(*pairs: tuple[int, float]) -> list[BackupCandidate]:
    return [BackupCandidate(load, s) for load, s in pairs]


def test_decide_fires_on_the_least_loaded_replica_that_is_not_slow() -> None:
    d = decide_hedge(3.0, candidates((0, 5.0), (1, 1.0), (0, 1.1)), PARAMS)
    assert d.verdict is HedgeVerdict.FIRE and d.backup == 2


def test_the_first_check_leaves_the_reserve_to_batches_that_stay_slow() -> None:
    ok = candidates((0, 1.0))
    params = HedgeParams(reserve=2.0)
    assert decide_hedge(2.9, ok, params, check=1).verdict is HedgeVerdict.NO_BUDGET
    assert decide_hedge(3.0, ok, params, check=1).verdict is HedgeVerdict.FIRE
    assert decide_hedge(1.0, ok, params, check=2).verdict is HedgeVerdict.FIRE
    assert decide_hedge(0.9, ok, params, check=4).verdict is HedgeVerdict.NO_BUDGET


def test_decide_refuses_without_replica_when_all_are_slow_or_without_budget() -> None:
    assert decide_hedge(5.0, [], PARAMS).verdict is HedgeVerdict.NO_REPLICA
    slow = candidates((0, 3.0), (0, 7.0))
    assert decide_hedge(5.0, slow, PARAMS).verdict is HedgeVerdict.ALL_SLOW
    assert decide_hedge(0.99, candidates((0, 1.0)), PARAMS, check=2).verdict is HedgeVerdict.NO_BUDGET
