"""The simulated front ends: FIFO servers, an event loop in cycles, and the machine's speed over time."""

from __future__ import annotations

import numpy as np
import pytest

from sloserve.sim.frontend import frontend_cycles_ms, frontend_exit_ms, frontend_service_ms


def test_front_end_exit_times_queue_fifo_at_the_free_front_end() -> None:
    arrivals = np.array([0.0, 0.1, 0.2, 5.0])
    assert frontend_exit_ms(arrivals, 1.0, 1).tolist() == pytest.approx([1.0, 2.0, 3.0, 6.0])
    assert frontend_exit_ms(arrivals, 1.0, 2).tolist() == pytest.approx([1.0, 1.1, 2.0, 6.0])
    assert frontend_exit_ms(arrivals, 0.0, 1).tolist() == arrivals.tolist()


def test_front_ends_take_each_requests_own_service_time_and_let_none_overtake() -> None:
    arrivals = np.array([0.0, 0.1, 0.2, 5.0])
    services = np.array([1.0, 0.2, 0.2, 1.0])
    assert frontend_exit_ms(arrivals, services, 1).tolist() == pytest.approx([1.0, 1.2, 1.4, 6.0])
    # two front ends: the second request would leave at 0.3, before the first; it leaves with it, at 1.0
    assert frontend_exit_ms(arrivals, services, 2).tolist() == pytest.approx([1.0, 1.0, 1.0, 6.0])


def test_the_machines_speed_varies_by_window_deterministically_for_a_seed() -> None:
    arrivals = np.sort(np.random.default_rng(0).uniform(0, 10_000, 20_000))
    steady = frontend_service_ms(arrivals, 0.1, 0.0, 100.0, np.random.default_rng(1))
    assert set(steady.tolist()) == {0.1}
    varying = frontend_service_ms(arrivals, 0.1, 0.2, 100.0, np.random.default_rng(1))
    window = (arrivals // 100).astype(int)
    per_window = {w: set(varying[window == w].tolist()) for w in set(window.tolist())}
    assert all(len(costs) == 1 for costs in per_window.values())  # one speed per window
    factors = np.array([next(iter(c)) for c in per_window.values()]) / 0.1
    assert len(set(factors.tolist())) == len(factors) == 100
    assert 0.9 < float(np.mean(factors)) < 1.1 and 0.1 < float(np.std(np.log(factors))) < 0.3
    again = frontend_service_ms(arrivals, 0.1, 0.2, 100.0, np.random.default_rng(1))
    assert again.tolist() == varying.tolist()


def test_an_event_loop_front_end_wakes_up_when_it_has_idled_and_shares_the_wake_up() -> None:
    """A cycle reads what has come, handles it and hands it over at its end; an idle loop first wakes up, which
    takes and costs its wake-up, and reads what came meanwhile too; a busy loop goes on without one."""
    services, wakes = np.full(4, 0.1), np.full(4, 0.5)
    # woken by the first, it reads the next two with it; the last wakes it again
    exits, costs = frontend_cycles_ms(np.array([0.0, 0.01, 0.02, 5.0]), services, wakes)
    assert exits.tolist() == pytest.approx([0.8, 0.8, 0.8, 5.6])
    assert costs.tolist() == pytest.approx([0.1 + 0.5 / 3] * 3 + [0.6])
    # the second comes as the first cycle ends: no wake-up for it, nor for the third, which comes during its cycle
    exits, costs = frontend_cycles_ms(np.array([0.0, 0.6, 0.65, 5.0]), services, wakes)
    assert exits.tolist() == pytest.approx([0.6, 0.7, 0.8, 5.6])
    assert costs.tolist() == pytest.approx([0.6, 0.1, 0.1, 0.6])
    # two loops: each request comes to its own, and none waits for the other loop's cycles
    exits, costs = frontend_cycles_ms(np.array([0.0, 0.01, 0.02, 5.0]), services, wakes, np.array([0, 1, 0, 1]))
    assert exits.tolist() == pytest.approx([0.7, 0.61, 0.7, 5.6])
    assert costs.tolist() == pytest.approx([0.35, 0.6, 0.35, 0.6])
    # no wake-up: an idle loop starts at the arrival, never before it
    exits, costs = frontend_cycles_ms(np.array([0.0, 0.05, 5.0]), services[:3], np.zeros(3))
    assert exits.tolist() == pytest.approx([0.1, 0.2, 5.1])
    assert costs.tolist() == pytest.approx([0.1] * 3)
