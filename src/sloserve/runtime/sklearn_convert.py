"""Turn a pickled (or joblib-dumped) scikit-learn estimator into ONNX bytes.

Unpickling runs code from the file: only register files you trust, as with any
pickle. scikit-learn and skl2onnx are imported on first use (skl2onnx alone
takes seconds to import), so importing this module is cheap.

The ONNX graph has one input, ``input``, of shape ``[-1, n_features]``.
Classifiers are exported without skl2onnx's ZipMap, so their outputs are plain
tensors: ``label`` ``[-1]`` and ``probabilities`` ``[-1, n_classes]``.
Regressors keep skl2onnx's output name, ``variable``, ``[-1, n_targets]``.
"""

from __future__ import annotations

import numbers
from pathlib import Path
from typing import Any, Final

from sloserve.errors import InvalidArgumentError
from sloserve.runtime.graph import TARGET_OPSET

INPUT_NAME: Final = "input"
INPUT_DATATYPES: Final = ("FP32", "FP64", "INT64")


def load_estimator(path: Path) -> Any:
    """Unpickle ``path`` and check that it holds a fitted scikit-learn estimator."""
    import joblib
    from sklearn.base import BaseEstimator
    from sklearn.exceptions import NotFittedError
    from sklearn.utils.validation import check_is_fitted

    if not path.is_file():
        raise InvalidArgumentError(f"{path} does not exist or is not a file")
    try:
        estimator = joblib.load(path)
    except Exception as exc:  # unpickling can raise anything the pickled code raises
        raise InvalidArgumentError(
            f"{path} is not an ONNX model or a pickled scikit-learn estimator: {type(exc).__name__}: {exc}"
        ) from None
    if not isinstance(estimator, BaseEstimator):
        raise InvalidArgumentError(
            f"{path} holds a {_class_name(estimator)}, not a scikit-learn estimator; "
            "pickle the fitted estimator (or Pipeline) itself"
        )
    try:
        check_is_fitted(estimator)
    except NotFittedError:
        raise InvalidArgumentError(
            f"{path} holds an unfitted {_class_name(estimator)}; fit it before registering"
        ) from None
    return estimator


def estimator_to_onnx(estimator: Any, *, n_features: int | None = None, input_datatype: str = "FP32") -> bytes:
    """Convert a fitted estimator with skl2onnx; return the serialized ONNX model."""
    from skl2onnx import convert_sklearn
    from skl2onnx.common.data_types import DoubleTensorType, FloatTensorType, Int64TensorType
    from sklearn.base import is_classifier

    tensor_types = {"FP32": FloatTensorType, "FP64": DoubleTensorType, "INT64": Int64TensorType}
    if input_datatype not in tensor_types:
        raise InvalidArgumentError(
            f"input datatype {input_datatype!r} is not supported for scikit-learn models; "
            f"use one of {list(INPUT_DATATYPES)}"
        )
    name = _class_name(estimator)
    n_features = _n_features(estimator, name, n_features)
    final = estimator
    while hasattr(final, "steps"):  # a Pipeline: the last step decides the outputs
        final = final.steps[-1][1]
    options = {id(final): {"zipmap": False}} if is_classifier(final) else None
    try:
        model = convert_sklearn(
            estimator,
            initial_types=[(INPUT_NAME, tensor_types[input_datatype]([None, n_features]))],
            options=options,
            target_opset=TARGET_OPSET,
        )
    except Exception as exc:  # skl2onnx raises many unrelated classes for unsupported models
        reason = " ".join(str(exc).split("\n", 1)[0].split()) or type(exc).__name__
        raise InvalidArgumentError(f"cannot convert scikit-learn {name} to ONNX (skl2onnx: {reason})") from None
    data: bytes = model.SerializeToString()
    return data


def convert_file(path: Path, *, n_features: int | None = None, input_datatype: str = "FP32") -> bytes:
    """Load a pickled/joblib estimator from ``path`` and return it as ONNX bytes."""
    return estimator_to_onnx(load_estimator(path), n_features=n_features, input_datatype=input_datatype)


def _n_features(estimator: Any, name: str, given: int | None) -> int:
    fitted = getattr(estimator, "n_features_in_", None)
    if given is not None and given < 1:
        raise InvalidArgumentError(f"n_features must be at least 1, got {given}")
    if given is not None and fitted is not None and given != fitted:
        raise InvalidArgumentError(f"n_features is {given} but the {name} was fitted on {fitted} features")
    n = given if given is not None else fitted
    if not isinstance(n, numbers.Integral):
        raise InvalidArgumentError(f"cannot tell how many features the {name} takes; pass n_features")
    return int(n)


def _class_name(obj: object) -> str:
    return type(obj).__name__
