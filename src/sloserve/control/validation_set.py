"""The validation set a model is registered with: ``.npz`` arrays checked against the model's inputs."""

from __future__ import annotations

import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from sloserve.datatypes import numpy_dtype
from sloserve.errors import InvalidArgumentError
from sloserve.model_config import ModelConfig
from sloserve.variant import Task

LABELS_KEY = "y"
SINGLE_INPUT_KEY = "X"


@dataclass(frozen=True, slots=True)
class ValidationSet:
    inputs: dict[str, np.ndarray[Any, Any]]
    labels: np.ndarray[Any, Any] | None
    rows: int


def load_validation(path: Path, config: ModelConfig) -> ValidationSet:
    """Read ``path`` (one array per model input, or ``X`` for a single-input model, and optional ``y``)."""
    try:
        with np.load(path, allow_pickle=False) as archive:
            arrays = {key: archive[key] for key in archive.files}
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as exc:
        raise InvalidArgumentError(f"{path} is not a readable .npz file: {exc}") from None
    expected = [t.name for t in config.inputs]
    if len(expected) == 1 and SINGLE_INPUT_KEY in arrays and expected[0] not in arrays:
        arrays[expected[0]] = arrays.pop(SINGLE_INPUT_KEY)
    labels = arrays.pop(LABELS_KEY, None)
    unknown = sorted(set(arrays) - set(expected))
    missing = [name for name in expected if name not in arrays]
    if unknown or missing:
        hint = f" (or {SINGLE_INPUT_KEY!r})" if len(expected) == 1 else ""
        raise InvalidArgumentError(
            f"{path}: expected arrays {expected}{hint} and optionally {LABELS_KEY!r}; "
            f"missing {missing}, unexpected {unknown}"
        )
    inputs: dict[str, np.ndarray[Any, Any]] = {}
    rows: int | None = None
    for spec in config.inputs:
        array = arrays[spec.name]
        where = f"{path}: array {spec.name!r}"
        if array.ndim != len(spec.shape) or any(
            want != -1 and got != want for got, want in zip(array.shape, spec.shape, strict=True)
        ):
            raise InvalidArgumentError(f"{where} has shape {list(array.shape)}; the model takes {list(spec.shape)}")
        dtype = numpy_dtype(spec.datatype)
        if dtype.kind in "iub" and array.dtype.kind == "f":
            raise InvalidArgumentError(f"{where} holds floats; the model takes {spec.datatype}")
        if dtype.kind == "O" or array.dtype.kind not in "iubf":
            raise InvalidArgumentError(f"{where} has dtype {array.dtype}; only numeric inputs can be validated")
        inputs[spec.name] = np.ascontiguousarray(array, dtype=dtype)
        if rows is not None and array.shape[0] != rows:
            raise InvalidArgumentError(f"{where} has {array.shape[0]} rows, another input has {rows}")
        rows = array.shape[0]
    assert rows is not None
    if rows == 0:
        raise InvalidArgumentError(f"{path}: the validation set is empty")
    if labels is not None and (labels.ndim == 0 or labels.shape[0] != rows):
        raise InvalidArgumentError(f"{path}: {LABELS_KEY!r} has shape {list(labels.shape)}; expected {rows} rows")
    return ValidationSet(inputs, labels, rows)


def infer_task(config: ModelConfig, labels: np.ndarray[Any, Any] | None) -> Task:
    """Classification when the model emits an integer label; regression when labels are given; else other."""
    if any(t.datatype in ("INT64", "INT32") and len(t.shape) == 1 for t in config.outputs):
        return Task.CLASSIFICATION
    if labels is not None:
        return Task.REGRESSION
    return Task.OTHER


MIN_ROWS_TO_SPLIT = 20


def split_validation(validation: ValidationSet) -> tuple[ValidationSet, ValidationSet]:
    """(calibration, scoring) halves: even rows calibrate and train recipes, odd rows measure accuracy.

    Recipes that fit to their calibration data (static quantization, the pruned layers' refit, the
    distilled student) would otherwise be scored on the rows they were fit to. Sets too small to
    halve are used whole for both.
    """
    if validation.rows < MIN_ROWS_TO_SPLIT:
        return validation, validation

    def half(start: int) -> ValidationSet:
        inputs = {k: np.ascontiguousarray(v[start::2]) for k, v in validation.inputs.items()}
        labels = None if validation.labels is None else validation.labels[start::2]
        return ValidationSet(inputs, labels, len(range(start, validation.rows, 2)))

    return half(0), half(1)
