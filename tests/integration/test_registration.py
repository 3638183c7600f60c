"""Register once, get a profiled family of variants; serve and pin them (issue 3)."""

from __future__ import annotations

import asyncio
import json
import os
import pickle
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import onnxruntime as ort
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient

from sloserve.control.registration import RegisterOptions, Registrar
from sloserve.errors import InvalidArgumentError
from sloserve.profiling.profiler import ProfileSettings
from sloserve.registry.db import RegistryDB
from sloserve.registry.repository import ModelRepository
from sloserve.runtime.demo import build_digits
from sloserve.variant import AccuracyKind, VariantStatus
from tests.integration.serverkit import ServerThread

FAST = ProfileSettings(batch_sizes=(1, 4, 16), warmup=3, min_samples=5, seconds_per_batch=0.03)
ALL = ["fp32", "int8-dynamic", "int8-static", "fp16", "pruned-50", "pruned-75", "pruned-90", "distilled"]


@pytest.fixture(scope="module")
def source(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """The digits ONNX file and its validation set, outside any repository."""
    scratch = tmp_path_factory.mktemp("digits-source")
    report = build_digits(ModelRepository(scratch))
    return report.model_path, report.validation_path


@pytest.fixture(scope="module")
def registered(tmp_path_factory: pytest.TempPathFactory, source: tuple[Path, Path]) -> tuple[Path, Path]:
    """A repository and a home where digits was registered with every recipe."""
    base = tmp_path_factory.mktemp("registered")
    repo, home = base / "repo", base / "home"
    with RegistryDB(home / "registry.sqlite3", repo) as db:
        registrar = Registrar(ModelRepository(repo), db, profile_settings=FAST)
        asyncio.run(registrar.register(source[0], "digits", RegisterOptions(validation=source[1])))
    return repo, home


def open_db(registered: tuple[Path, Path]) -> RegistryDB:
    repo, home = registered
    return RegistryDB(home / "registry.sqlite3", repo)


def test_every_recipe_is_recorded_and_ready_ones_have_profiles(registered: tuple[Path, Path]) -> None:
    with open_db(registered) as db:  # a new connection: the registry survived the registering process
        records = {r.id: r for r in db.variants("digits")}
        assert db.model("digits").state == "ready"  # type: ignore[union-attr]
    assert list(records) == ALL
    assert records["fp32"].status is VariantStatus.READY
    ready = [r for r in records.values() if r.status is VariantStatus.READY]
    assert len(ready) >= 6
    for r in records.values():
        if r.status is VariantStatus.READY:
            assert r.profile is not None and r.artifact and Path(r.artifact).is_file()
            assert set(r.profile.latency_ms) == {1, 4, 16}
            assert r.profile.throughput_sps > 0 and r.profile.memory_mb > 0 and r.profile.cost_cpu_s_per_1k > 0
        else:
            assert r.reason  # skipped or failed, always with a reason
    assert any(r.pareto for r in ready)
    assert records["fp16"].meant_for == "gpu"


def test_profiled_accuracy_matches_an_independent_measurement(
    registered: tuple[Path, Path], source: tuple[Path, Path]
) -> None:
    data = np.load(source[1])  # accuracy is scored on the odd rows; the even ones calibrate the recipes
    x, y = data["X"][1::2].astype(np.float32), data["y"][1::2]
    with open_db(registered) as db:
        for record in db.variants("digits"):
            if record.status is not VariantStatus.READY:
                continue
            assert record.profile is not None and record.artifact is not None
            session = ort.InferenceSession(record.artifact, providers=["CPUExecutionProvider"])
            # in batches of max_batch_size, as served: int8-dynamic scales depend on the batch
            labels = np.concatenate([session.run(["label"], {"input": x[i : i + 64]})[0] for i in range(0, len(x), 64)])
            assert record.profile.accuracy_kind is AccuracyKind.TOP1
            assert record.profile.accuracy == pytest.approx(float(np.mean(labels == y)), abs=1e-9), record.id
    fp32 = next(r for r in open_db(registered).variants("digits") if r.id == "fp32")
    assert fp32.profile is not None and fp32.profile.accuracy is not None and fp32.profile.accuracy >= 0.95


def cli(*args: str, home: Path, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "SLOSERVE_HOME": str(home), "COLUMNS": "200"}
    return subprocess.run(
        [sys.executable, "-m", "sloserve.cli", *args], capture_output=True, text=True, env=env, timeout=timeout
    )


def test_variants_json_schema_and_table(registered: tuple[Path, Path]) -> None:
    repo, home = registered
    result = cli("variants", "digits", "--json", "--repository", str(repo), home=home)
    assert result.returncode == 0, result.stderr
    variants = json.loads(result.stdout)
    required = {
        "id",
        "recipe",
        "status",
        "reason",
        "accuracy",
        "accuracy_kind",
        "latency_ms",
        "throughput_sps",
        "memory_mb",
        "size_bytes",
        "cost_cpu_s_per_1k",
        "pareto",
        "artifact",
    }
    for v in variants:
        assert required <= set(v), required - set(v)
        assert v["status"] in ("ready", "skipped", "failed")
        if v["status"] == "ready":
            for stats in v["latency_ms"].values():
                assert stats["p50"] <= stats["p95"] <= stats["p99"]
    table = cli("variants", "digits", "--repository", str(repo), home=home)
    assert table.returncode == 0 and "int8-dynamic" in table.stdout and "frontier" in table.stdout
    for suffix in (".svg", ".png"):
        out = repo.parent / f"plot{suffix}"
        drawn = cli("plot", "digits", "-o", str(out), "--repository", str(repo), home=home)
        assert drawn.returncode == 0, drawn.stderr
        assert out.stat().st_size > 1000
    assert (repo.parent / "plot.png").read_bytes()[:4] == b"\x89PNG"


@pytest.fixture(scope="module")
def served(registered: tuple[Path, Path]) -> Iterator[ServerThread]:
    repo, home = registered
    server = ServerThread(repo, home=home).start()
    yield server
    server.stop()


def test_variants_are_versions_and_can_be_pinned(
    served: ServerThread, registered: tuple[Path, Path], source: Any
) -> None:
    with open_db(registered) as db:
        ready = [r for r in db.variants("digits") if r.status is VariantStatus.READY]
    # fewer rows than any best batch: larger requests are split, and int8-dynamic answers depend on the batch
    x = np.load(source[1])["X"][:8].astype(np.float32)
    http = httpclient.InferenceServerClient(served.http_url)
    grpc = grpcclient.InferenceServerClient(served.grpc_url)
    assert http.get_model_metadata("digits")["versions"] == [r.id for r in ready]
    unpinned = http.infer("digits", [_http_input(x)]).get_response()  # selection: the default SLO applies
    assert unpinned["model_version"] in [r.id for r in ready]
    assert unpinned["parameters"]["variant"] == unpinned["model_version"]
    for record in ready:
        assert record.artifact is not None
        direct = ort.InferenceSession(record.artifact, providers=["CPUExecutionProvider"])
        want = direct.run(["label", "probabilities"], {"input": x})
        got = http.infer("digits", [_http_input(x)], model_version=record.id)
        assert got.get_response()["model_version"] == record.id
        np.testing.assert_array_equal(got.as_numpy("label"), want[0])
        np.testing.assert_allclose(got.as_numpy("probabilities"), want[1], rtol=1e-5, atol=1e-6)
        g = grpc.infer("digits", [_grpc_input(x)], model_version=record.id)
        np.testing.assert_array_equal(g.as_numpy("label"), want[0])
    listed = httpx.get(f"http://{served.http_url}/v2/models/digits/variants").json()
    assert [v["id"] for v in listed] == ALL
    assert http.get_model_metadata("digits", "int8-dynamic")["name"] == "digits"
    grpc.close()


def _http_input(x: np.ndarray[Any, Any]) -> httpclient.InferInput:
    inp = httpclient.InferInput("input", list(x.shape), "FP32")
    inp.set_data_from_numpy(x, binary_data=True)
    return inp


def _grpc_input(x: np.ndarray[Any, Any]) -> grpcclient.InferInput:
    inp = grpcclient.InferInput("input", list(x.shape), "FP32")
    inp.set_data_from_numpy(x)
    return inp


def test_bad_input_leaves_the_registry_unchanged(tmp_path: Path, source: tuple[Path, Path]) -> None:
    repo, home = tmp_path / "repo", tmp_path / "home"
    bad_validation = tmp_path / "bad.npz"
    np.savez(bad_validation, X=np.zeros((10, 63), dtype=np.float32))
    not_estimator = tmp_path / "dict.pkl"
    not_estimator.write_bytes(pickle.dumps({"weights": [1, 2, 3]}))
    broken_onnx = tmp_path / "broken.onnx"
    broken_onnx.write_bytes(source[0].read_bytes()[:200])
    cases = [
        ((str(source[0]), "--validation", str(bad_validation)), "shape"),
        ((str(not_estimator),), "not a scikit-learn estimator"),
        ((str(broken_onnx),), "ONNX"),
        ((str(source[0]), "--recipes", "fp32,turbo"), "unknown recipe"),
    ]
    for args, message in cases:
        result = cli("register", *args, "--name", "m", "--repository", str(repo), home=home)
        assert result.returncode == 2, result.stdout
        assert message.lower() in result.stderr.lower(), result.stderr
        assert not (repo / "m").exists()
        with RegistryDB(home / "registry.sqlite3", repo) as db:
            assert db.model("m") is None


def test_a_registered_name_is_refused_unless_replaced(tmp_path: Path, source: tuple[Path, Path]) -> None:
    repo = tmp_path / "repo"
    with RegistryDB(tmp_path / "registry.sqlite3", repo) as db:
        registrar = Registrar(ModelRepository(repo), db, profile_settings=FAST)
        options = RegisterOptions(validation=source[1], recipes=["fp32"])
        asyncio.run(registrar.register(source[0], "m", options))
        with pytest.raises(InvalidArgumentError, match="--replace"):
            asyncio.run(registrar.register(source[0], "m", options))
        replaced = RegisterOptions(validation=source[1], recipes=["fp32", "int8-dynamic"], replace=True)
        records = asyncio.run(registrar.register(source[0], "m", replaced))
        assert [r.id for r in records] == ["fp32", "int8-dynamic"]
        assert db.model("m").generation == 2  # type: ignore[union-attr]


def test_a_registration_killed_midway_resumes(tmp_path: Path, source: tuple[Path, Path]) -> None:
    repo, home = tmp_path / "repo", tmp_path / "home"
    env = {**os.environ, "SLOSERVE_HOME": str(home)}
    args = [
        sys.executable,
        "-m",
        "sloserve.cli",
        "register",
        str(source[0]),
        "--name",
        "m",
        "--validation",
        str(source[1]),
        "--repository",
        str(repo),
        "--profile-seconds",
        "0.03",
    ]
    proc = subprocess.Popen(args, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    database = home / "registry.sqlite3"
    deadline = time.monotonic() + 120
    recorded = 0
    while time.monotonic() < deadline and recorded < 2:
        time.sleep(0.05)
        if database.exists():
            with sqlite3.connect(database) as conn:
                try:
                    recorded = conn.execute("SELECT COUNT(*) FROM variants").fetchone()[0]
                except sqlite3.OperationalError:
                    pass
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert recorded >= 2
    with RegistryDB(database, repo) as db:
        row = db.model("m")
        assert row is not None and row.state == "registering"
        assert all(r.profile is not None for r in db.variants("m") if r.status is VariantStatus.READY)
        before = [r.id for r in db.variants("m")]
    resumed = subprocess.run(args, env=env, capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr
    with RegistryDB(database, repo) as db:
        assert db.model("m").state == "ready"  # type: ignore[union-attr]
        records = db.variants("m")
        assert [r.id for r in records] == ALL
        assert [r.id for r in records][: len(before)] == before
        assert any("resume" in e.detail for e in db.events("m"))
    on_disk = {p.name for p in (repo / "m").iterdir() if p.is_dir()}
    ready = {r.id for r in records if r.status is VariantStatus.READY}
    assert on_disk == ready | {"1"}  # no half-built variant left behind
