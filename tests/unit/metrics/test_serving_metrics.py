from __future__ import annotations

from sloserve.metrics import ServingMetrics


def test_two_instances_in_one_process_do_not_collide() -> None:
    a, b = ServingMetrics(), ServingMetrics()
    a.request_started("m")
    a.request_succeeded("m", rows=3, total_s=0.002, queue_s=0.001)
    a.batch_executed("m", rows=3, compute_s=0.001)
    text_a, text_b = a.exposition().decode(), b.exposition().decode()
    assert 'sloserve_request_success_total{model="m"} 1.0' in text_a
    assert 'sloserve_inference_count_total{model="m"} 3.0' in text_a
    assert 'sloserve_pending_requests{model="m"} 0.0' in text_a
    assert 'model="m"' not in text_b


def test_failures_and_rejections_are_counted_by_reason() -> None:
    m = ServingMetrics()
    m.request_started("m")
    m.request_failed("m", "unavailable", 0.01)
    m.request_rejected("m", "resource_exhausted")
    text = m.exposition().decode()
    assert 'sloserve_request_failure_total{model="m",reason="unavailable"} 1.0' in text
    assert 'sloserve_request_failure_total{model="m",reason="resource_exhausted"} 1.0' in text


def test_per_query_slo_counters_add_up_when_read() -> None:
    m = ServingMetrics()
    for _ in range(3):
        m.variant_selected("m", "int8")
    m.slo_outcome("m", "int8", True)
    m.slo_outcome("m", "int8", False)
    m.slo_outcome("m", "int8", True)
    text = m.exposition().decode()
    assert 'sloserve_variant_selections_total{model="m",variant="int8"} 3.0' in text
    assert 'sloserve_slo_requests_total{met="true",model="m",variant="int8"} 2.0' in text
    m.variant_selected("m", "int8")
    assert 'sloserve_variant_selections_total{model="m",variant="int8"} 4.0' in m.exposition().decode()


def test_histograms_count_a_value_in_every_bucket_it_does_not_exceed() -> None:
    m = ServingMetrics()
    m.batch_executed("m", rows=4, compute_s=0.001)  # exactly on the 4-row and the 1 ms bounds
    m.batch_executed("m", rows=5000, compute_s=20.0)  # past the last bound of each
    text = m.exposition().decode()
    assert 'sloserve_batch_size_bucket{le="2.0",model="m"} 0.0' in text
    assert 'sloserve_batch_size_bucket{le="4.0",model="m"} 1.0' in text
    assert 'sloserve_batch_size_bucket{le="1024.0",model="m"} 1.0' in text
    assert 'sloserve_batch_size_bucket{le="+Inf",model="m"} 2.0' in text
    assert 'sloserve_batch_size_sum{model="m"} 5004.0' in text
    assert 'sloserve_compute_duration_seconds_bucket{le="0.0005",model="m"} 0.0' in text
    assert 'sloserve_compute_duration_seconds_bucket{le="0.001",model="m"} 1.0' in text
    assert 'sloserve_compute_duration_seconds_count{model="m"} 2.0' in text


def test_the_event_loops_lag_busy_share_and_stalls_are_read_at_each_scrape() -> None:
    """Nothing is exported before a loop is attached; then its numbers as they are when read."""
    from dataclasses import dataclass

    @dataclass
    class Loop:
        lag_ms: float = 0.0
        busy: float = 0.0
        stalls: int = 0
        stalled_s: float = 0.0
        in_flight: int = 0
        backlog_ms: float = 0.0

    m = ServingMetrics()
    assert "\nsloserve_event_loop_lag_seconds " not in m.exposition().decode()  # described, no sample
    loop = Loop()
    m.event_loop(loop)
    loop.lag_ms, loop.busy, loop.stalls, loop.stalled_s = 2.5, 0.75, 3, 0.25
    loop.in_flight, loop.backlog_ms = 40, 1.5
    text = m.exposition().decode()
    assert "sloserve_event_loop_lag_seconds 0.0025" in text
    assert "sloserve_event_loop_busy_ratio 0.75" in text
    assert "sloserve_event_loop_stalls_total 3.0" in text
    assert "sloserve_event_loop_stalled_seconds_total 0.25" in text
    assert "sloserve_in_flight_requests 40.0" in text
    assert "sloserve_event_loop_backlog_seconds 0.0015" in text


def test_answers_added_in_bulk_read_as_added_one_at_a_time() -> None:
    """The data plane adds its answers up in bulk: the same histograms, counts, sums and SLO outcomes."""
    import numpy as np

    total = [0.00005, 0.0003, 0.001, 0.001, 0.0049, 20.0]  # on bounds, between them, past the last
    queue = [0.0, 0.0001, 0.0002, 0.00025, 0.004, 1.0]
    one, bulk = ServingMetrics(), ServingMetrics()
    for t, q in zip(total, queue, strict=True):
        one.request_started("m")
        bulk.request_started("m")
        one.request_succeeded("m", rows=2, total_s=t, queue_s=q)
    for met in (True, True, False):
        one.slo_outcome("m", "int8", met)
    bulk.requests_succeeded("m", len(total), 2 * len(total), np.array(total), np.array(queue))
    bulk.slo_outcomes("m", "int8", 2, 1)
    bulk.slo_outcomes("m", "fp32", 0, 0)  # nothing: no series

    def series(m: ServingMetrics) -> list[str]:  # every line but the counters' creation times
        return [line for line in m.exposition().decode().splitlines() if "_created" not in line]

    assert series(bulk) == series(one)
