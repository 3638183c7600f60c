"""The profiler against a real worker process running the digits model."""

from __future__ import annotations

import os
import re
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper

from sloserve.errors import SloserveError
from sloserve.model_config import ModelConfig, TensorSpec
from sloserve.profiling.graph_stats import graph_stats
from sloserve.profiling.profiler import ProfileSettings, profile_variant, reference_outputs
from sloserve.registry.repository import ModelRepository
from sloserve.types import ModelName
from sloserve.variant import AccuracyKind, Task, VariantProfile

pytestmark = pytest.mark.integration

Array = np.ndarray[Any, Any]
SIZES = (1, 8, 32)
SHORT = ProfileSettings(batch_sizes=SIZES, warmup=5, min_samples=20, seconds_per_batch=0.05)


def worker_pid(messages: list[str]) -> int:
    found = next(m for m in (re.search(r"worker pid (\d+)", msg) for msg in messages) if m)
    return int(found.group(1))


def assert_gone(pid: int) -> None:
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)


@pytest.fixture(scope="module")
def digits(repository: Path) -> tuple[Path, ModelConfig, Array, Array]:
    repo = ModelRepository(repository)
    data = np.load(repository / "digits" / "validation.npz")
    return repo.artifact("digits", "1"), repo.read_config("digits"), data["X"], data["y"]


@pytest.mark.parametrize("kind", ["process", "auto"])
async def test_profile_of_the_digits_model(
    kind: str, digits: tuple[Path, ModelConfig, Array, Array], digits_reference: ort.InferenceSession
) -> None:
    """Measured in the replica the server will use: a worker process, or (auto, a model this small) inline."""
    artifact, config, x, y = digits
    config = replace(config, replica_kind=kind)
    messages: list[str] = []
    profile = await profile_variant(
        artifact,
        config,
        validation={"input": x},
        labels=y,
        reference_outputs=None,
        task=Task.CLASSIFICATION,
        settings=SHORT,
        progress=messages.append,
    )
    if kind == "process":
        assert_gone(worker_pid(messages))
    else:
        assert messages[0].endswith("(inline)")

    assert sorted(profile.latency_ms) == list(SIZES)
    for stats in profile.latency_ms.values():
        assert 0 < stats.p50_ms <= stats.p95_ms <= stats.p99_ms
    assert profile.latency_intercept_ms >= 0
    assert profile.latency_per_row_ms >= 0
    for size, stats in profile.latency_ms.items():
        # A tiny model on a shared machine: the fit is a line through noisy points.
        assert abs(profile.predict_latency_ms(size) - stats.p50_ms) <= 0.5 * stats.p50_ms + 0.1
    rows_per_ms = {b: b / s.p50_ms for b, s in profile.latency_ms.items()}
    assert rows_per_ms[profile.best_batch] == max(rows_per_ms.values())

    assert profile.throughput_sps > 0
    # a worker: its whole process; inline: what loading the model added here, at least its weights
    assert profile.memory_mb > 10 if kind == "process" else profile.memory_mb >= artifact.stat().st_size / 2**20
    assert profile.load_ms > 0
    assert profile.cost_cpu_s_per_1k > 0
    assert profile.size_bytes == artifact.stat().st_size
    assert (profile.flops_per_row, profile.parameters) == graph_stats(artifact)
    assert profile.parameters == 64 * 64 + 64 + 64 * 10 + 10  # the MLP's coefficients and intercepts

    predicted = digits_reference.run(["label"], {"input": x})[0]
    assert profile.accuracy_kind is AccuracyKind.TOP1
    assert profile.accuracy == float(np.mean(predicted == y))
    assert VariantProfile.from_dict(profile.to_dict()) == profile
    assert any(m.startswith("batch 8: p50 ") for m in messages)


async def test_fidelity_to_the_reference_without_labels(
    digits: tuple[Path, ModelConfig, Array, Array], digits_reference: ort.InferenceSession
) -> None:
    artifact, config, x, _ = digits
    reference = await reference_outputs(artifact, config, {"input": x})
    expected = digits_reference.run(["label", "probabilities"], {"input": x})
    assert np.array_equal(reference["label"], expected[0])
    np.testing.assert_allclose(reference["probabilities"], expected[1], rtol=1e-5, atol=1e-6)

    settings = ProfileSettings(batch_sizes=(4,), warmup=1, min_samples=5, seconds_per_batch=0.02)
    profile = await profile_variant(
        artifact,
        config,
        validation={"input": x.astype(np.float64)},  # cast to the config's FP32
        labels=None,
        reference_outputs=reference,
        task=Task.CLASSIFICATION,
        settings=settings,
    )
    assert (profile.accuracy, profile.accuracy_kind) == (1.0, AccuracyKind.FIDELITY_TOP1)
    assert list(profile.latency_ms) == [4]
    assert profile.best_batch == 4


async def test_without_validation_data_latency_only(digits: tuple[Path, ModelConfig, Array, Array]) -> None:
    artifact, config, _, _ = digits
    settings = ProfileSettings(batch_sizes=(2, 16), warmup=1, min_samples=5, seconds_per_batch=0.02)
    profile = await profile_variant(
        artifact,
        config,
        validation=None,
        labels=None,
        reference_outputs=None,
        task=Task.CLASSIFICATION,
        settings=settings,
    )
    assert sorted(profile.latency_ms) == [2, 16]
    assert (profile.accuracy, profile.accuracy_kind) == (None, None)
    assert profile.throughput_sps > 0


async def test_the_worker_is_stopped_when_the_model_fails(tmp_path: Path) -> None:
    """A model that only runs at batch 1 (it reshapes to [1, 4]) fails at batch 8."""
    graph = helper.make_graph(
        [helper.make_node("Reshape", ["x", "shape"], ["y"])],
        "batch_one",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4])],
        [helper.make_tensor("shape", TensorProto.INT64, [2], [1, 4])],
    )
    path = tmp_path / "model.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)], ir_version=10), str(path))
    config = ModelConfig(
        name=ModelName("batch_one"),
        inputs=(TensorSpec("x", "FP32", (-1, 4)),),
        outputs=(TensorSpec("y", "FP32", (-1, 4)),),
        max_batch_size=8,
        replica_kind="process",
    )
    messages: list[str] = []
    with pytest.raises(SloserveError):
        await profile_variant(
            path,
            config,
            validation=None,
            labels=None,
            reference_outputs=None,
            task=Task.OTHER,
            settings=ProfileSettings(batch_sizes=(1, 8), warmup=2, min_samples=5, seconds_per_batch=0.01),
            progress=messages.append,
        )
    assert_gone(worker_pid(messages))
