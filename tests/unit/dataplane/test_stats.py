from __future__ import annotations

import numpy as np

from sloserve.dataplane.stats import ModelStats


def test_requests_added_in_bulk_count_as_added_one_at_a_time() -> None:
    total, queue, compute = [0.0012345678, 0.5, 3e-9], [0.0001, 0.0, 1e-10], [0.0003, 0.25, 0.0]
    one, bulk = ModelStats("m", "1"), ModelStats("m", "1")
    for t, q, c in zip(total, queue, compute, strict=True):
        one.request_succeeded(3, t, q, c)
    bulk.requests_succeeded(9, np.array(total), np.array(queue), np.array(compute), one.last_inference_ms)
    assert bulk.to_dict() == one.to_dict()
    assert bulk.to_dict()["inference_stats"]["success"] == {"count": 3, "ns": 1_234_567 + 500_000_000 + 3}
