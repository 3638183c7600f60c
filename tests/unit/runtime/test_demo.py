from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

from sloserve.model_config import BatchingConfig, TensorSpec
from sloserve.registry.repository import ModelRepository
from sloserve.runtime.demo import DemoReport, build_digits, build_wide_mlp, wide_mlp_config
from sloserve.runtime.graph import check_config, read_signature
from sloserve.runtime.session import OnnxSession


@pytest.fixture(scope="module")
def digits(tmp_path_factory: pytest.TempPathFactory) -> tuple[ModelRepository, DemoReport]:
    repository = ModelRepository(tmp_path_factory.mktemp("repo"))
    return repository, build_digits(repository)


def _predict(model_path: Path, x: np.ndarray) -> dict[str, np.ndarray]:
    session = ort.InferenceSession(str(model_path), providers=["CPUExecutionProvider"])
    label, probabilities = session.run(["label", "probabilities"], {"input": x})
    return {"label": label, "probabilities": probabilities}


def test_digits_reaches_95_percent_held_out_with_onnxruntime(
    digits: tuple[ModelRepository, DemoReport],
) -> None:
    _, report = digits
    validation = np.load(report.validation_path)
    x, y = validation["X"], validation["y"]
    assert x.dtype == np.float32
    assert x.shape == (450, 64)
    assert y.dtype == np.int64
    assert x.min() >= 0.0 and x.max() <= 16.0  # raw pixels: the scaling is inside the graph
    assert np.bincount(y).min() >= 40  # stratified: every class held out

    out = _predict(report.model_path, x)
    accuracy = float(np.mean(out["label"] == y))
    assert accuracy >= 0.95
    assert accuracy == report.accuracy
    np.testing.assert_allclose(out["probabilities"].sum(axis=1), 1.0, rtol=1e-5)
    np.testing.assert_array_equal(out["probabilities"].argmax(axis=1), out["label"])
    assert report.train_s < 30


def test_digits_folder_and_config(digits: tuple[ModelRepository, DemoReport]) -> None:
    repository, report = digits
    entry = repository.load("digits")
    assert entry.versions == {"1": report.model_path}
    config = entry.config
    assert config.inputs == (TensorSpec("input", "FP32", (-1, 64)),)
    assert set(config.outputs) == {
        TensorSpec("probabilities", "FP32", (-1, 10)),
        TensorSpec("label", "INT64", (-1,)),
    }
    assert (config.max_batch_size, config.instance_count, config.intra_op_threads) == (64, 1, 1)
    assert config.batching == BatchingConfig()
    assert sorted(p.name for p in report.model_dir.iterdir()) == ["1", "config.json", "validation.npz"]


def test_digits_build_is_deterministic(tmp_path: Path, digits: tuple[ModelRepository, DemoReport]) -> None:
    _, first = digits
    second = build_digits(ModelRepository(tmp_path), name="digits-again")
    x = np.load(first.validation_path)["X"]
    np.testing.assert_array_equal(np.load(second.validation_path)["X"], x)
    a, b = _predict(first.model_path, x), _predict(second.model_path, x)
    np.testing.assert_array_equal(a["label"], b["label"])
    np.testing.assert_array_equal(a["probabilities"], b["probabilities"])


def test_wide_mlp_loads_runs_and_matches_its_config(tmp_path: Path) -> None:
    path = tmp_path / "wide.onnx"
    build_wide_mlp(path, in_features=32, width=64, layers=3, out_features=5, seed=7)
    config = wide_mlp_config("wide", in_features=32, out_features=5)
    check_config(config, path)
    assert read_signature(path) == (config.inputs, config.outputs)

    x = np.random.default_rng(0).standard_normal((9, 32)).astype(np.float32)
    out = OnnxSession(path).run({"input": x}, ["output"])["output"]
    assert out.shape == (9, 5)
    assert out.dtype == np.float32
    assert np.isfinite(out).all()
    assert out.std() > 0

    again = tmp_path / "again.onnx"
    build_wide_mlp(again, in_features=32, width=64, layers=3, out_features=5, seed=7)
    assert again.read_bytes() == path.read_bytes()
