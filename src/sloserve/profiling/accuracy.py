"""How good a variant's predictions are, as one number where higher is better.

With labels, a classifier is scored by top-1 accuracy and a regressor by R²
(:attr:`AccuracyKind.TOP1`, :attr:`AccuracyKind.R2`, floored at -1). Without labels, a variant
is scored by its fidelity to the reference model (the registered original) on
the same validation rows: top-1 agreement for classifiers
(:attr:`AccuracyKind.FIDELITY_TOP1`), ``1 - relative L2 error`` over the
floating-point outputs otherwise (:attr:`AccuracyKind.FIDELITY`, clipped to
[0, 1]). When neither is possible the accuracy is unknown (``None``).

A classifier's predicted class is read from a one-dimensional integer (or
string) output named like ``label``, else as the argmax of its first
two-dimensional floating-point output (probabilities or logits).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from sloserve.errors import InvalidArgumentError
from sloserve.variant import AccuracyKind, Task

Array = np.ndarray[Any, Any]


def measure_accuracy(
    outputs: Mapping[str, Array],
    *,
    task: Task,
    labels: Array | None,
    reference: Mapping[str, Array] | None,
) -> tuple[float | None, AccuracyKind | None]:
    """Score ``outputs`` (the variant's outputs on the whole validation set).

    Raises InvalidArgumentError when ``labels`` or ``reference`` do not have as
    many rows as the outputs: that is a caller's mistake, not a bad variant.
    """
    if labels is not None:
        scored = _against_labels(outputs, task, np.asarray(labels))
        if scored is not None:
            return scored
    if reference is not None:
        return _fidelity(outputs, task, reference)
    return None, None


def predicted_classes(outputs: Mapping[str, Array]) -> Array | None:
    """The predicted class of each row, or None when the outputs do not say."""
    labelled = [
        (name, a)
        for name, a in outputs.items()
        if "label" in name.lower() and a.ndim == 1 and a.dtype.kind in ("i", "u", "O", "S", "U")
    ]
    if labelled:
        labelled.sort(key=lambda item: (item[0].lower() != "label", item[0]))
        return _comparable(labelled[0][1])
    for array in outputs.values():
        if array.ndim == 2 and array.dtype.kind == "f" and array.shape[1] > 0:
            classes: Array = np.argmax(array, axis=1)
            return classes
    return None


def _against_labels(outputs: Mapping[str, Array], task: Task, labels: Array) -> tuple[float, AccuracyKind] | None:
    if task is Task.CLASSIFICATION:
        predicted = predicted_classes(outputs)
        if predicted is None:
            return None
        truth = _comparable(labels.reshape(-1))
        _check_rows(len(predicted), len(truth), "labels")
        if (predicted.dtype.kind == "O") != (truth.dtype.kind == "O"):
            return None  # string classes cannot be compared with class indices
        return float(np.mean(predicted == truth)) if len(truth) else 0.0, AccuracyKind.TOP1
    if task is Task.REGRESSION:
        first = next(iter(outputs.values()), None)
        if first is None or first.dtype.kind not in ("f", "i", "u"):
            return None
        predicted = first.astype(np.float64).reshape(len(first), -1) if first.ndim else first.reshape(1, 1)
        truth = labels.astype(np.float64).reshape(len(labels), -1) if labels.ndim else labels.reshape(1, 1)
        _check_rows(len(predicted), len(truth), "labels")
        if predicted.shape != truth.shape:
            raise InvalidArgumentError(
                f"labels have {truth.shape[1]} values per row, the model's first output {predicted.shape[1]}"
            )
        return r2_score(truth, predicted), AccuracyKind.R2
    return None


R2_FLOOR = -1.0
"""R² below this (far worse than predicting the mean) is reported as this, as are
non-finite predictions, so an accuracy is always a finite number."""


def r2_score(truth: Array, predicted: Array) -> float:
    """Coefficient of determination over all values (as scikit-learn with one target).

    A constant truth gives 1.0 for a perfect prediction and 0.0 otherwise.
    """
    residual = float(np.sum((truth - predicted) ** 2))
    total = float(np.sum((truth - np.mean(truth)) ** 2))
    if not np.isfinite(residual):
        return R2_FLOOR
    if total == 0.0:
        return 1.0 if residual == 0.0 else 0.0
    return max(R2_FLOOR, 1.0 - residual / total)


def _fidelity(
    outputs: Mapping[str, Array], task: Task, reference: Mapping[str, Array]
) -> tuple[float | None, AccuracyKind | None]:
    if task is Task.CLASSIFICATION:
        mine, theirs = predicted_classes(outputs), predicted_classes(reference)
        if mine is not None and theirs is not None:
            _check_rows(len(mine), len(theirs), "reference outputs")
            return (float(np.mean(mine == theirs)) if len(mine) else 1.0), AccuracyKind.FIDELITY_TOP1
    shared = [
        name
        for name, array in outputs.items()
        if name in reference and array.dtype.kind == "f" and reference[name].dtype.kind in ("f", "i", "u")
    ]
    if not shared:
        return None, None
    error = norm = 0.0
    for name in shared:
        mine_f = outputs[name].astype(np.float64)
        theirs_f = reference[name].astype(np.float64)
        if mine_f.shape != theirs_f.shape:
            raise InvalidArgumentError(
                f"output {name!r} has shape {list(mine_f.shape)}, the reference's {list(theirs_f.shape)}"
            )
        error += float(np.sum((mine_f - theirs_f) ** 2))
        norm += float(np.sum(theirs_f**2))
    if norm == 0.0:
        return (1.0 if error == 0.0 else 0.0), AccuracyKind.FIDELITY
    if not np.isfinite(error):
        return 0.0, AccuracyKind.FIDELITY
    return float(np.clip(1.0 - np.sqrt(error / norm), 0.0, 1.0)), AccuracyKind.FIDELITY


def _comparable(array: Array) -> Array:
    """Strings and bytes compare as str (a model's BYTES output holds bytes, labels often str)."""
    if array.dtype.kind in ("O", "S"):
        return np.array([v.decode("utf-8", "replace") if isinstance(v, bytes) else v for v in array], dtype=object)
    if array.dtype.kind == "U":
        return array.astype(object)
    return array


def _check_rows(have: int, want: int, what: str) -> None:
    if have != want:
        raise InvalidArgumentError(f"the model answered {have} rows but there are {want} {what}")
