from __future__ import annotations

import json
import os
import pickle
import re
import shutil
from pathlib import Path

import joblib
import numpy as np
import pytest
from onnx import TensorProto, helper
from sklearn.datasets import load_iris, load_wine
from sklearn.linear_model import LogisticRegression, Ridge
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from sloserve.errors import InvalidArgumentError, NotFoundError
from sloserve.model_config import ModelConfig, TensorSpec
from sloserve.registry.repository import IndexEntry, ModelRepository
from sloserve.runtime.session import OnnxSession


def _listing(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*")) if root.exists() else []


def _identity_onnx(path: Path, first_dim: int | str = "N", width: int = 3) -> Path:
    graph = helper.make_graph(
        [helper.make_node("Identity", ["x"], ["y"])],
        "identity",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [first_dim, width])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [first_dim, width])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)], ir_version=10)
    path.write_bytes(model.SerializeToString())
    return path


def _predict(repository: ModelRepository, name: str, x: np.ndarray, outputs: list[str]) -> dict[str, np.ndarray]:
    return OnnxSession(repository.artifact(name, "1")).run({"input": x}, outputs)


@pytest.fixture(scope="module")
def iris() -> tuple[np.ndarray, np.ndarray]:
    x, y = load_iris(return_X_y=True)
    return x, y


@pytest.fixture
def repo(tmp_path: Path) -> ModelRepository:
    return ModelRepository(tmp_path / "repo")


def test_add_onnx_file(repo: ModelRepository, tmp_path: Path) -> None:
    source = _identity_onnx(tmp_path / "identity.onnx")

    config = repo.add_model_file(source, "identity", max_batch_size=16)

    assert config == ModelConfig(
        name="identity",  # type: ignore[arg-type]
        inputs=(TensorSpec("x", "FP32", (-1, 3)),),
        outputs=(TensorSpec("y", "FP32", (-1, 3)),),
        max_batch_size=16,
    )
    assert repo.names() == ["identity"]
    assert repo.read_config("identity") == config
    assert repo.artifact("identity", "1").read_bytes() == source.read_bytes()
    assert json.loads((repo.root / "identity" / "config.json").read_text()) == config.to_dict()
    assert repo.index() == [IndexEntry("identity", ("1",), "ok")]  # type: ignore[arg-type]


def test_add_onnx_file_with_fixed_batch_dim_disables_batching(repo: ModelRepository, tmp_path: Path) -> None:
    config = repo.add_model_file(_identity_onnx(tmp_path / "fixed.onnx", first_dim=1), "fixed")
    assert config.max_batch_size == 0
    assert config.inputs == (TensorSpec("x", "FP32", (1, 3)),)
    repo.load("fixed")


def test_add_pickled_classifier_matches_sklearn(
    repo: ModelRepository, tmp_path: Path, iris: tuple[np.ndarray, np.ndarray]
) -> None:
    x, y = iris
    est = LogisticRegression(max_iter=1000).fit(x, y)
    path = tmp_path / "iris.pkl"
    path.write_bytes(pickle.dumps(est))

    config = repo.add_model_file(path, "iris")

    assert config.inputs == (TensorSpec("input", "FP32", (-1, 4)),)
    assert {t.name for t in config.outputs} == {"label", "probabilities"}
    out = _predict(repo, "iris", x.astype(np.float32), ["label", "probabilities"])
    np.testing.assert_array_equal(out["label"], est.predict(x))
    np.testing.assert_allclose(out["probabilities"], est.predict_proba(x), atol=1e-4)


def test_add_pickled_regressor_matches_sklearn(repo: ModelRepository, tmp_path: Path) -> None:
    x, y = load_wine(return_X_y=True)
    est = make_pipeline(StandardScaler(), Ridge()).fit(x, y.astype(np.float64))
    path = tmp_path / "wine.pickle"
    path.write_bytes(pickle.dumps(est))

    config = repo.add_model_file(path, "wine-regressor")

    assert config.inputs == (TensorSpec("input", "FP32", (-1, 13)),)
    (output,) = config.outputs
    out = _predict(repo, "wine-regressor", x.astype(np.float32), [output.name])
    np.testing.assert_allclose(out[output.name].ravel(), est.predict(x), rtol=1e-4, atol=1e-4)


