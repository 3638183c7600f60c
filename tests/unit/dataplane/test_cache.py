"""The prediction cache: digests, LRU by bytes, TTL on a fake clock, invalidation, and through the data plane."""

from __future__ import annotations

import asyncio
from dataclasses import replace
from types import MappingProxyType
from typing import Any

import numpy as np
import orjson
import pytest
from hypothesis import assume, given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from sloserve.catalog import CatalogSnapshot, LoadedModel, RunningVersion
from sloserve.dataplane.cache import ENTRY_OVERHEAD_BYTES, PredictionCache, input_digest
from sloserve.dataplane.dataplane import DataPlane
from sloserve.errors import InvalidArgumentError, ResourceExhaustedError
from sloserve.metrics import ServingMetrics
from sloserve.model_config import CacheConfig, HedgingConfig, ModelConfig, TensorSpec
from sloserve.policy.selection import Slo
from sloserve.protocol.types import InferRequest, Tensor
from sloserve.replica import Arrays
from sloserve.server.http.app import HttpApp
from sloserve.server.http.serve import HttpRequest, Later
from sloserve.testing import FakeClock, FakeReplica
from sloserve.types import ModelName, VersionId

V1 = VersionId("1")

arrays = hnp.arrays(
    dtype=st.sampled_from([np.float32, np.int64, np.uint8, np.float64]),
    shape=hnp.array_shapes(min_dims=1, max_dims=3, max_side=4),
)
tensors = st.dictionaries(st.sampled_from(["a", "b", "input", "x"]), arrays, min_size=1, max_size=3)


def _same(a: dict[str, np.ndarray[Any, Any]], b: dict[str, np.ndarray[Any, Any]]) -> bool:
    return a.keys() == b.keys() and all(
        a[k].dtype == b[k].dtype and a[k].shape == b[k].shape and a[k].tobytes() == b[k].tobytes() for k in a
    )


@given(tensors, tensors)
def test_different_inputs_never_share_a_digest(a: dict[str, Any], b: dict[str, Any]) -> None:
    assume(not _same(a, b))
    assert input_digest(a) != input_digest(b)


@given(tensors)
def test_the_same_input_has_the_same_digest_in_any_order_and_layout(a: dict[str, Any]) -> None:
    copies = {k: np.array(v, order="F") for k, v in reversed(list(a.items()))}
    assert input_digest(a) == input_digest(copies)


def test_digests_tell_apart_what_bytes_alone_would_not() -> None:
    x = np.zeros((2, 3), np.float32)
    assert input_digest({"x": x}) != input_digest({"x": x.reshape(3, 2)})  # shape
    assert input_digest({"x": x}) != input_digest({"y": x})  # name
    assert input_digest({"x": x}) != input_digest({"x": x.view(np.int32)})  # dtype
    words = np.array([[b"ab", b"c"]], dtype=np.object_)
    assert input_digest({"w": words}) != input_digest({"w": np.array([[b"a", b"bc"]], dtype=np.object_)})


CONFIG = ModelConfig(
    name=ModelName("m"),
    inputs=(TensorSpec("x", "FP32", (-1, 2)),),
    outputs=(TensorSpec("y", "FP32", (-1, 2)),),
    max_batch_size=4,
    cache=CacheConfig(enabled=True, ttl_s=10.0, max_bytes=4 * (ENTRY_OVERHEAD_BYTES + 8)),
    hedging=HedgingConfig(enabled=False),
)


def snapshot(config: ModelConfig, running: RunningVersion) -> CatalogSnapshot:
    loaded = LoadedModel(config, (running.version,), running.version, MappingProxyType({running.version: running}))
    return CatalogSnapshot(loaded=MappingProxyType({config.name: loaded}))


def out(value: float) -> dict[str, np.ndarray[Any, Any]]:
    return {"y": np.full((1, 2), value, np.float32)}  # 8 bytes: an entry costs ENTRY_OVERHEAD_BYTES + 8


def cache_with(config: ModelConfig = CONFIG) -> tuple[PredictionCache, FakeClock, RunningVersion]:
    clock = FakeClock()
    cache = PredictionCache(clock)
    running = RunningVersion(V1, (FakeReplica("a"),))
    cache.retain(snapshot(config, running))
    return cache, clock, running


