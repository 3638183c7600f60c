from __future__ import annotations

import pickle
import re
from pathlib import Path

import joblib
import numpy as np
import onnxruntime as ort
import pytest
from sklearn.cluster import DBSCAN
from sklearn.datasets import load_wine
from sklearn.linear_model import LinearRegression, LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from sloserve.errors import InvalidArgumentError
from sloserve.runtime.sklearn_convert import convert_file, estimator_to_onnx


@pytest.fixture(scope="module")
def wine() -> tuple[np.ndarray, np.ndarray]:
    x, y = load_wine(return_X_y=True)
    return x, y


def _run(onnx_bytes: bytes, x: np.ndarray) -> list[np.ndarray]:
    session = ort.InferenceSession(onnx_bytes, providers=["CPUExecutionProvider"])
    return list(session.run(None, {"input": x}))


def test_pipeline_classifier_exports_plain_tensors(wine: tuple[np.ndarray, np.ndarray]) -> None:
    x, y = wine
    est = make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000)).fit(x, y)
    label, probabilities = _run(estimator_to_onnx(est), x.astype(np.float32))
    np.testing.assert_array_equal(label, est.predict(x))
    np.testing.assert_allclose(probabilities, est.predict_proba(x), atol=1e-4)


@pytest.mark.parametrize(("datatype", "dtype"), [("FP64", np.float64), ("INT64", np.int64)])
def test_input_datatype_option(datatype: str, dtype: type, wine: tuple[np.ndarray, np.ndarray]) -> None:
    x, y = wine
    xi = np.rint(x).astype(dtype)
    est = LinearRegression().fit(xi, y)
    (prediction,) = _run(estimator_to_onnx(est, input_datatype=datatype), xi)
    np.testing.assert_allclose(prediction.ravel(), est.predict(xi), rtol=1e-4, atol=1e-4)


def test_bad_options_are_refused(wine: tuple[np.ndarray, np.ndarray]) -> None:
    x, y = wine
    est = LinearRegression().fit(x, y)
    with pytest.raises(InvalidArgumentError, match="input datatype 'FP16' is not supported"):
        estimator_to_onnx(est, input_datatype="FP16")
    with pytest.raises(InvalidArgumentError, match="n_features is 5 but the LinearRegression was fitted on 13"):
        estimator_to_onnx(est, n_features=5)


def test_unsupported_estimator_is_named(wine: tuple[np.ndarray, np.ndarray]) -> None:
    est = DBSCAN().fit(wine[0][:50])
    with pytest.raises(InvalidArgumentError, match=r"cannot convert scikit-learn DBSCAN to ONNX \(skl2onnx: "):
        estimator_to_onnx(est)


def test_files_that_are_not_fitted_estimators(tmp_path: Path, wine: tuple[np.ndarray, np.ndarray]) -> None:
    text = tmp_path / "notes.txt"
    text.write_text("not a pickle")
    a_dict = tmp_path / "dict.pkl"
    a_dict.write_bytes(pickle.dumps({"coef": [1.0, 2.0]}))
    unfitted = tmp_path / "unfitted.joblib"
    joblib.dump(LogisticRegression(), unfitted)

    with pytest.raises(InvalidArgumentError, match=re.escape(f"{text} is not an ONNX model or a pickled scikit-learn")):
        convert_file(text)
    with pytest.raises(InvalidArgumentError, match="holds a dict, not a scikit-learn estimator"):
        convert_file(a_dict)
    with pytest.raises(InvalidArgumentError, match="holds an unfitted LogisticRegression"):
        convert_file(unfitted)
    with pytest.raises(InvalidArgumentError, match="does not exist"):
        convert_file(tmp_path / "absent.pkl")
