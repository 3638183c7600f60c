"""Model-less serving over HTTP and gRPC: SLOs choose the variant; admission refuses what cannot be served."""

from __future__ import annotations

import asyncio
import concurrent.futures
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import orjson
import pytest
import tritonclient.grpc as grpcclient

from sloserve.control.registration import RegisterOptions, Registrar
from sloserve.policy.selection import COST_TOLERANCE
from sloserve.profiling.profiler import ProfileSettings
from sloserve.registry.db import RegistryDB
from sloserve.registry.repository import ModelRepository
from sloserve.runtime.demo import build_digits_wide
from sloserve.variant import VariantRecord, VariantStatus
from tests.integration.serverkit import ServerThread

FAST = ProfileSettings(batch_sizes=(1, 4, 16, 64), warmup=3, min_samples=5, seconds_per_batch=0.03)


@pytest.fixture(scope="module")
def family(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, list[VariantRecord], np.ndarray[Any, Any]]:
    base = tmp_path_factory.mktemp("slo")
    # the wide MLP: its variants differ in cost per row (pruned and distilled ones at about half of fp32's), so a
    # many-row query has a genuinely cheaper variant; on the small digits MLP every variant costs the same
    report = build_digits_wide(ModelRepository(base / "scratch"), name="digits")
    repo, home = base / "repo", base / "home"
    with RegistryDB(home / "registry.sqlite3", repo) as db:
        registrar = Registrar(ModelRepository(repo), db, profile_settings=FAST)
        records = asyncio.run(
            registrar.register(report.model_path, "digits", RegisterOptions(validation=report.validation_path))
        )
    x = np.load(report.validation_path)["X"].astype(np.float32)
    return repo, home, [r for r in records if r.status is VariantStatus.READY], x


@pytest.fixture(scope="module")
def server(family: tuple[Path, Path, list[VariantRecord], Any]) -> Iterator[ServerThread]:
    repo, home, _, _ = family
    running = ServerThread(repo, home=home).start()
    yield running
    running.stop()


def infer(server: ServerThread, x: np.ndarray[Any, Any], **parameters: Any) -> httpx.Response:
    body = {
        "inputs": [{"name": "input", "shape": list(x.shape), "datatype": "FP32", "data": x.ravel().tolist()}],
        "parameters": parameters,
    }
    return httpx.post(f"http://{server.http_url}/v2/models/digits/infer", content=orjson.dumps(body), timeout=30)


def alone_cost(record: VariantRecord, rows: int) -> float:
    """What a query of ``rows`` rows costs on this variant in a batch of its own (the policy's query cost)."""
    assert record.profile is not None
    return record.profile.cost_cpu_s_per_1k + record.profile.latency_intercept_ms / rows


def cheapest(records: list[VariantRecord], min_accuracy: float, rows: int) -> set[str]:
    """The accurate-enough variants such a query would cost least on, within the policy's tolerance."""
    eligible = [
        r for r in records if r.profile and r.profile.accuracy is not None and r.profile.accuracy >= min_accuracy
    ]
    least = min(alone_cost(r, rows) for r in eligible)
    return {r.id for r in eligible if alone_cost(r, rows) <= least * (1 + COST_TOLERANCE)}


def test_loose_and_tight_slos_choose_different_variants_and_say_so(server: ServerThread, family: Any) -> None:
    _, _, records, x = family
    accuracies = {r.id: r.profile.accuracy for r in records if r.profile and r.profile.accuracy is not None}
    tight_accuracy, loose_accuracy = max(accuracies.values()), min(accuracies.values())
    most_accurate = {v for v, a in accuracies.items() if a == tight_accuracy}
    assert not most_accurate & cheapest(records, loose_accuracy, rows=64), "nothing to tell apart in this family"
    # tight: only the most accurate variant qualifies; loose: any does, so the one its 64 rows cost least on
    # serves (its cold start, a few ms inline, fits either SLO)
    tight = infer(server, x[:1], latency_slo_ms=50, min_accuracy=tight_accuracy)
    loose = infer(server, x[:64], latency_slo_ms=30_000, min_accuracy=loose_accuracy)
    assert tight.status_code == 200 and loose.status_code == 200, (tight.text, loose.text)
    t, lo = tight.json()["parameters"], loose.json()["parameters"]
    assert t["variant"] in most_accurate
    assert lo["variant"] in cheapest(records, loose_accuracy, rows=64)
    assert t["variant"] != lo["variant"]
    for p in (t, lo):
        assert p["slo_met"] is True and p["queue_ms"] >= 0 and p["compute_ms"] > 0
    assert tight.json()["model_version"] == t["variant"]


def test_pinning_a_version_skips_selection(server: ServerThread, family: Any) -> None:
    _, _, records, x = family
    pinned = records[-1].id
    response = httpx.post(
        f"http://{server.http_url}/v2/models/digits/versions/{pinned}/infer",
        content=orjson.dumps(
            {
                "inputs": [{"name": "input", "shape": [1, 64], "datatype": "FP32", "data": x[0].tolist()}],
                "parameters": {"min_accuracy": 0.99999},
            }
        ),
    )
    assert response.status_code == 200, response.text
    assert response.json()["parameters"]["variant"] == pinned