def test_a_stored_answer_is_returned_read_only_and_a_copy() -> None:
    cache, _, running = cache_with()
    answer = out(1.0)
    cache.store("m", running, b"k", answer)
    answer["y"][:] = 99  # the caller's array is not the cached one
    got = cache.lookup("m", V1, b"k")
    assert got is not None and got["y"].tolist() == [[1.0, 1.0]]
    assert not got["y"].flags.writeable
    assert cache.lookup("m", V1, b"other") is None
    assert cache.lookup("m", VersionId("2"), b"k") is None


def test_the_bytes_bound_holds_and_the_least_recently_used_goes_first() -> None:
    cache, _, running = cache_with()
    for i in range(4):
        cache.store("m", running, bytes([i]), out(float(i)))
    assert cache.lookup("m", V1, bytes([0])) is not None  # 0 is now the most recently used
    cache.store("m", running, b"new", out(9.0))
    assert cache.nbytes("m") <= CONFIG.cache.max_bytes
    assert cache.lookup("m", V1, bytes([1])) is None  # evicted
    assert all(cache.lookup("m", V1, k) is not None for k in (bytes([0]), bytes([2]), bytes([3]), b"new"))
    huge = {"y": np.zeros((1000, 2), np.float32)}
    cache.store("m", running, b"huge", huge)  # larger than the whole cache: not kept, nothing evicted
    assert cache.lookup("m", V1, b"huge") is None and len(cache) == 4


@given(st.lists(st.tuples(st.integers(0, 20), st.integers(1, 40)), max_size=60))
def test_the_bytes_bound_holds_for_any_sequence_of_stores(stores: list[tuple[int, int]]) -> None:
    cache, _, running = cache_with(replace(CONFIG, cache=CacheConfig(enabled=True, max_bytes=3000)))
    for key, rows in stores:
        cache.store("m", running, bytes([key]), {"y": np.zeros((rows, 2), np.float32)})
        assert cache.nbytes("m") <= 3000


async def test_entries_expire_after_their_ttl() -> None:
    cache, clock, running = cache_with()
    cache.store("m", running, b"k", out(1.0))
    await clock.advance(9.9)
    assert cache.lookup("m", V1, b"k") is not None
    await clock.advance(0.2)
    assert cache.lookup("m", V1, b"k") is None
    assert cache.nbytes("m") == 0


def test_a_model_change_invalidates_but_scaling_a_version_does_not() -> None:
    cache, _, running = cache_with()
    cache.store("m", running, b"k", out(1.0))
    scaled = RunningVersion(V1, (*running.replicas, FakeReplica("b")))  # same replicas plus one
    cache.retain(snapshot(CONFIG, scaled))
    assert cache.lookup("m", V1, b"k") is not None
    reloaded = RunningVersion(V1, (FakeReplica("a"),))  # a new artifact: all new workers
    cache.retain(snapshot(CONFIG, reloaded))
    assert cache.lookup("m", V1, b"k") is None
    cache.store("m", running, b"k", out(1.0))  # computed by the old replicas while it was replaced
    assert cache.lookup("m", V1, b"k") is None
    cache.store("m", reloaded, b"k", out(2.0))
    changed = replace(CONFIG, cache=replace(CONFIG.cache, ttl_s=5.0))
    cache.retain(snapshot(changed, reloaded))  # a new config
    assert cache.lookup("m", V1, b"k") is None
    cache.store("m", reloaded, b"k", out(2.0))
    cache.retain(CatalogSnapshot())  # unloaded
    assert cache.lookup("m", V1, b"k") is None and len(cache) == 0


def test_a_model_with_the_cache_off_stores_nothing() -> None:
    cache, _, running = cache_with(replace(CONFIG, cache=CacheConfig(enabled=False)))
    cache.store("m", running, b"k", out(1.0))
    assert cache.lookup("m", V1, b"k") is None


# ---------------------------------------------------------------- through the data plane


def triple(inputs: Arrays) -> dict[str, np.ndarray[Any, Any]]:
    return {"y": inputs["x"] * np.float32(3)}