def test_add_compressed_joblib_file(repo: ModelRepository, tmp_path: Path, iris: tuple[np.ndarray, np.ndarray]) -> None:
    x, y = iris
    est = LogisticRegression(max_iter=1000).fit(x, y)
    path = tmp_path / "iris.joblib"
    joblib.dump(est, path, compress=3)

    repo.add_model_file(path, "iris_joblib", max_batch_size=8)

    assert repo.read_config("iris_joblib").max_batch_size == 8
    out = _predict(repo, "iris_joblib", x.astype(np.float32), ["probabilities"])
    np.testing.assert_allclose(out["probabilities"], est.predict_proba(x), atol=1e-4)


def test_files_that_are_not_models_leave_the_repository_unchanged(repo: ModelRepository, tmp_path: Path) -> None:
    repo.add_model_file(_identity_onnx(tmp_path / "identity.onnx"), "existing")
    before = _listing(repo.root)
    text = tmp_path / "notes.txt"
    text.write_text("not a model\n")
    a_dict = tmp_path / "dict.pkl"
    a_dict.write_bytes(pickle.dumps({"weights": [1, 2]}))
    noise = tmp_path / "noise.bin"
    noise.write_bytes(np.random.default_rng(0).bytes(4096))

    with pytest.raises(
        InvalidArgumentError, match=re.escape(f"{text}") + " is not an ONNX model or a pickled scikit-learn"
    ):
        repo.add_model_file(text, "text")
    with pytest.raises(InvalidArgumentError, match="holds a dict, not a scikit-learn estimator"):
        repo.add_model_file(a_dict, "a_dict")
    with pytest.raises(InvalidArgumentError, match="is not an ONNX model or a pickled"):
        repo.add_model_file(noise, "noise")
    with pytest.raises(InvalidArgumentError, match="does not exist"):
        repo.add_model_file(tmp_path / "absent.onnx", "absent")
    with pytest.raises(InvalidArgumentError, match="invalid model name"):
        repo.add_model_file(text, "../escape")

    assert _listing(repo.root) == before
    assert not [p for p in repo.root.iterdir() if p.name.startswith(".")]


def test_failed_validation_removes_the_staging_folder(repo: ModelRepository, tmp_path: Path) -> None:
    repo.add_model_file(_identity_onnx(tmp_path / "identity.onnx"), "existing")
    before = _listing(repo.root)
    wrong = ModelConfig(
        name="wrong",  # type: ignore[arg-type]
        inputs=(TensorSpec("x", "FP32", (-1, 4)),),
        outputs=(TensorSpec("y", "FP32", (-1, 3)),),
    )
    with pytest.raises(InvalidArgumentError, match="dimension 1 is 4 in the config, 3 in the graph"):
        repo.write_model(wrong, tmp_path / "identity.onnx")
    with pytest.raises(InvalidArgumentError, match="is not a loadable ONNX model"):
        repo.write_model(wrong, b"not onnx")
    with pytest.raises(InvalidArgumentError, match=r"extra file name 'config\.json'"):
        repo.write_model(wrong, tmp_path / "identity.onnx", {"config.json": b"{}"})
    assert _listing(repo.root) == before


def test_duplicate_name_is_refused_and_replace_swaps(repo: ModelRepository, tmp_path: Path) -> None:
    repo.add_model_file(_identity_onnx(tmp_path / "narrow.onnx", width=3), "m")
    before = _listing(repo.root)
    wide = _identity_onnx(tmp_path / "wide.onnx", width=5)

    with pytest.raises(InvalidArgumentError, match=r"already exists .*use --replace"):
        repo.add_model_file(wide, "m")
    assert _listing(repo.root) == before
    assert repo.read_config("m").inputs[0].shape == (-1, 3)

    config = repo.add_model_file(wide, "m", replace=True)

    assert config.inputs[0].shape == (-1, 5)
    assert repo.read_config("m") == config
    assert repo.artifact("m", "1").read_bytes() == wide.read_bytes()
    assert sorted(p.name for p in repo.root.iterdir()) == ["m"]  # no leftover staging or old folder


def test_write_model_with_extra_files(repo: ModelRepository, tmp_path: Path) -> None:
    source = _identity_onnx(tmp_path / "identity.onnx")
    extra = tmp_path / "notes.md"
    extra.write_text("hello")
    config = ModelConfig(
        name="with-extras",  # type: ignore[arg-type]
        inputs=(TensorSpec("x", "FP32", (-1, 3)),),
        outputs=(TensorSpec("y", "FP32", (-1, 3)),),
    )
    folder = repo.write_model(config, source.read_bytes(), {"validation.npz": b"npz", "README.md": extra})
    assert folder == repo.root / "with-extras"
    assert sorted(p.name for p in folder.iterdir()) == ["1", "README.md", "config.json", "validation.npz"]
    assert (folder / "README.md").read_text() == "hello"
    assert repo.load("with-extras").config == config