def test_an_impossible_slo_is_refused_with_the_closest_variants_unless_best_effort(
    server: ServerThread, family: Any
) -> None:
    _, _, records, x = family
    refused = infer(server, x[:1], latency_slo_ms=0.001, min_accuracy=0.5)
    assert refused.status_code == 400
    message = refused.json()["error"]
    assert "idle" in message and "closest" in message and any(r.id in message for r in records)
    too_accurate = infer(server, x[:1], min_accuracy=1.0)
    assert too_accurate.status_code == 400 and "accuracy" in too_accurate.json()["error"]
    served = infer(server, x[:1], latency_slo_ms=0.001, min_accuracy=0.5, best_effort=True)
    assert served.status_code == 200
    assert served.json()["parameters"]["slo_met"] is False
    for bad in ({"latency_slo_ms": -1}, {"min_accuracy": 2}, {"latency_slo_ms": "soon"}, {"best_effort": "maybe"}):
        assert infer(server, x[:1], **bad).status_code == 400


def test_a_query_that_waited_out_its_slo_before_it_was_read_is_refused_as_overload(
    server: ServerThread, family: Any
) -> None:
    """The SLO counts from the request's first bytes: one whose body took longer than its SLO to arrive
    is refused at once with 429 (retry), before any work is spent on it, not served late."""
    _, _, _, x = family
    body = orjson.dumps(
        {
            "inputs": [{"name": "input", "shape": [1, 64], "datatype": "FP32", "data": x[0].tolist()}],
            "parameters": {"latency_slo_ms": 20, "min_accuracy": 0.5},
        }
    )
    host, port = server.http_url.split(":")
    with socket.create_connection((host, int(port))) as conn:
        head = f"POST /v2/models/digits/infer HTTP/1.1\r\nHost: x\r\nContent-Length: {len(body)}\r\n\r\n"
        conn.sendall(head.encode() + body[:10])
        time.sleep(0.05)  # 50 ms before the rest of the body: more than the 20 ms SLO
        conn.sendall(body[10:])
        answer = conn.recv(65536).decode()
    assert answer.startswith("HTTP/1.1 429"), answer
    assert "retry-after" in answer.lower() and "waited" in answer
    assert infer(server, x[:1], latency_slo_ms=20, min_accuracy=0.5).status_code == 200  # sent at once: served


def test_grpc_carries_the_slo_and_the_answer(server: ServerThread, family: Any) -> None:
    _, _, records, x = family
    client = grpcclient.InferenceServerClient(server.grpc_url)
    inp = grpcclient.InferInput("input", [1, 64], "FP32")
    inp.set_data_from_numpy(x[:1])
    lowest = min(r.profile.accuracy for r in records if r.profile and r.profile.accuracy is not None)
    # tritonclient's gRPC client cannot send float parameters: numbers travel as strings
    result = client.infer("digits", [inp], parameters={"latency_slo_ms": "50", "min_accuracy": str(lowest)})
    params = result.get_response(as_json=True)["parameters"]
    accuracy = {r.id: r.profile.accuracy for r in records if r.profile and r.profile.accuracy is not None}
    assert accuracy[params["variant"]["string_param"]] >= lowest
    assert params["slo_met"]["bool_param"] is True
    with pytest.raises(Exception, match="idle"):
        client.infer("digits", [inp], parameters={"latency_slo_ms": "0.001"})
    client.close()


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


def test_overload_gets_fast_429s_not_timeouts_and_memory_stays_flat(family: Any) -> None:
    """Against `sloserve serve` in its own process, so the load's threads don't share its GIL."""
    repo, home, records, x = family
    ports = [_free_port() for _ in range(3)]
    env = {**os.environ, "SLOSERVE_HOME": str(home)}
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "sloserve.cli",
            "serve",
            "--repository",
            str(repo),
            "--log-level",
            "warning",
            "--http-port",
            str(ports[0]),
            "--grpc-port",
            str(ports[1]),
            "--metrics-port",
            str(ports[2]),
        ],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{ports[0]}/v2/models/digits/infer"
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"http://127.0.0.1:{ports[0]}/v2/health/ready").status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.1)
        fastest = min(r.profile.latency_ms[1].p50_ms for r in records if r.profile)  # type: ignore[union-attr]
        slo_ms = max(1.0, 2 * fastest)  # easy alone, impossible for a crowd
        before = rss_mb(proc.pid)

        def worker(w: int) -> list[tuple[int, float, bool]]:
            out = []
            with httpx.Client(timeout=10) as client:
                for i in range(w, 2400, 32):
                    body = {
                        "inputs": [
                            {"name": "input", "shape": [1, 64], "datatype": "FP32", "data": x[i % 400].tolist()}
                        ],
                        "parameters": {"latency_slo_ms": slo_ms, "min_accuracy": 0.0},
                    }
                    response = client.post(url, content=orjson.dumps(body))
                    out.append(
                        (response.status_code, response.elapsed.total_seconds(), "retry-after" in response.headers)
                    )
            return out

        with concurrent.futures.ThreadPoolExecutor(32) as pool:
            results = [r for chunk in pool.map(worker, range(32)) for r in chunk]
        after = rss_mb(proc.pid)
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(30)
    statuses = {s for s, _, _ in results}
    assert statuses <= {200, 429, 504}, statuses
    refused = [(e, retry) for s, e, retry in results if s == 429]
    assert refused, "the crowd was never refused: the SLO was not tight enough to overload"
    assert all(retry for _, retry in refused)
    refused_ms = sorted(e * 1e3 for e, _ in refused)
    assert refused_ms[len(refused_ms) // 2] < 50  # refused at once, not after queueing
    assert after - before < 50, (before, after)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])