def infer_request(x: np.ndarray[Any, Any]) -> InferRequest:
    return InferRequest(model_name="m", inputs=[Tensor("x", "FP32", x.shape, x)])


async def plane_with(config: ModelConfig, replicas: int = 2) -> tuple[DataPlane, list[FakeReplica], FakeClock]:
    clock = FakeClock()
    metrics = ServingMetrics()
    plane = DataPlane(clock, metrics)
    fakes = [FakeReplica(f"r{i}", 2, compute=triple) for i in range(replicas)]
    await plane.apply_catalog(snapshot(config, RunningVersion(V1, tuple(fakes))))
    return plane, fakes, clock


async def test_a_repeated_request_is_answered_from_the_cache_and_says_so() -> None:
    plane, fakes, _ = await plane_with(replace(CONFIG, cache=CacheConfig(enabled=True)))
    x = np.array([[1.0, 2.0]], np.float32)
    first = await plane.infer(infer_request(x))
    second = await plane.infer(infer_request(x.copy()))
    assert "cache" not in first.parameters and second.parameters["cache"] is True
    assert np.array_equal(first.outputs[0].data, second.outputs[0].data)
    assert sum(len(f.batches) for f in fakes) == 1
    other = await plane.infer(infer_request(np.array([[1.0, 2.5]], np.float32)))
    assert "cache" not in other.parameters and other.outputs[0].data.tolist() == [[3.0, 7.5]]
    text = plane._metrics.exposition().decode()
    assert 'sloserve_cache_hit_total{model="m"} 1.0' in text
    assert 'sloserve_cache_miss_total{model="m"} 2.0' in text
    await plane.apply_catalog(CatalogSnapshot())


async def test_reloading_the_model_invalidates_its_answers() -> None:
    config = replace(CONFIG, cache=CacheConfig(enabled=True))
    plane, _, _ = await plane_with(config)
    x = np.array([[1.0, 2.0]], np.float32)
    await plane.infer(infer_request(x))
    assert (await plane.infer(infer_request(x))).parameters["cache"] is True
    new = FakeReplica("new", 2, compute=lambda inputs: {"y": inputs["x"] * np.float32(4)})
    await plane.apply_catalog(snapshot(config, RunningVersion(V1, (new,))))  # a new artifact
    again = await plane.infer(infer_request(x))
    assert "cache" not in again.parameters and again.outputs[0].data.tolist() == [[4.0, 8.0]]
    await plane.apply_catalog(CatalogSnapshot())


async def test_a_request_larger_than_the_best_batch_is_split_and_answered_in_order() -> None:
    plane, fakes, _ = await plane_with(CONFIG, replicas=3)
    x = np.arange(4 * 64 * 2, dtype=np.float32).reshape(-1, 2)  # 256 rows: 64 x max_batch_size 4, the bound
    response = await plane.infer(infer_request(x))
    assert np.array_equal(response.outputs[0].data, x * np.float32(3))
    assert all(b["x"].shape[0] <= 4 for f in fakes for b in f.batches)
    assert all(f.batches for f in fakes)
    with pytest.raises(InvalidArgumentError, match="max_batch_size"):
        await plane.infer(infer_request(np.zeros((257, 2), np.float32)))
    await plane.apply_catalog(CatalogSnapshot())


async def test_a_latency_slo_counts_from_when_the_server_received_the_request() -> None:
    """A request that waited in a busy front end before the data plane saw it has spent that much of its
    SLO: one received longer ago than its SLO is refused as overload before any work, not served late."""
    plane, fakes, clock = await plane_with(CONFIG)
    x = np.array([[1.0, 2.0]], np.float32)
    late = infer_request(x)
    late.parameters = {"latency_slo_ms": 5}
    late.received_s = clock.now() - 0.006
    with pytest.raises(ResourceExhaustedError, match=r"waited 6\.0 ms"):
        await plane.infer(late)
    assert not any(f.batches for f in fakes)
    in_time = infer_request(x)
    in_time.parameters = {"latency_slo_ms": 5}
    in_time.received_s = clock.now() - 0.004
    response = await plane.infer(in_time)
    assert response.parameters["slo_met"] is True
    await plane.apply_catalog(CatalogSnapshot())