def test_reading_errors(repo: ModelRepository, tmp_path: Path) -> None:
    repo.add_model_file(_identity_onnx(tmp_path / "identity.onnx"), "good")
    with pytest.raises(NotFoundError, match="unknown model 'absent'"):
        repo.read_config("absent")
    with pytest.raises(NotFoundError):
        repo.read_config("../repo")
    with pytest.raises(NotFoundError, match="has no version '2'"):
        repo.artifact("good", "2")

    bad_json = repo.root / "bad_json"
    bad_json.mkdir()
    (bad_json / "config.json").write_text("{ not json")
    with pytest.raises(InvalidArgumentError, match=re.escape(f"{bad_json / 'config.json'} is not valid JSON")):
        repo.read_config("bad_json")

    renamed = repo.root / "renamed"
    shutil.copytree(repo.root / "good", renamed)
    with pytest.raises(InvalidArgumentError, match="name 'good' does not match the folder name 'renamed'"):
        repo.read_config("renamed")

    (repo.root / "no_config").mkdir()
    with pytest.raises(InvalidArgumentError, match=r"config\.json is missing"):
        repo.read_config("no_config")


def test_versions_are_folders_with_an_artifact_numbers_first(repo: ModelRepository, tmp_path: Path) -> None:
    repo.add_model_file(_identity_onnx(tmp_path / "identity.onnx"), "m")
    folder = repo.root / "m"
    for version in ("10", "2"):
        (folder / version).mkdir()
        shutil.copyfile(folder / "1" / "model.onnx", folder / version / "model.onnx")
    (folder / "3").mkdir()  # no model.onnx
    (folder / ".tmp-x").mkdir()  # a temporary folder is never a version
    (folder / ".tmp-x" / "model.onnx").write_bytes(b"")
    repo.write_version("m", "int8-dynamic", folder / "1" / "model.onnx")

    assert repo.versions("m") == ["1", "2", "10", "int8-dynamic"]
    assert list(repo.load("m").versions) == ["1", "2", "10", "int8-dynamic"]
    with pytest.raises(NotFoundError):
        repo.artifact("m", "3")
    with pytest.raises(InvalidArgumentError):
        repo.write_version("m", "bad", b"not onnx")
    assert "bad" not in repo.versions("m")
    assert not any(p.name.startswith(".tmp-") and p.name != ".tmp-x" for p in folder.iterdir())


def test_index_reports_broken_models_without_raising(repo: ModelRepository, tmp_path: Path) -> None:
    source = _identity_onnx(tmp_path / "identity.onnx")
    for name in ("a_ok", "b_mismatch", "c_no_version", "d_bad_config", "e_bad_artifact"):
        repo.add_model_file(source, name)
    # b: the config no longer matches the graph
    config_path = repo.root / "b_mismatch" / "config.json"
    raw = json.loads(config_path.read_text())
    raw["inputs"][0]["datatype"] = "INT64"
    config_path.write_text(json.dumps(raw))
    shutil.rmtree(repo.root / "c_no_version" / "1")
    (repo.root / "d_bad_config" / "config.json").write_text(json.dumps({"name": "d_bad_config"}))
    (repo.root / "e_bad_artifact" / "1" / "model.onnx").write_bytes(b"garbage")
    (repo.root / ".tmp-half-written").mkdir()
    (repo.root / "stray-file.txt").write_text("not a model folder")

    index = {entry.name: entry for entry in repo.index()}

    assert list(index) == ["a_ok", "b_mismatch", "c_no_version", "d_bad_config", "e_bad_artifact"]
    assert index["a_ok"] == IndexEntry("a_ok", ("1",), "ok")  # type: ignore[arg-type]
    assert index["b_mismatch"].state == "error"
    assert "datatype is INT64 in the config, FP32 in the graph" in index["b_mismatch"].reason
    assert index["c_no_version"].versions == ()
    assert "has no version" in index["c_no_version"].reason
    assert "inputs: expected a non-empty list" in index["d_bad_config"].reason
    assert index["e_bad_artifact"].versions == ("1",)
    assert "is not a loadable ONNX model" in index["e_bad_artifact"].reason
    with pytest.raises(InvalidArgumentError):
        repo.load("b_mismatch")


def test_empty_or_absent_root(tmp_path: Path) -> None:
    repo = ModelRepository(tmp_path / "not-yet")
    assert repo.names() == []
    assert repo.index() == []
    assert not os.path.exists(tmp_path / "not-yet")