async def test_a_query_whose_slo_the_event_loops_lag_would_spend_is_refused_before_any_work() -> None:
    """Once read, a request waits a turn of the event loop for its batch and another for its answer: when the
    loop runs that far behind (LoopLag), a query with less SLO left is refused at once; a looser one is served."""
    plane, fakes, clock = await plane_with(CONFIG)
    plane._loop_lag.lag_ms = 2.0
    x = np.array([[1.0, 2.0]], np.float32)
    tight = infer_request(x)
    tight.parameters = {"latency_slo_ms": 5}
    tight.received_s = clock.now() - 0.0015  # 1.5 + 2 x 2.0 ms >= 5 ms
    with pytest.raises(ResourceExhaustedError, match=r"event loop runs ~2\.0 ms behind"):
        await plane.infer(tight)
    assert not any(f.batches for f in fakes)
    assert (
        'sloserve_request_failure_total{model="m",reason="loop_overloaded"} 1.0' in plane._metrics.exposition().decode()
    )
    loose = infer_request(x)
    loose.parameters = {"latency_slo_ms": 7}  # 1.5 + 4 < 7 (and too tight to be held for a batch)
    loose.received_s = clock.now() - 0.0015
    assert (await plane.infer(loose)).parameters["slo_met"] is True
    unbounded = infer_request(x)  # no latency SLO: nothing to refuse it for
    assert "slo_met" in (await plane.infer(unbounded)).parameters
    await plane.apply_catalog(CatalogSnapshot())


async def test_a_query_the_saturated_loops_backlog_would_make_miss_is_refused_before_any_work() -> None:
    """On a saturated loop a request read now waits for the requests in flight: when that backlog reaches its
    SLO it is refused at once (and counted in the loop's CPU per request, as over a transport); a looser one is
    served."""
    plane, fakes, _clock = await plane_with(CONFIG)
    loop = plane._loop_lag
    loop.in_flight, loop.ms_per_request = 10, 0.5  # 5 ms >= 5 ms
    x = np.array([[1.0, 2.0]], np.float32)
    tight = infer_request(x)
    tight.parameters = {"latency_slo_ms": 5}
    taken = loop.taken
    with pytest.raises(
        ResourceExhaustedError, match=r"saturated, with 10 requests in flight ahead of this one \(~5\.0 ms"
    ):
        await plane.infer(tight)
    assert not any(f.batches for f in fakes) and loop.taken == taken + 1
    assert 'reason="loop_saturated"} 1.0' in plane._metrics.exposition().decode()
    loose = infer_request(x)
    loose.parameters = {"latency_slo_ms": 7}  # 5 < 7 (and too tight to be held for a batch on the fake clock)
    assert (await plane.infer(loose)).parameters["slo_met"] is True
    assert loop.in_flight == 10 and loop.taken == taken + 2  # counted in while it waited, and out
    await plane.apply_catalog(CatalogSnapshot())


async def test_a_query_read_right_after_the_process_was_stopped_is_refused_for_the_stall() -> None:
    """A process stopped for 30 ms (LoopLag.stall_ms) reads the requests that came meanwhile in its next turn:
    they may have waited all of it, unseen; one whose SLO that spends is refused; once the next look has
    cleared the stall the same query is served."""
    plane, fakes, _clock = await plane_with(CONFIG)
    plane._loop_lag.stall_ms = 30.0
    x = np.array([[1.0, 2.0]], np.float32)
    query = infer_request(x)
    query.parameters = {"latency_slo_ms": 7}
    with pytest.raises(ResourceExhaustedError, match=r"event loop was held up for ~30 ms without working"):
        await plane.infer(query)
    assert not any(f.batches for f in fakes)
    plane._loop_lag.stall_ms = 0.0
    query = infer_request(x)
    query.parameters = {"latency_slo_ms": 7}  # too tight to be held for a batch on the fake clock
    assert (await plane.infer(query)).parameters["slo_met"] is True
    await plane.apply_catalog(CatalogSnapshot())


async def test_a_refusal_is_handed_over_after_the_turns_reads_and_any_other_answer_at_once() -> None:
    """Over HTTP a 429 is not written from the read that made it: the app hands it over from a callback after
    this turn's reads (a write between reads cost about twice an answer's). Other errors are answered at once."""
    plane, _fakes, clock = await plane_with(CONFIG)
    app = HttpApp(plane)
    plane._loop_lag.lag_ms = 10.0  # past a 5 ms SLO: refused
    body = orjson.dumps(
        {
            "inputs": [{"name": "x", "shape": [1, 2], "datatype": "FP32", "data": [1.0, 2.0]}],
            "parameters": {"latency_slo_ms": 5},
        }
    )
    refused = app(HttpRequest("POST", "/v2/models/m/infer", [], body, clock.now()))
    assert isinstance(refused, Later) and refused.response is None
    written: list[int] = []
    refused.then(lambda response: written.append(response.status))
    await asyncio.sleep(0)  # the turn's other callbacks (reads) first, then the refusal
    assert written == [429] and refused.response is not None
    assert (b"retry-after", b"1") in refused.response.headers
    unknown = app(HttpRequest("POST", "/v2/models/nope/infer", [], body, clock.now()))
    assert isinstance(unknown, Later) and unknown.response is not None and unknown.response.status == 404
    gone = app(HttpRequest("POST", "/v2/models/m/infer", [], body, clock.now()))
    assert isinstance(gone, Later)
    gone.then(lambda response: written.append(response.status))
    gone.cancel()  # its client went away before the callback: nothing is written for it
    await asyncio.sleep(0)
    assert written == [429]
    await plane.apply_catalog(CatalogSnapshot())


async def test_the_transport_refuses_for_the_loops_lag_before_decoding_tensors_and_infer_checks_no_more() -> None:
    """Over HTTP the lag check runs once the body is parsed and before its tensors are decoded (so a refusal
    costs the parse alone): a tight query is refused with 429 even when its tensor would not decode. A request
    the transport admitted is not checked again (its decoding took time the check already allowed for). HTTP
    answers from the batch's turn, so it allows for one turn of lag, not two."""
    plane, fakes, clock = await plane_with(CONFIG)
    app = HttpApp(plane)
    plane._loop_lag.lag_ms = 2.0
    broken = orjson.dumps(
        {
            "inputs": [{"name": "x", "shape": [1, 2], "datatype": "FP32", "data": [1.0]}],
            "parameters": {"latency_slo_ms": 5},
        }
    )
    received = clock.now() - 0.0029  # 2.9 + 2.0 ms < 5 ms: admitted, and its tensor refused
    assert (await app(HttpRequest("POST", "/v2/models/m/infer", [], broken, received))).status == 400
    received = clock.now() - 0.003  # 3.0 + 1 x 2.0 ms >= 5 ms
    refused = await app(HttpRequest("POST", "/v2/models/m/infer", [], broken, received))
    assert refused.status == 429 and b"runs ~2.0 ms behind (a turn for the batch and its answer)" in refused.body
    assert plane._loop_lag.taken == 1  # taken in (for the loop's CPU per request), though infer never ran
    loose = orjson.dumps(
        {
            "inputs": [{"name": "x", "shape": [1, 2], "datatype": "FP32", "data": [1.0, 2.0]}],
            "parameters": {"latency_slo_ms": 7},
        }
    )
    served = await app(HttpRequest("POST", "/v2/models/m/infer", [], loose, received))
    assert served.status == 200 and orjson.loads(served.body)["outputs"][0]["data"] == [3.0, 6.0]
    admitted = infer_request(np.array([[2.0, 3.0]], np.float32))  # not the cached input
    admitted.parameters = {"latency_slo_ms": 5}
    admitted.received_s = received
    admitted.slo = Slo(latency_ms=5.0)  # as the transport's check leaves it: the refused query, now served
    assert (await plane.infer(admitted)).parameters["slo_met"] is True
    assert sum(len(f.batches) for f in fakes) == 2 and plane._loop_lag.taken == 3
    text = plane._metrics.exposition().decode()
    assert 'sloserve_request_failure_total{model="m",reason="loop_overloaded"} 1.0' in text
    await plane.apply_catalog(CatalogSnapshot())
